r"""ResNet train step with and without GSC, and the streaming input pipeline's throughput.

1. The jitted train step of the shared loop on a streamed batch (`steps.make_batch_train_step`,
   as `experiments.imagenet` runs it: ResNet-50 v1.5 at 224x224, 1000 classes, SGD
   with Nesterov momentum and weight decay, the pycls recipe) on a synthetic uint8 batch, timed
   round-robin (`benchmarks._timing.interleaved_medians`) for ``ce`` and ``ce_gsc``
   (`gsc_jax.gsc_loss`, gamma 0.02, top_c 7 as in the paper's ResNet-50 row); the ratio
   ce_gsc / ce is the GSC overhead of a whole step (target <= 1.02).
2. With ``--data_dir`` (an image folder, DIR/train/<class>/*): the input pipeline alone (decode +
   Inception crop + flip into host batches, images/s), and the train step fed by it (pipeline,
   transfer and step together, images/s) beside the synthetic step's images/s.

On a CPU these are sanity figures (use a small ``--batch``); on a GPU or TPU host run it with the
real batch size.

    python -m benchmarks.resnet_step [--batch 8] [--repeats 5] [--data_dir DIR] [--bf16]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks import _timing, _train_steps
from experiments.common import losses, parallel, steps
from experiments.imagenet import models, pipeline, train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50", choices=models.MODELS)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per loss")
    parser.add_argument("--gamma", type=float, default=0.02)
    parser.add_argument("--top_c", type=int, default=7)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--data_dir", default=None, help="image folder for the real-data figures")
    parser.add_argument("--data_steps", type=int, default=6, help="timed real-data steps")
    parser.add_argument("--out", default="benchmarks/results/resnet_step.json")
    args = parser.parse_args(argv)

    mesh = parallel.make_mesh()
    parallel.check_batch_size(args.batch, mesh)
    sharded, repl = parallel.batch_sharded(mesh), parallel.replicated(mesh)
    dtype = jnp.bfloat16 if args.bf16 else jnp.float32
    model = models.create_model(args.model, args.classes, bf16=args.bf16)
    recipe = train.resolved(train.RunConfig(dataset="imagenet2012", batch_size=args.batch))
    tx, lr_fn = train.make_tx(recipe, steps_per_epoch=1000)
    size = args.image_size
    state = jax.jit(lambda k: steps.init_state(
        model, tx, jnp.zeros((1, size, size, 3), dtype), k, args.classes, False),
        out_shardings=repl)(jax.random.key(0))
    batch = _train_steps.synthetic_batch(mesh, args.batch, size, args.classes)
    specs = {"ce": losses.LossSpec("ce"),
             "ce_gsc": losses.LossSpec("ce", gsc_gamma=args.gamma, gsc_top_c=args.top_c)}
    timings, machine, compiled = _train_steps.time_losses(
        specs, state, batch, model=model, tx=tx, lr_fn=lr_fn, mean=pipeline.IMAGENET_MEAN,
        std=pipeline.IMAGENET_STD, compute_dtype=dtype, repeats=args.repeats)
    ratio = timings["ce_gsc"]["median_s"] / timings["ce"]["median_s"]
    synthetic_rate = args.batch / timings["ce"]["median_s"]
    print(f"| {args.model} {size}px batch {args.batch} | median step s | images/s |")
    print("|---|---|---|")
    for name, t in timings.items():
        print(f"| {name} (synthetic) | {t['median_s']:.3f} | {t['images_per_s']:.1f} |")
    print(f"ce_gsc / ce step-time ratio: {ratio:.3f} (target <= 1.02)")

    data = None
    if args.data_dir:
        source = pipeline.folder_source(args.data_dir)
        stream = pipeline.StreamConfig(global_batch=args.batch, eval_batch=args.batch,
                                       image_size=size, lighting_std=0.1)
        host = pipeline.train_batches(source, stream, start_step=0, num_steps=10**9)
        next(host)  # builds the tf.data graph and fills its buffers
        start = time.perf_counter()
        for _ in range(args.data_steps):
            next(host)
        pipeline_rate = args.data_steps * args.batch / (time.perf_counter() - start)
        fed = pipeline.prefetch_to_devices(host, sharded)
        step = compiled["ce"]
        first = next(fed)
        out = step(state, first["image"], first["label"])
        jax.block_until_ready(out)
        start = time.perf_counter()
        for b in itertools.islice(fed, args.data_steps):
            out = step(state, b["image"], b["label"])
        jax.block_until_ready(out)
        real_rate = args.data_steps * args.batch / (time.perf_counter() - start)
        data = {"pipeline_images_per_s": pipeline_rate, "real_data_step_images_per_s": real_rate,
                "synthetic_step_images_per_s": synthetic_rate, "data_steps": args.data_steps}
        print(f"input pipeline alone: {pipeline_rate:.1f} images/s; train step on real data: "
              f"{real_rate:.1f} images/s; on synthetic data: {synthetic_rate:.1f} images/s")
    _timing.write_json(args.out, {
        "benchmark": "resnet_step",
        "measure": "one jitted train step (pycls SGD recipe), median seconds; images/s",
        "model": f"{args.model} v1.5, {args.classes} classes, {'bf16' if args.bf16 else 'f32'}",
        "input": [args.batch, size, size, 3], "machine": machine, "args": vars(args),
        "timings": timings, "ratio_ce_gsc_to_ce": ratio, "real_data": data})
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
