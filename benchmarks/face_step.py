r"""Face-recognition train step: ArcFace against ArcFace + GSC, IR-ResNet-50 at CASIA's scale.

The jitted train step of `experiments.face` (the shared loop's `steps.make_batch_train_step`:
IR-ResNet-50 at 112x112, a cosine classifier over 10,572 identities as in CASIA-WebFace, ArcFace
s 64 m 0.5, SGD momentum 0.9 with weight decay 5e-4) on a synthetic uint8 batch, timed
round-robin (`benchmarks._timing.interleaved_medians`) for ``arcface`` and ``arcface_gsc``
(gamma 0.01, top_c 3, a Table 5 setting). The ratio is GSC's overhead in a whole step, and the
step time gives the expected wall time of one Table 5 run (32K steps at batch 512) on the machine.

On a CPU these are sanity figures (use a small ``--batch``); on a GPU or TPU host run it with the
real batch size (``--batch 512 --bf16``).

    python -m benchmarks.face_step [--batch 8] [--repeats 3] [--bf16]
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

from benchmarks import _timing, _train_steps
from experiments.common import losses, parallel, steps
from experiments.face import models, tables, train

TABLE5_STEPS, TABLE5_BATCH = 32_000, 512


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="iresnet50", choices=models.MODELS)
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--identities", type=int, default=10_572)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per loss")
    parser.add_argument("--gamma", type=float, default=0.01)
    parser.add_argument("--top_c", type=int, default=3)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/face_step.json")
    args = parser.parse_args(argv)

    mesh = parallel.make_mesh()
    parallel.check_batch_size(args.batch, mesh)
    head_sharding = train.class_sharding(train.RunConfig(), mesh)
    dtype = jnp.bfloat16 if args.bf16 else jnp.float32
    model = models.create_model(args.model, args.identities, bf16=args.bf16,
                                class_sharding=head_sharding)
    recipe = train.resolved(train.RunConfig(batch_size=args.batch))
    tx, lr_fn = train.make_tx(recipe, steps_per_epoch=1000)
    init = lambda k: steps.init_state(  # noqa: E731
        model, tx, jnp.zeros((1, 112, 112, 3), dtype), k, args.identities, False)
    padded = models.padded_num_classes(args.identities, head_sharding)
    shardings = train.head_state_sharding(head_sharding, padded)(
        mesh, jax.eval_shape(init, jax.random.key(0)))
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    batch = _train_steps.synthetic_batch(mesh, args.batch, 112, args.identities)
    specs = {"arcface": tables._spec("arcface"),
             "arcface_gsc": tables._spec("arcface", args.gamma, args.top_c)}
    for spec in specs.values():
        losses.validate_loss_spec(spec, args.identities)
    timings, machine, _ = _train_steps.time_losses(
        specs, state, batch, model=model, tx=tx, lr_fn=lr_fn, mean=train.FACE_MEAN,
        std=train.FACE_STD, compute_dtype=dtype, repeats=args.repeats)
    ratio = timings["arcface_gsc"]["median_s"] / timings["arcface"]["median_s"]
    images_per_s = args.batch / timings["arcface"]["median_s"]
    run_hours = TABLE5_STEPS * TABLE5_BATCH / images_per_s / 3600
    print(f"| {args.model} 112px, {args.identities} identities, batch {args.batch} "
          "| median step s | images/s |")
    print("|---|---|---|")
    for name, t in timings.items():
        print(f"| {name} | {t['median_s']:.3f} | {t['images_per_s']:.2f} |")
    print(f"arcface_gsc / arcface step-time ratio: {ratio:.3f}; one Table 5 run "
          f"({TABLE5_STEPS} steps x {TABLE5_BATCH}) at this rate: {run_hours:.3g} h")
    _timing.write_json(args.out, {
        "benchmark": "face_step",
        "measure": "one jitted train step (arcface_casia recipe), median seconds; images/s",
        "model": f"{args.model}, {args.identities} identities, "
                 f"{'bf16' if args.bf16 else 'f32'}, head sharded: {head_sharding is not None}",
        "input": [args.batch, 112, 112, 3], "machine": machine, "args": vars(args),
        "timings": timings, "ratio_arcface_gsc_to_arcface": ratio,
        "table5_run_hours_at_this_rate": run_hours})
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
