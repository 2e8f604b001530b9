"""Classwise calibration statistics, classwise ECE and the Brier decomposition; see
`gsc_jax.metrics`."""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from gsc_jax import _binning
from gsc_jax import _examples
from gsc_jax import _validation

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


class ClasswiseCalibrationStats(NamedTuple):
    """Per-class, per-bin integer sums of :math:`p_k` against :math:`[y = k]`.

    Merge with `merge_classwise_calibration_stats`, ``+`` or ``jax.lax.psum`` as `CalibrationStats`.
    """

    count: Array  # [K, M] int32: valid examples whose p_k falls in bin m.
    hits: Array  # [K, M] int32: of those, how many have label k.
    # [K, M, 3] int32: their sum of round(p_k * 2**20) as limbs of weights (2**20, 2**10, 1).
    confidence: Array
    invalid: Array  # [] int32: examples whose probabilities are not a distribution (not binned).


def classwise_calibration_stats(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    num_bins: int = 15,
    example_mask: Optional[ArrayLike] = None,
) -> ClasswiseCalibrationStats:
    r"""Bins every class probability :math:`p_k` and sums counts, label hits and :math:`p_k`.

    For each class ``k`` and equal-width bin ``m`` (same bins as `calibration_stats`) the stats
    hold :math:`|B_{km}|`, the number of examples with :math:`p_k \in B_m`; how many of them have
    label ``k``; and the sum of their :math:`p_k` in fixed point. A label outside ``[-K, K)`` is
    label of no class (its outcome is 0 for every class); negative labels count from the end. An
    example whose probabilities are not a distribution is counted in ``invalid`` only.

    Args:
      probs: ``[..., K]`` predicted probabilities, floating point.
      labels: ``[...]`` integer class ids.
      num_bins: number of equal-width bins ``M >= 1``.
      example_mask: optional boolean mask of the labels' shape; False examples are not counted.

    Returns:
      `ClasswiseCalibrationStats` of int32 arrays: ``count`` and ``hits`` ``[K, M]``,
      ``confidence`` ``[K, M, 3]``, ``invalid`` ``[]``.
    """
    probs, labels, example_mask, num_bins = _binning.check_stats_inputs(
        "classwise_calibration_stats", probs, labels, example_mask, num_bins
    )
    return _classwise_calibration_stats(
        probs,
        labels,
        example_mask,
        num_bins=num_bins,
        tolerance=_validation.distribution_tolerance(probs.dtype),
    )


@functools.partial(jax.jit, static_argnames=("num_bins", "tolerance"))
def _classwise_calibration_stats(probs, labels, example_mask, *, num_bins: int, tolerance: float):
    num_classes = probs.shape[-1]
    probs = probs.astype(_validation.compute_dtype(probs.dtype))
    is_distribution, takes_part, binned = _binning.binned_rows(probs, example_mask, tolerance)
    probs = jnp.where(is_distribution[:, None], probs, 0.0)
    ids, label_valid = _examples.class_ids(labels, num_classes)
    hits = (jnp.arange(num_classes)[None, :] == ids[:, None]) & label_valid[:, None]
    count, hits, confidence_sums = _binning.binned_sums(probs, hits, binned, num_bins)
    return ClasswiseCalibrationStats(
        count=count,
        hits=hits,
        confidence=confidence_sums,
        invalid=jnp.sum(takes_part & ~is_distribution, dtype=jnp.int32),
    )


@jax.jit
def merge_classwise_calibration_stats(
    a: ClasswiseCalibrationStats, b: ClasswiseCalibrationStats
) -> ClasswiseCalibrationStats:
    """Adds two classwise stats of the same shape (exact integer sums, carried; overflow is -1)."""
    if a.count.shape != b.count.shape:
        raise ValueError(
            f"Cannot merge classwise stats of shapes {a.count.shape} and {b.count.shape}."
        )
    confidence = _binning.add_marking_overflow(
        _binning.normalize_confidence(a.confidence), _binning.normalize_confidence(b.confidence)
    )
    return ClasswiseCalibrationStats(
        count=_binning.add_marking_overflow(a.count, b.count),
        hits=_binning.add_marking_overflow(a.hits, b.hits),
        confidence=_binning.normalize_confidence(confidence),
        invalid=_binning.add_marking_overflow(a.invalid, b.invalid),
    )


