"""Orbax checkpoints in the workdir, the run configuration saved beside them, and SIGTERM/SIGINT
turned into a save-and-exit request."""

import json
import os
import signal
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp

from experiments.common import report

CONFIG_FILE = "config.json"


def make_manager(
    workdir: str, max_to_keep: int = 2, name: str = "checkpoints"
) -> ocp.CheckpointManager:
    """A CheckpointManager over WORKDIR/<name> keeping the newest `max_to_keep` steps."""
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, name)),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )


def save(manager: ocp.CheckpointManager, state) -> None:
    """Saves `state` under its own step (no-op if that step is already saved); a population's
    members share one step."""
    step = int(np.max(jax.device_get(state.step)))
    if manager.latest_step() != step:
        manager.save(step, args=ocp.args.StandardSave(state), force=True)


def restore_latest(manager: ocp.CheckpointManager, state):
    """Returns the latest checkpoint restored into the shapes/shardings of `state`, or `state`."""
    step = manager.latest_step()
    if step is None:
        return state
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    return manager.restore(step, args=ocp.args.StandardRestore(target))


class ConfigMismatchError(ValueError):
    """The workdir holds a run whose configuration differs from the one asked for."""


def _flatten(tree, prefix: str = "") -> dict:
    """{'a.b': leaf} of nested dicts (after a JSON round trip, so tuples compare as lists)."""
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def check_run_config(
    workdir: str, run: dict, epochs: int, *, resuming: bool, write: bool
) -> str | None:
    """Saves the run's configuration in WORKDIR/config.json, or checks it against the saved one.

    A fresh run (`resuming` False) writes {"run": run, "epochs": epochs} atomically (when `write`:
    process 0 of a multi-host run). A resumed run must have the same `run` (the loss and its
    hyper-parameters, the model, the data, the batch size, the seed: whatever the caller puts in
    it) and at least as many epochs; more epochs extend the run, and the file is updated.

    Args:
      workdir: the run's directory.
      run: JSON-able dict of everything that must not change within a run.
      epochs: the number of epochs asked for.
      resuming: whether the workdir holds a checkpoint.
      write: whether this process writes the file.

    Returns:
      A one-line message when the run is extended, else None.

    Raises:
      ConfigMismatchError: listing the differences, or when checkpoints have no config.json.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    run = json.loads(json.dumps(run))
    message = None
    if resuming:
        if not os.path.exists(path):
            raise ConfigMismatchError(
                f"{workdir!r} holds checkpoints but no {CONFIG_FILE}, so they cannot be checked "
                "against this run's configuration; use a new --workdir, or delete "
                f"{os.path.join(workdir, 'checkpoints')!r} to start over."
            )
        with open(path) as f:
            saved = json.load(f)
        old, new = _flatten(saved["run"]), _flatten(run)
        diffs = [
            f"{key}: {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}"
            for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)
        ]
        if diffs:
            raise ConfigMismatchError(
                f"{workdir!r} holds a run with another configuration (saved -> asked): "
                f"{'; '.join(diffs)}. Use a new --workdir, or the saved settings to resume."
            )
        if epochs < saved["epochs"]:
            raise ConfigMismatchError(
                f"{workdir!r} holds a run of {saved['epochs']} epochs; --epochs {epochs} would "
                "shorten it. Use a new --workdir, or at least as many epochs to resume."
            )
        if epochs == saved["epochs"]:
            return None
        message = (
            f"Extending the run in {workdir} from {saved['epochs']} to {epochs} epochs "
            "(the learning-rate schedule is laid out over the new number of epochs)."
        )
    if write:
        report.write_json(path, {"run": run, "epochs": epochs})
    return message


class StopOnSignal:
    """Context manager: while active, SIGTERM and SIGINT set `signum` instead of killing us.

    The train loop polls `requested` after every step, saves a checkpoint and returns; handlers are
    restored on exit. Only the main thread can install handlers; elsewhere this is inert.
    """

    def __init__(self):
        self.signum = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):  # pylint: disable=unused-argument
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
