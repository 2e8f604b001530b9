"""The data contract of the shared loop: a `Source` yields global batches, a pure function of
(seed, step).

Two kinds of source stand behind it, and the loop treats them alike:

- `memory.ArraySource`: a dataset held as uint8 arrays on the devices (CIFAR-10, FER2013,
  digits); each step's batch is gathered there with an epoch permutation and augmented on the
  device, so no input pipeline runs on the host;
- `stream.StreamSource`: a dataset too large for device memory (ImageNet, face identities,
  video) decoded by tf.data or a worker pool on every host, each host reading its own share.

Whatever the source, global train batch `t` depends only on (seed, t): a run resumed at step t
continues the batches an uninterrupted run would have seen, and any number of devices or hosts
trains the same model. Evaluation batches cover every example of a split exactly once (padding
carries ``mask`` False).

Batches are dicts of global `jax.Array`s split along the batch axis over the mesh's 'data' axis:

- train: ``{'image': uint8 [B, ...], 'label': int32 [B]}``, augmented;
- eval: ``{'image': uint8 [B, ...] or [B, V, ...], 'label': int32 [B], 'mask': bool [B]}``,
  where V views of one example (TenCrop, clips x crops of a video) are evaluated together by
  the multiview evaluator.

A population run (several seeds trained together, `jax.vmap`) asks an `ArraySource` for
``seed=(s_1, ..., s_P)``: every leaf of a train batch then has a leading member axis [P, ...],
member p's batch being exactly the one a single run with seed s_p gets.
"""

import abc
from typing import Iterator

import jax

from experiments.common import rng


class DataError(ValueError):
    """Raised when the requested data cannot be found or read; the message says what to do."""


class Source(abc.ABC):
    """Where a run's examples come from.

    Attributes:
      class_names: label order; `num_classes` is its length.
      splits: the evaluation splits it holds, e.g. ('test',) or ('val', 'test').
      input_shape: shape of one model input (one view): (H, W, C), or (T, H, W, C) for video.
    """

    class_names: tuple
    splits: tuple = ("test",)
    input_shape: tuple

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abc.abstractmethod
    def steps_per_epoch(self, batch_size: int) -> int:
        """Train steps per epoch at global batch `batch_size` (the last partial batch is
        dropped); raises ValueError when the batch is larger than the training split."""

    @abc.abstractmethod
    def train_batches(
        self, *, batch_size: int, start_step: int, num_steps: int, mesh, seed
    ) -> Iterator[dict]:
        """The train batches of global steps [start_step, num_steps).

        Args:
          batch_size: global batch B.
          start_step: the first step to yield.
          num_steps: one past the last step.
          mesh: the device mesh (batches are split along its 'data' axis).
          seed: the run's seed (int), or a tuple of seeds for a population run (only sources
            that say so in their docstring take a tuple).
        """

    @abc.abstractmethod
    def eval_batches(self, split: str, *, batch_size: int, mesh) -> Iterator[dict]:
        """Every example of `split` once, in batches of B (padding has mask False)."""

    @abc.abstractmethod
    def identity(self) -> dict:
        """What a resumed run must match about the data (source, sizes, a digest of the labels,
        preprocessing)."""

    def info(self) -> dict:
        """Fields for summary.json (sizes of the splits, realised label noise, ...)."""
        return {}

    def validate_batch(self, batch_size: int, eval_batch_size: int, mesh) -> None:
        """Raises ValueError naming the field when a batch size does not fit the source."""
        self.steps_per_epoch(batch_size)
        del eval_batch_size, mesh


def check_seed(seed, *, population: bool) -> tuple:
    """`seed` as a tuple of ints; ValueError for a tuple where no population is supported."""
    seeds = tuple(seed) if isinstance(seed, (tuple, list)) else (seed,)
    if len(seeds) > 1 and not population:
        raise ValueError(
            "this data source streams one seed's batches: train several seeds "
            "one after the other (a grid over seeds) instead of together."
        )
    return seeds


def member_keys(seed, name: str) -> jax.Array:
    """The `rng.keys(seed)[name]` key of a seed, or [P] keys of a tuple of seeds."""
    if isinstance(seed, (tuple, list)):
        return jax.numpy.stack([rng.keys(s)[name] for s in seed])
    return rng.keys(seed)[name]