def _classwise_terms(stats: ClasswiseCalibrationStats):
    """``(gap [K, M], confidence sum [K, M], N, unusable)`` with gap = hits - sum of p_k."""
    confidence = _binning.normalize_confidence(stats.confidence)
    unusable = (
        jnp.any(stats.invalid != 0)
        | jnp.any(stats.count < 0)
        | jnp.any(stats.hits < 0)
        | jnp.any(confidence < 0)
    )
    gap, confidence_sum = _binning.confidence_terms(stats.hits, confidence)
    # Every example is binned once per class; N is the count of any one class.
    total = jnp.sum(stats.count[0].astype(jnp.float32))
    return gap, confidence_sum, total, unusable


@jax.jit
def classwise_calibration_error_from_stats(stats: ClasswiseCalibrationStats) -> Array:
    r"""Classwise ECE, the static calibration error SCE (Nixon et al. 2019).

    .. math::
        \mathrm{SCE} = \frac{1}{K}\sum_{k=1}^{K}\sum_{m=1}^{M} \frac{|B_{km}|}{N}
        \left|\mathrm{acc}(B_{km}) - \mathrm{conf}(B_{km})\right|

    with :math:`\mathrm{acc}(B_{km})` the fraction of the bin's examples labelled ``k`` and
    :math:`\mathrm{conf}(B_{km})` their mean :math:`p_k`. 0 with no examples; NaN if the stats saw
    an invalid example or a field overflowed. float32 scalar.
    """
    gap, _, total, unusable = _classwise_terms(stats)
    num_classes = stats.count.shape[0]
    sce = jnp.sum(jnp.abs(gap)) / (num_classes * jnp.maximum(total, 1.0))
    return _binning.nan_if(unusable, sce)


def classwise_calibration_error(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    num_bins: int = 15,
    example_mask: Optional[ArrayLike] = None,
) -> Array:
    """Classwise ECE (SCE) of ``probs [..., K]``; see `classwise_calibration_error_from_stats`."""
    stats = classwise_calibration_stats(probs, labels, num_bins=num_bins, example_mask=example_mask)
    return classwise_calibration_error_from_stats(stats)


@jax.jit
def brier_decomposition_from_stats(stats: ClasswiseCalibrationStats) -> dict[str, Array]:
    r"""Murphy's (1973) decomposition of the multi-class Brier score, per class and binned.

    Each class probability is replaced by its bin's mean :math:`f_{km}`; with
    :math:`\bar o_{km}` the fraction of the bin labelled ``k`` and :math:`\bar o_k` the base rate
    of class ``k``:

    .. math::
        \mathrm{REL} = \frac{1}{N}\sum_{k,m} |B_{km}| (f_{km} - \bar o_{km})^2, \quad
        \mathrm{RES} = \frac{1}{N}\sum_{k,m} |B_{km}| (\bar o_{km} - \bar o_k)^2, \quad
        \mathrm{UNC} = \sum_k \bar o_k (1 - \bar o_k)

    and :math:`\mathrm{REL} - \mathrm{RES} + \mathrm{UNC}` is exactly the Brier score
    :math:`\frac{1}{N}\sum_n \sum_k (f_{k,m(n,k)} - [y_n = k])^2` of that binned forecast, which
    tends to the Brier score of the probabilities as bins narrow. An out-of-range label counts as
    an outcome of 0 for every class (then UNC is computed from base rates summing below 1).

    Returns:
      dict of float32 scalars ``reliability``, ``resolution``, ``uncertainty`` and ``brier``
      (``REL - RES + UNC``); all 0 with no examples, all NaN if the stats saw an invalid example or
      a field overflowed.
    """
    gap, _, total, unusable = _classwise_terms(stats)
    safe_total = jnp.maximum(total, 1.0)
    count = stats.count.astype(jnp.float32)
    safe_count = jnp.maximum(count, 1.0)
    hits = stats.hits.astype(jnp.float32)
    base_rate = jnp.sum(hits, axis=-1) / safe_total
    reliability = jnp.sum(jnp.square(gap) / safe_count) / safe_total
    bin_rate = hits / safe_count
    resolution = jnp.sum(count * jnp.square(bin_rate - base_rate[:, None])) / safe_total
    uncertainty = jnp.sum(base_rate * (1.0 - base_rate))
    return {
        "reliability": _binning.nan_if(unusable, reliability),
        "resolution": _binning.nan_if(unusable, resolution),
        "uncertainty": _binning.nan_if(unusable, uncertainty),
        "brier": _binning.nan_if(unusable, reliability - resolution + uncertainty),
    }


def brier_decomposition(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    num_bins: int = 15,
    example_mask: Optional[ArrayLike] = None,
) -> dict[str, Array]:
    """Brier reliability/resolution/uncertainty; see `brier_decomposition_from_stats`."""
    stats = classwise_calibration_stats(probs, labels, num_bins=num_bins, example_mask=example_mask)
    return brier_decomposition_from_stats(stats)
