"""Shared pieces of the metrics: argument checks and the exact fixed-point binned sum."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gsc_jax import _examples
from gsc_jax import _validation

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

FRACTION_BITS = 20
LIMB_BITS = 10
LIMB_MASK = (1 << LIMB_BITS) - 1
# Examples summed per partial sum in `calibration_stats`: 1023 * 2**20 plus carries stays < 2**31.
CHUNK = 1 << 20
MAX_EXAMPLES = 2**31 - 1


def check_probs_labels(probs, labels) -> tuple[Array, Array, tuple[int, ...]]:
    """Checks ``probs [..., K]`` and int ``labels [...]``; returns both flat and the batch shape."""
    probs = _validation.check_float_array("probs", probs)
    if probs.ndim < 1:
        raise ValueError("`probs` must have a class axis, got a scalar.")
    _validation.check_num_classes(probs, probs.ndim - 1, name="probs")
    labels = _examples.as_labels(labels)
    if _validation.label_kind(labels, probs, probs.ndim - 1) != "int":
        raise ValueError(
            "`labels` must be integer class ids of the probs' shape without the class axis."
        )
    return probs.reshape(-1, probs.shape[-1]), labels.reshape(-1), labels.shape


def check_int_labels(labels, logits, name: str) -> Array:
    labels = _examples.as_labels(labels)
    if _validation.label_kind(labels, logits, logits.ndim - 1) != "int":
        raise ValueError(
            f"`labels` must be integer class ids of the {name}' shape without the class axis."
        )
    return labels


def check_num_bins(num_bins) -> int:
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"`num_bins` must be an int >= 1, got {num_bins!r}.")
    return int(num_bins)


def check_stats_inputs(name: str, probs, labels, example_mask, num_bins):
    """The checks of the ``*_stats`` functions; ``probs [N, K]``, ``labels [N]``, a mask ``[N]``."""
    num_bins = check_num_bins(num_bins)
    probs, labels, batch_shape = check_probs_labels(probs, labels)
    _validation.warn_if_not_probabilities("probs", probs, name)
    example_mask = _examples.check_example_mask(example_mask, batch_shape)
    if example_mask is not None:
        example_mask = example_mask.reshape(-1)
    if probs.shape[0] > MAX_EXAMPLES:
        raise ValueError(
            f"`{name}` takes at most {MAX_EXAMPLES} examples per call, got {probs.shape[0]}; "
            "compute stats of smaller batches and merge them."
        )
    return probs, labels, example_mask, num_bins


def binned_rows(probs, example_mask, tolerance: float):
    """Per row of ``probs [N, K]``: whether it is a distribution (entries in [0, 1] summing to 1
    within ``tolerance``), whether it takes part (the mask), and whether it is binned (both)."""
    del tolerance  # that of `_validation.distribution_rows`, for the probs' dtype
    is_distribution = _validation.distribution_rows(probs)
    takes_part = jnp.ones(probs.shape[:1], bool) if example_mask is None else example_mask
    return is_distribution, takes_part, takes_part & is_distribution


def normalize_confidence(confidence: Array) -> Array:
    """Carries the lower limbs into ``[0, 1024)``; a negative (overflowed) bin becomes all -1."""
    whole, mid, low = confidence[..., 0], confidence[..., 1], confidence[..., 2]
    mid_carried = (mid & LIMB_MASK) + (low >> LIMB_BITS)
    new_whole = whole + (mid >> LIMB_BITS) + (mid_carried >> LIMB_BITS)
    carried = jnp.stack([new_whole, mid_carried & LIMB_MASK, low & LIMB_MASK], axis=-1)
    overflowed = (whole < 0) | (mid < 0) | (low < 0) | (new_whole < 0)
    return jnp.where(overflowed[..., None], -1, carried)


def add_marking_overflow(a: Array, b: Array) -> Array:
    """``a + b`` of non-negative int32 arrays; -1 where either is negative or the sum overflows."""
    total = a + b
    return jnp.where((a < 0) | (b < 0) | (total < 0), -1, total)


def binned_sums(values: Array, hits: Array, binned: Array, num_bins: int) -> tuple:
    """Exact per-cell, per-bin integer sums: the one binned sum of every calibration statistic.

    Args:
      values: ``[N, C]`` values in ``[0, 1]`` (the top-1 confidence, C = 1; or every class
        probability, C = K), binned into ``num_bins`` equal-width bins ``(m/M, (m+1)/M]`` (0 in the
        first).
      hits: ``[N, C]`` booleans counted per bin (a correct prediction; the label being class c).
      binned: ``[N]`` booleans: the examples that enter the sums.
      num_bins: ``M``.

    Returns:
      ``(count [C, M], hits [C, M], confidence [C, M, 3])`` int32: the examples per bin, the hits
      among them, and the sum of their values in fixed point, ``q = round(2**20 v)`` held in three
      carried limbs of weights ``(2**20, 2**10, 1)``. Runs of ``2**20`` examples are summed
      separately, so no int32 partial sum overflows below ``2**31`` examples per bin.
    """
    num_examples, num_cells = values.shape
    bins = jnp.clip(jnp.ceil(values * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
    quanta = jnp.round(values * 2**FRACTION_BITS).astype(jnp.int32)
    columns = jnp.stack(
        [
            jnp.ones_like(quanta),
            hits.astype(jnp.int32),
            quanta >> (2 * LIMB_BITS),
            (quanta >> LIMB_BITS) & LIMB_MASK,
            quanta & LIMB_MASK,
        ],
        axis=-1,
    ) * binned[:, None, None].astype(jnp.int32)
    num_chunks = max(1, -(-num_examples // CHUNK))
    cells = num_cells * num_bins
    chunk = (jnp.arange(num_examples, dtype=jnp.int32) // CHUNK)[:, None]
    segments = jnp.arange(num_cells, dtype=jnp.int32)[None, :] * num_bins + bins + cells * chunk
    sums = jax.ops.segment_sum(
        columns.reshape(-1, columns.shape[-1]),
        segments.reshape(-1),
        num_segments=cells * num_chunks,
    )
    sums = sums.reshape(num_chunks, num_cells, num_bins, columns.shape[-1])
    confidence = jnp.sum(normalize_confidence(sums[..., 2:]), axis=0, dtype=jnp.int32)
    return (
        jnp.sum(sums[..., 0], axis=0, dtype=jnp.int32),
        jnp.sum(sums[..., 1], axis=0, dtype=jnp.int32),
        normalize_confidence(confidence),
    )


def confidence_terms(correct: Array, confidence: Array) -> tuple[Array, Array]:
    """Float32 ``(correct - confidence sum, confidence sum)`` from carried int limbs.

    The whole part is subtracted from ``correct`` in exact integer arithmetic, so the gap is rounded
    once however large the counts.
    """
    whole = confidence[..., 0]
    fraction = (confidence[..., 1] * (1 << LIMB_BITS) + confidence[..., 2]).astype(
        jnp.float32
    ) / float(1 << FRACTION_BITS)
    gap = (correct - whole).astype(jnp.float32) - fraction
    return gap, whole.astype(jnp.float32) + fraction


def nan_if(unusable: Array, value: Array) -> Array:
    """``value`` with NaN where ``unusable``."""
    return jnp.where(unusable, jnp.nan, value)
