r"""Accuracy, likelihood and calibration metrics.

Per-example metrics (`top_k_accuracy`, `negative_log_likelihood`, `brier_score`) return one value per
example; reduce them yourself. Calibration metrics are built on `CalibrationStats`, per-bin integer
counts and sums that add up exactly: stats of several batches, merged with
`merge_calibration_stats` (or summed across devices with ``jax.lax.psum``), are bit-identical to the
stats of all examples at once, and so is every metric computed from them.

Confidences enter the stats as fixed-point integers with a resolution of 2^-20 (error < 4.8e-7 per
example, below float32 rounding of a probability near 1), held in two int32 limbs so that sums stay
exact up to about two million examples per stats object.

Binning follows Guo et al. (2017) and their reference code: ``num_bins`` equal-width bins over
[0, 1], bin ``m`` is the half-open interval ``(m/M, (m+1)/M]`` and a confidence of exactly 0 falls in
the first bin.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gsc_jax import _losses
from gsc_jax import _validation

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

_FRACTION_BITS = 20
_LOW_BITS = 10


def _check_probs_labels(probs, labels) -> tuple[Array, Array]:
    """Validates ``probs [..., K]`` and integer ``labels [...]``; returns them flattened to 2-D/1-D."""
    probs = _validation.check_float_array("probs", probs)
    if probs.ndim < 1:
        raise ValueError("`probs` must have a class axis, got a scalar.")
    _validation.check_num_classes(probs, probs.ndim - 1, name="probs")
    labels = jnp.asarray(labels)
    if _validation.label_kind(labels, probs, probs.ndim - 1) != "int":
        raise ValueError("`labels` must be integer class ids of the probs' shape without the class axis.")
    return probs.reshape(-1, probs.shape[-1]), labels.reshape(-1)


def _check_num_bins(num_bins) -> int:
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"`num_bins` must be an int >= 1, got {num_bins!r}.")
    return int(num_bins)


def top_k_accuracy(logits: ArrayLike, labels: ArrayLike, *, k: int = 1) -> Array:
    """1.0 where the label is among the ``k`` highest logits, else 0.0; shape ``[...]``.

    Ties count in the label's favour: the label is in the top k when fewer than ``k`` classes have a
    strictly higher score.
    """
    logits = _validation.check_float_array("logits", logits)
    num_classes = _validation.check_num_classes(logits, logits.ndim - 1)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_classes:
        raise ValueError(f"`k` must be an int in [1, {num_classes}], got {k!r}.")
    labels = jnp.asarray(labels)
    if _validation.label_kind(labels, logits, logits.ndim - 1) != "int":
        raise ValueError("`labels` must be integer class ids.")
    label_scores = jnp.take_along_axis(logits, labels[..., None], axis=-1)
    num_higher = jnp.sum(logits > label_scores, axis=-1)
    return (num_higher < k).astype(jnp.float32)


def negative_log_likelihood(logits: ArrayLike, labels: ArrayLike) -> Array:
    r"""Per-example :math:`-\log \mathrm{softmax}(z)_y`, shape ``[...]`` (integer labels)."""
    return _losses.cross_entropy(logits, labels)


def brier_score(probs: ArrayLike, labels: ArrayLike) -> Array:
    r"""Per-example multi-class Brier score :math:`\sum_i (p_i - [i = y])^2`, shape ``[...]``."""
    probs = _validation.check_float_array("probs", probs)
    _validation.check_num_classes(probs, probs.ndim - 1, name="probs")
    labels = jnp.asarray(labels)
    if _validation.label_kind(labels, probs, probs.ndim - 1) != "int":
        raise ValueError("`labels` must be integer class ids.")
    one_hot = jax.nn.one_hot(labels, probs.shape[-1], dtype=probs.dtype)
    return jnp.sum(jnp.square(probs - one_hot), axis=-1)


class CalibrationStats(NamedTuple):
    """Per-bin sums over equal-width confidence bins; add two to merge them."""

    count: Array  # [num_bins] int32: examples whose top-1 confidence falls in the bin.
    correct: Array  # [num_bins] int32: of those, how many have a correct top-1 prediction.
    confidence_high: Array  # [num_bins] int32: sum of q >> 10, q = round(confidence * 2**20).
    confidence_low: Array  # [num_bins] int32: sum of q & 1023.


def calibration_stats(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    num_bins: int = 15,
    where: Optional[ArrayLike] = None,
) -> CalibrationStats:
    """Bins the top-1 confidence of each example and sums counts, hits and confidences per bin.

    Args:
      probs: ``[..., K]`` predicted probabilities (e.g. ``jax.nn.softmax(logits)``).
      labels: ``[...]`` integer class ids.
      num_bins: number of equal-width bins ``M >= 1`` (Guo et al. use 15).
      where: optional ``[...]`` boolean example mask; False examples (padding) are not counted.

    Returns:
      `CalibrationStats` with ``[num_bins]`` int32 fields.
    """
    num_bins = _check_num_bins(num_bins)
    probs, labels = _check_probs_labels(probs, labels)
    probs = probs.astype(_validation.compute_dtype(probs.dtype))
    confidence = jnp.clip(jnp.max(probs, axis=-1), 0.0, 1.0)
    correct = (jnp.argmax(probs, axis=-1) == labels).astype(jnp.int32)
    bins = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
    quanta = jnp.round(confidence * 2**_FRACTION_BITS).astype(jnp.int32)
    weight = jnp.ones_like(correct)
    if where is not None:
        weight = jnp.asarray(where, bool).reshape(-1).astype(jnp.int32)

    def per_bin(values):
        return jax.ops.segment_sum(values * weight, bins, num_segments=num_bins)

    return CalibrationStats(
        count=per_bin(jnp.ones_like(correct)),
        correct=per_bin(correct),
        confidence_high=per_bin(quanta >> _LOW_BITS),
        confidence_low=per_bin(quanta & ((1 << _LOW_BITS) - 1)),
    )


def merge_calibration_stats(a: CalibrationStats, b: CalibrationStats) -> CalibrationStats:
    """Adds two stats objects with the same number of bins (exact integer sums)."""
    if a.count.shape != b.count.shape:
        raise ValueError(
            f"Cannot merge stats with {a.count.shape[-1]} and {b.count.shape[-1]} bins."
        )
    return jax.tree.map(jnp.add, a, b)


def _bin_sums(stats: CalibrationStats) -> tuple[Array, Array, Array]:
    """Float32 ``(count, correct, confidence_sum)`` per bin from the integer stats."""
    count = stats.count.astype(jnp.float32)
    correct = stats.correct.astype(jnp.float32)
    confidence = (
        stats.confidence_high.astype(jnp.float32) * float(1 << _LOW_BITS)
        + stats.confidence_low.astype(jnp.float32)
    ) / float(1 << _FRACTION_BITS)
    return count, correct, confidence


def expected_calibration_error_from_stats(stats: CalibrationStats) -> Array:
    r"""ECE (Guo et al. 2017): :math:`\sum_m \frac{|B_m|}{N} |\mathrm{acc}(B_m) - \mathrm{conf}(B_m)|`.

    Empty bins contribute 0; no examples gives 0. Returns a float32 scalar.
    """
    count, correct, confidence = _bin_sums(stats)
    return jnp.sum(jnp.abs(correct - confidence)) / jnp.maximum(jnp.sum(count), 1.0)


def maximum_calibration_error_from_stats(stats: CalibrationStats) -> Array:
    r"""MCE: :math:`\max_m |\mathrm{acc}(B_m) - \mathrm{conf}(B_m)|` over non-empty bins (0 if none)."""
    count, correct, confidence = _bin_sums(stats)
    gaps = jnp.abs(correct - confidence) / jnp.maximum(count, 1.0)
    return jnp.max(jnp.where(count > 0, gaps, 0.0))


def adaptive_calibration_error_from_stats(
    fine_stats: CalibrationStats, *, num_bins: int = 15
) -> Array:
    r"""Adaptive (equal-mass) ECE from stats on a fine equal-width histogram.

    The fine bins are grouped, in order of confidence, into ``num_bins`` groups of about equal
    mass: fine bin ``j`` joins group :math:`\lfloor M (C_{j-1} + c_j/2) / N \rfloor`, with
    :math:`c_j` its count and :math:`C_{j-1}` the count below it. Then ECE is computed over the
    groups. With fine bins much narrower than the spread of confidences this equals the usual
    sort-based adaptive ECE (Nixon et al. 2019) up to where group boundaries fall.

    Args:
      fine_stats: `CalibrationStats` with many bins (`adaptive_calibration_error` uses 4096).
      num_bins: number of equal-mass groups ``M``.

    Returns:
      float32 scalar.
    """
    num_bins = _check_num_bins(num_bins)
    count, correct, confidence = _bin_sums(fine_stats)
    total = jnp.maximum(jnp.sum(count), 1.0)
    mass_midpoint = jnp.cumsum(count) - 0.5 * count
    group = jnp.clip(jnp.floor(num_bins * mass_midpoint / total).astype(jnp.int32), 0, num_bins - 1)
    group_correct = jax.ops.segment_sum(correct, group, num_segments=num_bins)
    group_confidence = jax.ops.segment_sum(confidence, group, num_segments=num_bins)
    return jnp.sum(jnp.abs(group_correct - group_confidence)) / total


def reliability_diagram(stats: CalibrationStats) -> dict[str, Array]:
    """Per-bin data for a reliability diagram.

    Returns:
      dict of ``[num_bins]`` arrays: ``bin_lower``, ``bin_upper``, ``count``, ``accuracy`` and
      ``confidence`` (the mean accuracy and confidence in the bin; 0 for empty bins).
    """
    count, correct, confidence = _bin_sums(stats)
    num_bins = count.shape[0]
    edges = jnp.linspace(0.0, 1.0, num_bins + 1)
    safe_count = jnp.maximum(count, 1.0)
    return {
        "bin_lower": edges[:-1],
        "bin_upper": edges[1:],
        "count": stats.count,
        "accuracy": correct / safe_count,
        "confidence": confidence / safe_count,
    }


def expected_calibration_error(
    probs: ArrayLike, labels: ArrayLike, *, num_bins: int = 15, where: Optional[ArrayLike] = None
) -> Array:
    """ECE of ``probs [..., K]`` against integer ``labels [...]`` (see the module docstring)."""
    stats = calibration_stats(probs, labels, num_bins=num_bins, where=where)
    return expected_calibration_error_from_stats(stats)


def maximum_calibration_error(
    probs: ArrayLike, labels: ArrayLike, *, num_bins: int = 15, where: Optional[ArrayLike] = None
) -> Array:
    """Maximum calibration error over equal-width bins (see `maximum_calibration_error_from_stats`)."""
    stats = calibration_stats(probs, labels, num_bins=num_bins, where=where)
    return maximum_calibration_error_from_stats(stats)


ADAPTIVE_FINE_BINS = 4096


def adaptive_calibration_error(
    probs: ArrayLike, labels: ArrayLike, *, num_bins: int = 15, where: Optional[ArrayLike] = None
) -> Array:
    """Equal-mass ECE with ``num_bins`` groups, resolved on a 4096-bin histogram.

    To accumulate it over batches, accumulate ``calibration_stats(..., num_bins=4096)`` and call
    `adaptive_calibration_error_from_stats`.
    """
    stats = calibration_stats(probs, labels, num_bins=ADAPTIVE_FINE_BINS, where=where)
    return adaptive_calibration_error_from_stats(stats, num_bins=num_bins)
