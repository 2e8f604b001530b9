"""Orbax checkpoints in the workdir, and SIGTERM/SIGINT turned into a save-and-exit request."""

import os
import signal
import threading

import jax
import orbax.checkpoint as ocp


def make_manager(workdir: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """A CheckpointManager over WORKDIR/checkpoints keeping the newest `max_to_keep` steps."""
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_handlers=ocp.StandardCheckpointHandler(),  # so item_metadata works before a restore
    )


def save(manager: ocp.CheckpointManager, state) -> None:
    """Saves `state` under its own step (no-op if that step is already saved)."""
    step = int(state.step)
    if manager.latest_step() != step:
        manager.save(step, args=ocp.args.StandardSave(state), force=True)


def restore_latest(manager: ocp.CheckpointManager, state):
    """Returns the latest checkpoint restored into the shapes/shardings of `state`, or `state`.

    `state.epoch_sums` entries that the checkpoint lacks (it was written by an older harness that
    summed fewer quantities) keep their values in `state` (zeros for a freshly initialised one).
    """
    step = manager.latest_step()
    if step is None:
        return state
    tree = getattr(manager.item_metadata(step), "tree", None)
    saved = tree.get("epoch_sums") if isinstance(tree, dict) else None
    sums = state.epoch_sums
    kept = {k: v for k, v in sums.items() if saved is None or k in saved}
    target = state.replace(epoch_sums=kept)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    return restored.replace(epoch_sums={**sums, **restored.epoch_sums})


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
