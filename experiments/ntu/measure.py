r"""Measurements behind the NTU section of experiments/README.md.

    python -m experiments.ntu.measure stream --store STORE [--batch 8 --steps 20 --workers 2]
    python -m experiments.ntu.measure step --store STORE [--config.x=y ...]
    python -m experiments.ntu.measure flops [--frames 16 --crop 112]

- stream: clips per second of the training source (`data.VideoSource.host_train_batches`,
  clips of T frames cut from the memory-mapped store, crop and flip) on this host, no model;
- step: seconds per train step of the loop's jitted step (`loop.setup`, `loop.initial_state`)
  for the config given by --config.* overrides of configs/resnet3d.py, after a warm-up step;
- flops: XLA's cost analysis of one ResNet3D-34 forward pass on a clip (float32, CPU
  lowering), and the train FLOPs of Table 7's runs (forward + backward ~ 3x forward) with the
  GPU time they take at an assumed sustained rate (an estimate, not a measurement).
"""

import argparse
import sys
import tempfile
import time

import numpy as np

# Cross-Subject / Cross-View sizes of NTU RGB+D 60 (Shahroudy et al. 2016, 56,880 videos)
NTU60 = {"xsub": (40320, 16560), "xview": (37920, 18960)}


def stream(args) -> dict:
    from experiments.ntu import data  # pylint: disable=import-outside-toplevel

    cat = data.catalogue(
        args.store, args.protocol, args.short_side, args.frames, log=lambda _: None
    )
    src = data.VideoSource(cat, args.frames, args.crop, workers=args.workers)
    batches = src.host_train_batches(
        batch_size=args.batch, start_step=0, num_steps=args.steps + 1, seed=0
    )
    next(batches)  # thread pool started, first reads
    t0 = time.perf_counter()
    n = sum(b["image"].shape[0] for b in batches)
    dt = time.perf_counter() - t0
    return {
        "clips": n,
        "seconds": round(dt, 3),
        "clips_per_s": round(n / dt, 1),
        "clip": [args.frames, args.crop, args.crop, 3],
        "workers": args.workers,
    }


def step(args, overrides) -> dict:
    import os  # pylint: disable=import-outside-toplevel

    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    from experiments.common import checkpoint  # pylint: disable=import-outside-toplevel
    from experiments.common import config as cfg  # pylint: disable=import-outside-toplevel
    from experiments.common import loop  # pylint: disable=import-outside-toplevel

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "resnet3d.py")
    config = cfg.load(
        path,
        {"data.store": args.store, "run.progress": False, "run.compilation_cache": "", **overrides},
    )[0]
    with tempfile.TemporaryDirectory() as workdir:
        run = loop.setup(config, workdir)
        state, train_step = loop.initial_state(run, checkpoint.make_manager(workdir))
        key, gamma = loop.member_inputs(run)
        batches = run.source.train_batches(
            batch_size=config.batch_size,
            start_step=0,
            num_steps=args.steps + 1,
            mesh=run.mesh,
            seed=config.seed,
        )
        t0 = time.perf_counter()
        state, _ = train_step(state, next(batches), key, gamma)
        jax.block_until_ready(state)
        compile_s = time.perf_counter() - t0
        times = []
        for batch in batches:
            t0 = time.perf_counter()
            state, _ = train_step(state, batch, key, gamma)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - t0)
    del jnp
    return {
        "model": config.model.name,
        "width": config.model.width,
        "batch": config.batch_size,
        "clip": list(run.source.input_shape),
        "first_step_s (compile)": round(compile_s, 1),
        "step_s_median": round(float(np.median(times)), 3),
        "steps_timed": len(times),
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
    }


def flops(args) -> dict:
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    from experiments.ntu import models  # pylint: disable=import-outside-toplevel

    model = models.create_model("resnet3d34", 60)
    x = jnp.zeros((1, args.frames, args.crop, args.crop, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    cost = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    forward = float(cost["flops"])
    out = {
        "forward_gflops_per_clip": round(forward / 1e9, 2),
        "assumed_sustained_tflops": args.tflops,
    }
    for protocol, (n_train, n_test) in NTU60.items():
        train = 3 * forward * n_train * args.epochs
        evaluation = forward * n_test * args.views * args.epochs  # evaluated every epoch
        hours = (train + evaluation) / (args.tflops * 1e12) / 3600
        out[f"{protocol}_gpu_hours_estimate"] = round(hours, 2)
    out["note"] = (
        f"estimate: {args.epochs} epochs, every epoch evaluated with {args.views} "
        f"views per test video, at {args.tflops} TFLOP/s sustained; data loading "
        "not included"
    )
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("stream", "step", "flops"))
    parser.add_argument("--store", default="")
    parser.add_argument("--protocol", default="xsub")
    parser.add_argument("--short_side", type=int, default=128)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--tflops", type=float, default=100.0)
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for item in rest:
        if not item.startswith("--config.") or "=" not in item:
            parser.error(f"unknown argument {item!r} (overrides are --config.x=y)")
        path, value = item[len("--config.") :].split("=", 1)
        try:
            value = int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                pass
        overrides[path] = value
    if args.what == "stream":
        out = stream(args)
    elif args.what == "step":
        out = step(args, overrides)
    else:
        out = flops(args)
    for k, v in out.items():
        print(f"{k}: {v}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
