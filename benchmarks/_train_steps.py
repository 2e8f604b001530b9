"""The shared loop's train step, compiled per loss and timed side by side (ResNet and face steps)."""

from __future__ import annotations

import sys
import time

import jax
import numpy as np

from benchmarks import _timing
from experiments.common import parallel, steps
from experiments.imagenet import pipeline


def synthetic_batch(mesh, batch: int, image_size: int, num_classes: int) -> dict:
    """A seeded random {'image': uint8 [B, S, S, 3], 'label': int32 [B]} batch, split over `mesh`."""
    rng = np.random.RandomState(0)
    return pipeline.to_global({
        "image": rng.randint(0, 256, (batch, image_size, image_size, 3)).astype(np.uint8),
        "label": rng.randint(0, num_classes, batch).astype(np.int32)},
        parallel.batch_sharded(mesh))


def time_losses(specs: dict, state, batch: dict, *, model, tx, lr_fn, mean, std, compute_dtype,
                repeats: int) -> tuple[dict, dict, dict]:
    """Compiles `steps.make_batch_train_step` for every {name: LossSpec} on `batch`, then times
    the compiled steps round-robin (`_timing.interleaved_medians`).

    Returns:
      (timings {name: {..., 'median_s', 'images_per_s'}}, the machine's description at the start
      of the timing with its load average at the end, the compiled steps {name: step}).
    """
    compiled = {}
    for name, spec in specs.items():
        step = jax.jit(steps.make_batch_train_step(
            model=model, tx=tx, loss_spec=spec, lr_fn=lr_fn, steps_per_epoch=1000,
            mean=mean, std=std, compute_dtype=compute_dtype))
        start = time.perf_counter()
        compiled[name] = step.lower(state, batch["image"], batch["label"]).compile()
        print(f"compiled {name} in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    machine = _timing.machine_info()
    timings = _timing.interleaved_medians(
        {name: (lambda s=s: s(state, batch["image"], batch["label"]))
         for name, s in compiled.items()},
        repeats=repeats)
    for t in timings.values():
        t["images_per_s"] = batch["label"].shape[0] / t["median_s"]
    machine["load_average_end"] = _timing.machine_info()["load_average"]
    return timings, machine, compiled
