"""The shared loop's train step, built from an experiment's config file and timed per loss.

The step is the one `experiments.common.loop` trains with: the config file's `get_config()` with
overrides (`config.load`), the task's model (`task.make_model`), the config's optimiser and
schedule (`optim.make`), the loss registry's spec (`losses.LossSpec.from_config`), the state and
its sharding and the jitted, donating, memory-checked step of `loop.initial_state`. Only the data
differs: a `SyntheticSource` gives one seeded uint8 batch of the task's input shape (the step
time does not depend on the pixels), unless the caller passes the task's real source.

`time_losses` compiles the step of every loss and times them round-robin in one process
(`_timing.interleaved_medians`), each loss threading its own state through its donated step.
"""

from __future__ import annotations

import pathlib
import sys
import time

import jax
import numpy as np

from benchmarks import _timing
from experiments.common import config as cfg
from experiments.common import evaluators
from experiments.common import loop
from experiments.common import losses
from experiments.common import optim
from experiments.common import parallel
from experiments.common.data import source as data_source
from experiments.common.data import stream

STEPS_PER_EPOCH = 1000  # the schedule's epoch length in the timed steps (no effect on the time)


class SyntheticSource(data_source.Source):
    """One seeded random batch {'image': uint8 [B, *input_shape], 'label': int32 [B]}, split over
    the mesh, yielded for every step (`data.Source`'s contract, without any input pipeline)."""

    splits = ()

    def __init__(
        self, num_classes: int, input_shape: tuple, steps_per_epoch: int = STEPS_PER_EPOCH
    ):
        self.class_names = tuple(str(k) for k in range(num_classes))
        self.input_shape = tuple(input_shape)
        self._steps_per_epoch = steps_per_epoch
        self._batches = {}

    def steps_per_epoch(self, batch_size: int) -> int:
        return self._steps_per_epoch

    def batch(self, batch_size: int, mesh) -> dict:
        """The batch of `batch_size` examples on `mesh` (built once)."""
        key = (batch_size, id(mesh))
        if key not in self._batches:
            rng = np.random.RandomState(0)
            self._batches[key] = stream.to_global(
                {
                    "image": rng.randint(0, 256, (batch_size, *self.input_shape)).astype(np.uint8),
                    "label": rng.randint(0, self.num_classes, batch_size).astype(np.int32),
                },
                parallel.batch_sharded(mesh),
            )
        return self._batches[key]

    def train_batches(self, *, batch_size, start_step, num_steps, mesh, seed):
        del seed
        for _ in range(start_step, num_steps):
            yield self.batch(batch_size, mesh)

    def eval_batches(self, split, *, batch_size, mesh):
        raise ValueError("a SyntheticSource has no evaluation splits.")

    def identity(self) -> dict:
        return {"source": "synthetic", "num_classes": self.num_classes}

    def info(self) -> dict:
        return {}


class NoCheckpoints:
    """A checkpoint manager with nothing saved: `loop.initial_state` starts fresh."""

    def latest_step(self):
        return None


REPO = pathlib.Path(__file__).resolve().parent.parent


def repo_path(path: str) -> str:
    """`path` (relative to the repository root) as an absolute path: runs from any directory."""
    return str(REPO / path)


def load_config(path: str, overrides: dict):
    """The config file's config with `overrides` (dotted paths, as on the command line)."""
    config, _ = cfg.load(path, overrides)
    return config


def make_run(config, source) -> loop.Run:
    """`loop.setup`'s Run of `config` on `source`, without evaluators.

    The shared fields and the task's own are validated as the loop validates them; a data field
    that names the data's location (`data.data_dir`) is filled with a placeholder for the task's
    check when the source is synthetic.
    """
    task = cfg.load_task(config)
    cfg.validate(config, source.num_classes, evaluator_types=tuple(evaluators.TYPES))
    if hasattr(task, "validate"):
        checked = config
        if (
            isinstance(source, SyntheticSource)
            and "data_dir" in config.data
            and not config.data.data_dir
        ):
            checked = cfg.apply_overrides(config, {"data.data_dir": "<synthetic>"})
        task.validate(checked)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh, "config.batch_size")
    spe = source.steps_per_epoch(config.batch_size)
    model = task.make_model(config, source.num_classes, mesh)
    tx, lr_fn = optim.make(config, spe)
    spec = losses.LossSpec.from_config(config.loss)
    return loop.Run(config, "", task, source, model, mesh, spec, spe, tx, lr_fn, {}, (), 0, True)


class StepRunner:
    """One run's state and compiled train step (`loop.initial_state`): `step(batch)` advances
    the state by one step on `batch` and returns the step's loss."""

    def __init__(self, run: loop.Run):
        self.run = run
        self.state, self._step = loop.initial_state(run, NoCheckpoints())
        self._keys = loop.member_inputs(run)

    def step(self, batch: dict):
        self.state, metrics = self._step(self.state, batch, *self._keys)
        return metrics["loss"]


def time_losses(
    runs: dict, batch: dict, *, repeats: int, extra_calls=None
) -> tuple[dict, dict, dict]:
    """Compiles the train step of every {name: Run} on `batch` (the first call compiles, as in
    the loop), then times the steps round-robin, with the calls `extra_calls(runners)` returns
    ({name: callable}; `runners` is {name: StepRunner}).

    Returns:
      (timings {name: {'median_s', ..., and for the steps 'compile_s' (the first call),
      'images_per_s', 'label' (the loss), 'losses_finite'}}, the
      machine's description at the start of the timing with its load average at the end, the
      {name: StepRunner}).
    """
    runners, compile_s = {}, {}
    for name, run in runs.items():
        start = time.perf_counter()
        runner = StepRunner(run)
        jax.block_until_ready(runner.step(batch))
        compile_s[name] = time.perf_counter() - start
        runners[name] = runner
        print(
            f"  compiled {name} ({run.spec.label}) and ran one step in {compile_s[name]:.1f}s",
            file=sys.stderr,
            flush=True,
        )
    machine = _timing.machine_info()
    calls = {name: (lambda r=r: r.step(batch)) for name, r in runners.items()}
    if extra_calls is not None:
        calls.update(extra_calls(runners))
    timings = _timing.interleaved_medians(calls, repeats=repeats)
    images = int(batch["label"].shape[0])
    for name, t in timings.items():
        if name in compile_s:
            t["compile_s"] = compile_s[name]
            t["images_per_s"] = images / t["median_s"]
    for name, runner in runners.items():  # whether every timed step's loss was finite
        timings[name]["losses_finite"] = not int(jax.device_get(runner.state.first_nonfinite_step))
        timings[name]["label"] = runner.run.spec.label
    machine["load_average_end"] = _timing.machine_info()["load_average"]
    return timings, machine, runners
