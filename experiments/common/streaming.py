"""Streamed data for the shared loop: datasets too large for device memory (ImageNet).

`loop.train_and_evaluate` accepts a `StreamingDataset` wherever it accepts an in-memory
`data.Dataset`: it then takes each step's global batch from `train_batches` (already augmented,
globally sharded) instead of gathering it from device-resident arrays, and evaluates over
`eval_batches` (padded and masked). The stream must be a pure function of (seed, step) so that a
resumed run continues it exactly and any number of devices trains the same model.
"""

import abc
from typing import Callable, Iterator

import jax

from experiments.common import evaluation


class StreamingDataset(abc.ABC):
    """A data source that streams batches of global jax.Arrays.

    Attributes:
      num_classes: K.
      class_names: label order.
      source: a short description (saved with the run).
      image_shape: (H, W, C) of one model input.
      has_validation: always False (a validation split is not streamed).
    """

    num_classes: int
    class_names: tuple
    source: str
    image_shape: tuple
    has_validation = False

    @abc.abstractmethod
    def steps_per_epoch(self, batch_size: int) -> int:
        """Train steps per epoch at global batch `batch_size` (> 0)."""

    @abc.abstractmethod
    def train_batches(self, *, batch_size: int, start_step: int, num_steps: int,
                      sharding) -> Iterator[dict]:
        """{'image': uint8 [B, H, W, C], 'label': int32 [B]} global arrays split by `sharding`,
        for global steps [start_step, num_steps), a pure function of (the dataset's seed, step)."""

    @abc.abstractmethod
    def eval_batches(self, *, batch_size: int, sharding) -> Iterator[dict]:
        """{'image', 'label', 'mask'} global arrays; every evaluation image once with mask True."""

    @abc.abstractmethod
    def identity(self) -> dict:
        """What a resumed run must match about the data (source, sizes, preprocessing, seed)."""


def make_evaluator(logits_fn: Callable, dataset: StreamingDataset, *, batch_size: int,
                   num_bins: int = evaluation.NUM_BINS, replicated=None,
                   batch_sharded=None, confusion: bool = False) -> Callable:
    """`evaluate(state) -> evaluation.finalize(...)` over `dataset.eval_batches`.

    One jitted accumulation `sums + evaluation.batch_sums(batch)` per batch (masked padding);
    the host reads the sums once, at the end. `confusion`: also the confusion matrix and the
    per-class accuracy.
    """
    init = jax.jit(lambda: evaluation.zeros(dataset.num_classes, num_bins, confusion),
                   out_shardings=replicated)

    def accumulate(sums, state, batch):
        logits = logits_fn(state, batch["image"])
        return evaluation.add(sums, evaluation.batch_sums(
            logits, batch["label"], example_mask=batch["mask"], num_bins=num_bins,
            confusion=confusion))

    accumulate = jax.jit(accumulate, donate_argnums=0)

    def evaluate(state) -> dict:
        sums = init()
        for batch in dataset.eval_batches(batch_size=batch_size, sharding=batch_sharded):
            sums = accumulate(sums, state, batch)
        return evaluation.finalize(jax.device_get(sums))

    return evaluate
