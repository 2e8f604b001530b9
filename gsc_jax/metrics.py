r"""Accuracy, likelihood and calibration metrics.

Per-example metrics (`top_k_accuracy`, `negative_log_likelihood`, `brier_score`) return one value
per example; reduce them yourself. Calibration metrics are built on `CalibrationStats`, per-bin
integer counts and sums that add up exactly: stats of several batches merged with
`merge_calibration_stats` are bit-identical to the stats of all examples at once, stats added field
by field (``jax.tree.map(jnp.add, a, b)``; not ``a + b``, which concatenates the named tuples) or
across devices with ``jax.lax.psum`` hold the same sums, and every metric computed from them is
bit-identical too.

Which input each function takes: `top_k_accuracy`, `negative_log_likelihood` and the temperature
fits take **logits**; `brier_score`, `calibration_stats`, `classwise_calibration_stats` and every
metric built on them (ECE and friends) take **probabilities** (``jax.nn.softmax(logits)``). Values
are only known at run time, so misuse is caught where it can be: concrete probabilities passed as
logits, and concrete logits passed as probabilities, raise a warning; under `jax.jit` a row that
is not a distribution gives NaN where probabilities are expected.

Labels and invalid predictions (every function here):

* Integer labels in ``[-K, K)`` are valid for ``K`` classes; a negative id counts from the end
  (``-1`` is class ``K - 1``). A label outside ``[-K, K)`` is never a correct prediction: its top-k
  accuracy is 0, its NLL and Brier score are NaN, and in the calibration stats it counts as wrong.
* A row of logits with a NaN entry is never correct (top-k accuracy 0); its NLL is NaN.
* A row of probabilities that is not a distribution (a NaN entry, an entry outside ``[0, 1]``, or a
  sum off 1 by more than ``max(0.01, 8 eps)`` of its dtype) has a NaN Brier score, and is
  counted in ``CalibrationStats.invalid`` instead of a bin; every calibration metric computed from
  stats that saw such a row is NaN. Values are not known at trace time, so this is how a diverged
  model, or logits passed where probabilities are expected, shows.

Confidences enter the stats as fixed-point integers :math:`q = \mathrm{round}(2^{20} c)` (error
< 4.8e-7 per example, below float32 rounding of a probability near 1). A bin's sum of ``q`` is held
in three int32 limbs of weights :math:`2^{20}, 2^{10}, 1` (whole confidences, then 1/1024ths, then
1/1048576ths), the lower two in ``[0, 1024)`` after a carry. Every field is then exact up to
:math:`2^{31} - 1` examples per bin, and `calibration_stats` takes any batch below that size (it
sums runs of :math:`2^{20}` examples separately). `calibration_stats` and `merge_calibration_stats`
carry; adding stats field by field or with ``jax.lax.psum`` instead leaves the lower limbs un-carried but
exact for at least :math:`2^{21}` such additions, and every ``*_from_stats`` function carries
before it reads them. `merge_calibration_stats` marks a field that overflows with -1 (and keeps it
so), and a negative field makes every metric NaN, so an overflow never goes unnoticed there.

Binning follows Guo et al. (2017) and their reference code: ``num_bins`` equal-width bins over
[0, 1], bin ``m`` is the half-open interval ``(m/M, (m+1)/M]`` and a confidence of exactly 0 falls
in the first bin.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gsc_jax import _examples
from gsc_jax import _validation

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

_FRACTION_BITS = 20
_LIMB_BITS = 10
_LIMB_MASK = (1 << _LIMB_BITS) - 1
# Examples summed per partial sum in `calibration_stats`: 1023 * 2**20 plus carries stays < 2**31.
_CHUNK = 1 << 20
_MAX_EXAMPLES = 2**31 - 1


def _check_probs_labels(probs, labels) -> tuple[Array, Array, tuple[int, ...]]:
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


def _check_int_labels(labels, logits, name: str) -> Array:
    labels = _examples.as_labels(labels)
    if _validation.label_kind(labels, logits, logits.ndim - 1) != "int":
        raise ValueError(
            f"`labels` must be integer class ids of the {name}' shape without the class axis."
        )
    return labels


def _check_num_bins(num_bins) -> int:
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"`num_bins` must be an int >= 1, got {num_bins!r}.")
    return int(num_bins)


def _check_stats_inputs(name: str, probs, labels, example_mask, num_bins):
    """The checks of the ``*_stats`` functions; ``probs [N, K]``, ``labels [N]``, a mask ``[N]``."""
    num_bins = _check_num_bins(num_bins)
    probs, labels, batch_shape = _check_probs_labels(probs, labels)
    _validation.warn_if_not_probabilities("probs", probs, name)
    example_mask = _examples.check_example_mask(example_mask, batch_shape)
    if example_mask is not None:
        example_mask = example_mask.reshape(-1)
    if probs.shape[0] > _MAX_EXAMPLES:
        raise ValueError(
            f"`{name}` takes at most {_MAX_EXAMPLES} examples per call, got {probs.shape[0]}; "
            "compute stats of smaller batches and merge them."
        )
    return probs, labels, example_mask, num_bins


def _binned_rows(probs, example_mask, tolerance: float):
    """Per row of ``probs [N, K]``: whether it is a distribution (entries in [0, 1] summing to 1
    within ``tolerance``), whether it takes part (the mask), and whether it is binned (both)."""
    del tolerance  # that of `_validation.distribution_rows`, for the probs' dtype
    is_distribution = _validation.distribution_rows(probs)
    takes_part = jnp.ones(probs.shape[:1], bool) if example_mask is None else example_mask
    return is_distribution, takes_part, takes_part & is_distribution


def top_k_accuracy(logits: ArrayLike, labels: ArrayLike, *, k: int = 1) -> Array:
    """1.0 where the label is among the ``k`` highest logits, else 0.0; shape ``[...]``.

    Ties count in the label's favour: the label is in the top k when fewer than ``k`` classes have a
    strictly higher score. A row with a NaN logit, or a label outside ``[-K, K)``, scores 0.0;
    negative labels count from the end.

    Args:
      logits: ``[..., K]`` scores.
      labels: ``[...]`` integer class ids.
      k: ``1 <= k <= K``.
    """
    logits = _validation.check_float_array("logits", logits)
    num_classes = _validation.check_num_classes(logits, logits.ndim - 1)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_classes:
        raise ValueError(f"`k` must be an int in [1, {num_classes}], got {k!r}.")
    labels = _check_int_labels(labels, logits, "logits")
    ids, valid = _examples.class_ids(labels, num_classes)
    label_scores = jnp.take_along_axis(logits, ids[..., None], axis=-1)
    num_higher = jnp.sum(logits > label_scores, axis=-1)
    has_nan = jnp.any(jnp.isnan(logits), axis=-1)
    return ((num_higher < k) & valid & ~has_nan).astype(jnp.float32)


def negative_log_likelihood(logits: ArrayLike, labels: ArrayLike) -> Array:
    r"""Per-example :math:`-\log \mathrm{softmax}(z)_y` of **logits**, shape ``[...]``.

    Takes logits (or log-probabilities), not probabilities: concrete inputs whose every row is a
    distribution raise a warning (probabilities read as logits give the NLL of a flatter softmax).

    Args:
      logits: ``[..., K]`` scores (16-bit floats are computed in float32).
      labels: ``[...]`` integer class ids; negative ids count from the end.

    Returns:
      ``[...]`` NLL; NaN for a row with a NaN logit or a label outside ``[-K, K)``.
    """
    logits = _validation.check_float_array("logits", logits)
    num_classes = _validation.check_num_classes(logits, logits.ndim - 1)
    labels = _check_int_labels(labels, logits, "logits")
    _validation.warn_if_probabilities("logits", logits, "negative_log_likelihood")
    ids, valid = _examples.class_ids(labels, num_classes)
    log_probs = jax.nn.log_softmax(logits.astype(_validation.compute_dtype(logits.dtype)), axis=-1)
    nll = -jnp.take_along_axis(log_probs, ids[..., None], axis=-1)[..., 0]
    return jnp.where(valid, nll, jnp.nan)


def brier_score(probs: ArrayLike, labels: ArrayLike) -> Array:
    r"""Per-example multi-class Brier score :math:`\sum_i (p_i - [i = y])^2` of **probabilities**.

    Takes probabilities (``jax.nn.softmax(logits)``), not logits: a row that is not a distribution
    gives NaN, and concrete inputs holding such rows raise a warning.

    Args:
      probs: ``[..., K]`` probabilities (16-bit floats are computed in float32).
      labels: ``[...]`` integer class ids; negative ids count from the end.

    Returns:
      ``[...]`` scores; NaN for a row that is not a distribution (a NaN entry included) or a
      label outside ``[-K, K)``.
    """
    probs = _validation.check_float_array("probs", probs)
    num_classes = _validation.check_num_classes(probs, probs.ndim - 1, name="probs")
    labels = _check_int_labels(labels, probs, "probs")
    _validation.warn_if_not_probabilities("probs", probs, "brier_score")
    ids, valid = _examples.class_ids(labels, num_classes)
    valid = valid & _validation.distribution_rows(probs)
    probs = probs.astype(_validation.compute_dtype(probs.dtype))
    one_hot = jax.nn.one_hot(ids, num_classes, dtype=probs.dtype)
    return jnp.where(valid, jnp.sum(jnp.square(probs - one_hot), axis=-1), jnp.nan)


class CalibrationStats(NamedTuple):
    """Per-bin integer sums over equal-width confidence bins (merge: `merge_calibration_stats`)."""

    count: Array  # [num_bins] int32: valid examples whose top-1 confidence falls in the bin.
    correct: Array  # [num_bins] int32: of those, how many have a correct top-1 prediction.
    # [num_bins, 3] int32: their sum of q = round(confidence * 2**20) as limbs of weights
    # (2**20, 2**10, 1), i.e. whole confidences, 1/1024ths and 1/1048576ths.
    confidence: Array
    invalid: Array  # [] int32: examples whose probabilities are not a distribution (not binned).


def _normalize_confidence(confidence: Array) -> Array:
    """Carries the lower limbs into ``[0, 1024)``; a negative (overflowed) bin becomes all -1."""
    whole, mid, low = confidence[..., 0], confidence[..., 1], confidence[..., 2]
    mid_carried = (mid & _LIMB_MASK) + (low >> _LIMB_BITS)
    new_whole = whole + (mid >> _LIMB_BITS) + (mid_carried >> _LIMB_BITS)
    carried = jnp.stack([new_whole, mid_carried & _LIMB_MASK, low & _LIMB_MASK], axis=-1)
    overflowed = (whole < 0) | (mid < 0) | (low < 0) | (new_whole < 0)
    return jnp.where(overflowed[..., None], -1, carried)


def calibration_stats(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    num_bins: int = 15,
    example_mask: Optional[ArrayLike] = None,
) -> CalibrationStats:
    """Bins the top-1 confidence of each example and sums counts, hits and confidences per bin.

    An example is correct when the argmax of its probabilities equals its label (a label outside
    ``[-K, K)`` is never correct; negative labels count from the end). An example whose
    probabilities are not a distribution (a NaN, an entry outside ``[0, 1]``, or a sum off 1 by more
    than ``max(0.01, 8 eps)`` of the probs' dtype; e.g. logits passed by mistake) is counted in
    ``invalid`` and in no bin, and makes every metric computed from the stats NaN.

    Args:
      probs: ``[..., K]`` predicted probabilities (e.g. ``jax.nn.softmax(logits)``), floating point.
      labels: ``[...]`` integer class ids.
      num_bins: number of equal-width bins ``M >= 1`` (Guo et al. use 15).
      example_mask: optional boolean mask of the labels' shape ``[...]``; False examples (padding)
        are not counted anywhere.

    Returns:
      `CalibrationStats` of int32 arrays: ``count`` and ``correct`` ``[M]``, ``confidence``
      ``[M, 3]``, ``invalid`` ``[]``.
    """
    probs, labels, example_mask, num_bins = _check_stats_inputs(
        "calibration_stats", probs, labels, example_mask, num_bins)
    return _calibration_stats(
        probs, labels, example_mask, num_bins=num_bins, tolerance=_validation.distribution_tolerance(probs.dtype)
    )


@functools.partial(jax.jit, static_argnames=("num_bins", "tolerance"))
def _calibration_stats(probs, labels, example_mask, *, num_bins: int, tolerance: float):
    """`calibration_stats` after its checks, on ``probs [N, K]``, ``labels [N]``, a mask ``[N]``."""
    num_examples, num_classes = probs.shape
    probs = probs.astype(_validation.compute_dtype(probs.dtype))
    is_distribution, takes_part, binned = _binned_rows(probs, example_mask, tolerance)

    confidence = jnp.where(is_distribution, jnp.max(probs, axis=-1), 0.0)
    ids, label_valid = _examples.class_ids(labels, num_classes)
    correct = (jnp.argmax(probs, axis=-1) == ids) & label_valid
    bins = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
    quanta = jnp.round(confidence * 2**_FRACTION_BITS).astype(jnp.int32)
    values = jnp.stack(
        [
            jnp.ones_like(quanta),
            correct.astype(jnp.int32),
            quanta >> (2 * _LIMB_BITS),
            (quanta >> _LIMB_BITS) & _LIMB_MASK,
            quanta & _LIMB_MASK,
        ],
        axis=-1,
    ) * binned[:, None].astype(jnp.int32)
    # Sum each run of _CHUNK examples separately so that no int32 partial sum can overflow.
    num_chunks = max(1, -(-num_examples // _CHUNK))
    segments = bins + num_bins * (jnp.arange(num_examples, dtype=jnp.int32) // _CHUNK)
    sums = jax.ops.segment_sum(values, segments, num_segments=num_bins * num_chunks)
    sums = sums.reshape(num_chunks, num_bins, values.shape[-1])
    confidence_sums = jnp.sum(_normalize_confidence(sums[..., 2:]), axis=0, dtype=jnp.int32)
    return CalibrationStats(
        count=jnp.sum(sums[..., 0], axis=0, dtype=jnp.int32),
        correct=jnp.sum(sums[..., 1], axis=0, dtype=jnp.int32),
        confidence=_normalize_confidence(confidence_sums),
        invalid=jnp.sum(takes_part & ~is_distribution, dtype=jnp.int32),
    )


def _add_marking_overflow(a: Array, b: Array) -> Array:
    """``a + b`` of non-negative int32 arrays; -1 where either is negative or the sum overflows."""
    total = a + b
    return jnp.where((a < 0) | (b < 0) | (total < 0), -1, total)


@jax.jit
def merge_calibration_stats(a: CalibrationStats, b: CalibrationStats) -> CalibrationStats:
    """Adds two stats objects with the same number of bins (exact integer sums, carried).

    A field that overflows int32 (more than :math:`2^{31} - 1` examples in a bin) becomes -1 and
    stays -1 in later merges; every metric of such stats is NaN.
    """
    if a.count.shape != b.count.shape:
        raise ValueError(
            f"Cannot merge stats with {a.count.shape[-1]} and {b.count.shape[-1]} bins."
        )
    confidence = _add_marking_overflow(
        _normalize_confidence(a.confidence), _normalize_confidence(b.confidence)
    )
    return CalibrationStats(
        count=_add_marking_overflow(a.count, b.count),
        correct=_add_marking_overflow(a.correct, b.correct),
        confidence=_normalize_confidence(confidence),
        invalid=_add_marking_overflow(a.invalid, b.invalid),
    )


def _is_unusable(stats: CalibrationStats, confidence: Array) -> Array:
    """True if the stats saw an invalid example or a field overflowed (is negative)."""
    return (
        jnp.any(stats.invalid != 0)
        | jnp.any(stats.count < 0)
        | jnp.any(stats.correct < 0)
        | jnp.any(confidence < 0)
    )


def _confidence_terms(correct: Array, confidence: Array) -> tuple[Array, Array]:
    """Float32 ``(correct - confidence sum, confidence sum)`` from carried int limbs.

    The whole part is subtracted from ``correct`` in exact integer arithmetic, so the gap is rounded
    once however large the counts.
    """
    whole = confidence[..., 0]
    fraction = (
        (confidence[..., 1] * (1 << _LIMB_BITS) + confidence[..., 2]).astype(jnp.float32)
        / float(1 << _FRACTION_BITS)
    )
    gap = (correct - whole).astype(jnp.float32) - fraction
    return gap, whole.astype(jnp.float32) + fraction


def _nan_if(unusable: Array, value: Array) -> Array:
    return jnp.where(unusable, jnp.nan, value)


@jax.jit
def expected_calibration_error_from_stats(stats: CalibrationStats) -> Array:
    r"""ECE (Guo et al. 2017).

    .. math::
        \mathrm{ECE} = \sum_m \frac{|B_m|}{N} |\mathrm{acc}(B_m) - \mathrm{conf}(B_m)|

    Empty bins contribute 0; no examples gives 0; stats with an invalid example or an overflowed
    field give NaN. Returns a float32 scalar.
    """
    confidence = _normalize_confidence(stats.confidence)
    gap, _ = _confidence_terms(stats.correct, confidence)
    total = jnp.maximum(jnp.sum(stats.count.astype(jnp.float32)), 1.0)
    return _nan_if(_is_unusable(stats, confidence), jnp.sum(jnp.abs(gap)) / total)


@jax.jit
def maximum_calibration_error_from_stats(stats: CalibrationStats) -> Array:
    r"""MCE: :math:`\max_m |\mathrm{acc}(B_m) - \mathrm{conf}(B_m)|` over non-empty bins.

    0 if there are no examples; NaN if the stats saw an invalid example or a field overflowed.
    """
    confidence = _normalize_confidence(stats.confidence)
    gap, _ = _confidence_terms(stats.correct, confidence)
    count = stats.count.astype(jnp.float32)
    gaps = jnp.abs(gap) / jnp.maximum(count, 1.0)
    mce = jnp.max(jnp.where(count > 0, gaps, 0.0))
    return _nan_if(_is_unusable(stats, confidence), mce)


@functools.partial(jax.jit, static_argnames="num_bins")
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
      float32 scalar; NaN if the stats saw an invalid example or a field overflowed.
    """
    num_bins = _check_num_bins(num_bins)
    confidence = _normalize_confidence(fine_stats.confidence)
    count = fine_stats.count.astype(jnp.float32)
    total = jnp.maximum(jnp.sum(count), 1.0)
    mass_midpoint = jnp.cumsum(count) - 0.5 * count
    group = jnp.clip(jnp.floor(num_bins * mass_midpoint / total).astype(jnp.int32), 0, num_bins - 1)

    def group_sum(values):
        return jax.ops.segment_sum(values, group, num_segments=num_bins)

    group_gap, _ = _confidence_terms(
        group_sum(fine_stats.correct), _normalize_confidence(group_sum(confidence))
    )
    ace = jnp.sum(jnp.abs(group_gap)) / total
    return _nan_if(_is_unusable(fine_stats, confidence), ace)


@jax.jit
def reliability_diagram(stats: CalibrationStats) -> dict[str, Array]:
    """Per-bin data for a reliability diagram.

    Returns:
      dict of ``[num_bins]`` arrays: ``bin_lower``, ``bin_upper``, ``count``, ``accuracy`` and
      ``confidence`` (the mean accuracy and confidence in the bin; 0 for empty bins, NaN everywhere
      if the stats saw an invalid example or a field overflowed).
    """
    confidence = _normalize_confidence(stats.confidence)
    _, confidence_sum = _confidence_terms(stats.correct, confidence)
    num_bins = stats.count.shape[0]
    edges = jnp.linspace(0.0, 1.0, num_bins + 1)
    safe_count = jnp.maximum(stats.count.astype(jnp.float32), 1.0)
    unusable = _is_unusable(stats, confidence)
    return {
        "bin_lower": edges[:-1],
        "bin_upper": edges[1:],
        "count": stats.count,
        "accuracy": _nan_if(unusable, stats.correct.astype(jnp.float32) / safe_count),
        "confidence": _nan_if(unusable, confidence_sum / safe_count),
    }


def expected_calibration_error(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    num_bins: int = 15,
    example_mask: Optional[ArrayLike] = None,
) -> Array:
    """ECE of ``probs [..., K]`` against integer ``labels [...]``; see `calibration_stats`."""
    stats = calibration_stats(probs, labels, num_bins=num_bins, example_mask=example_mask)
    return expected_calibration_error_from_stats(stats)


def maximum_calibration_error(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    num_bins: int = 15,
    example_mask: Optional[ArrayLike] = None,
) -> Array:
    """MCE over equal-width bins; see `maximum_calibration_error_from_stats`."""
    stats = calibration_stats(probs, labels, num_bins=num_bins, example_mask=example_mask)
    return maximum_calibration_error_from_stats(stats)


ADAPTIVE_FINE_BINS = 4096


def adaptive_calibration_error(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    num_bins: int = 15,
    example_mask: Optional[ArrayLike] = None,
) -> Array:
    """Equal-mass ECE with ``num_bins`` groups, resolved on a 4096-bin histogram.

    To accumulate it over batches, accumulate ``calibration_stats(..., num_bins=4096)`` and call
    `adaptive_calibration_error_from_stats`.
    """
    stats = calibration_stats(
        probs, labels, num_bins=ADAPTIVE_FINE_BINS, example_mask=example_mask
    )
    return adaptive_calibration_error_from_stats(stats, num_bins=num_bins)


@jax.jit
def risk_coverage_curve_from_stats(stats: CalibrationStats) -> dict[str, Array]:
    r"""Risk-coverage curve of selective classification at bin resolution (Geifman & El-Yaniv 2017).

    A selective classifier accepts the examples whose top-1 confidence reaches a threshold and
    abstains on the rest. With the threshold at the lower edge of bin ``m``, it accepts bins
    ``m, ..., M-1``:

    .. math::
        \mathrm{coverage}_m = \frac{1}{N}\sum_{j \ge m} |B_j|, \qquad
        \mathrm{risk}_m = \frac{\sum_{j \ge m} (|B_j| - \mathrm{correct}(B_j))}
        {\sum_{j \ge m} |B_j|}

    Examples in one bin are accepted or rejected together (as examples with tied confidences
    are), so the curve is exact for a classifier that thresholds the binned confidence; on a fine
    histogram (e.g. 4096 bins) it resolves any confidence gap wider than a bin.

    Args:
      stats: `CalibrationStats` with ``M`` bins.

    Returns:
      dict of ``[M]`` float32 arrays ``threshold`` (the bins' lower edges), ``coverage`` and
      ``risk`` (0 where nothing is accepted); NaN everywhere but ``threshold`` if the stats saw an
      invalid example or a field overflowed.
    """
    confidence = _normalize_confidence(stats.confidence)
    unusable = _is_unusable(stats, confidence)
    count = stats.count.astype(jnp.float32)
    errors = (stats.count - stats.correct).astype(jnp.float32)
    accepted = jnp.cumsum(count[::-1])[::-1]
    accepted_errors = jnp.cumsum(errors[::-1])[::-1]
    total = jnp.maximum(jnp.sum(count), 1.0)
    num_bins = stats.count.shape[0]
    return {
        "threshold": jnp.arange(num_bins, dtype=jnp.float32) / num_bins,
        "coverage": _nan_if(unusable, accepted / total),
        "risk": _nan_if(unusable, accepted_errors / jnp.maximum(accepted, 1.0)),
    }


@jax.jit
def area_under_risk_coverage_from_stats(stats: CalibrationStats) -> Array:
    r"""AURC, the area under the risk-coverage curve (Geifman et al. 2019), at bin resolution.

    Each example weighs :math:`1/N` and contributes the selective risk at the threshold that
    first accepts it, that of its bin:

    .. math::
        \mathrm{AURC} = \sum_m \frac{|B_m|}{N}\,\mathrm{risk}_m

    with :math:`\mathrm{risk}_m` from `risk_coverage_curve_from_stats`. This is the per-example
    AURC :math:`\frac{1}{N}\sum_{i} \mathrm{risk}(\text{examples with } c \ge c_i)` with the
    confidences replaced by their bin, i.e. with ties within a bin. Lower is better; 0 with no
    examples; NaN if the stats saw an invalid example or a field overflowed. float32 scalar.
    """
    curve = risk_coverage_curve_from_stats(stats)
    total = jnp.maximum(jnp.sum(stats.count.astype(jnp.float32)), 1.0)
    return jnp.sum(stats.count.astype(jnp.float32) * curve["risk"]) / total


def area_under_risk_coverage(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    num_bins: int = ADAPTIVE_FINE_BINS,
    example_mask: Optional[ArrayLike] = None,
) -> Array:
    """AURC of ``probs [..., K]`` against ``labels [...]`` on a ``num_bins`` histogram (4096).

    To accumulate it over batches or devices, accumulate `calibration_stats` with the same
    ``num_bins`` and call `area_under_risk_coverage_from_stats`.
    """
    stats = calibration_stats(probs, labels, num_bins=num_bins, example_mask=example_mask)
    return area_under_risk_coverage_from_stats(stats)


def _check_debias(debias) -> bool:
    if not isinstance(debias, (bool, np.bool_)):
        raise ValueError(f"`debias` must be a bool, got {debias!r}.")
    return bool(debias)


def l2_calibration_error_from_stats(
    stats: CalibrationStats, *, debias: bool = True
) -> dict[str, Array]:
    r"""The L2 (root-mean-square) calibration error over the stats' bins, optionally debiased.

    With :math:`n_m = |B_m|`, :math:`\mathrm{acc}_m` and :math:`\mathrm{conf}_m` the bin's
    accuracy and mean top-1 confidence, the plug-in estimate of the squared L2 calibration error
    is

    .. math::
        \widehat{\mathrm{CE}}^2_{\mathrm{plug\text{-}in}} = \sum_m \frac{n_m}{N}
        (\mathrm{acc}_m - \mathrm{conf}_m)^2 .

    It is biased upwards: even for a calibrated model :math:`\mathrm{acc}_m` is a mean of
    :math:`n_m` Bernoulli outcomes and its variance adds about
    :math:`\mathrm{acc}_m(1 - \mathrm{acc}_m)/n_m` to each bin's term. The debiased estimate of
    Kumar, Liang & Ma (2019), "Verified Uncertainty Calibration" (NeurIPS; reference code
    ``p-lambda/verified_calibration``, ``unbiased_square_ce``) subtracts the unbiased estimate of
    that variance in every bin with at least two examples and drops the bins with fewer:

    .. math::
        \widehat{\mathrm{CE}}^2_{\mathrm{debiased}} = \sum_{m:\,n_m \ge 2} \frac{n_m}{N}
        \left[(\mathrm{acc}_m - \mathrm{conf}_m)^2
        - \frac{\mathrm{acc}_m (1 - \mathrm{acc}_m)}{n_m - 1}\right].

    The squared estimate can be negative (a well calibrated model, few examples per bin); the L2
    error is :math:`\sqrt{\max(\widehat{\mathrm{CE}}^2, 0)}`. Kumar et al. show the debiased
    estimate needs far fewer examples than the plug-in one for the same accuracy. The stats' bins
    are used as they are: equal-width top-label bins here, as Guo et al.; Kumar et al.'s default
    uses equal-mass bins.

    Args:
      stats: `CalibrationStats` (any number of bins; 15 is the usual choice).
      debias: subtract the per-bin variance term (True) or return the plug-in estimate (False).

    Returns:
      dict of float32 scalars ``l2_ece`` (the square root) and ``squared_l2_ece`` (the signed
      estimate before clamping); both 0 with no examples, NaN if the stats saw an invalid example
      or a field overflowed.
    """
    return _l2_calibration_error_from_stats(stats, debias=_check_debias(debias))


@functools.partial(jax.jit, static_argnames="debias")
def _l2_calibration_error_from_stats(stats: CalibrationStats, *, debias: bool):
    confidence = _normalize_confidence(stats.confidence)
    gap, _ = _confidence_terms(stats.correct, confidence)
    count = stats.count.astype(jnp.float32)
    safe_count = jnp.maximum(count, 1.0)
    total = jnp.maximum(jnp.sum(count), 1.0)
    per_bin = jnp.square(gap) / safe_count  # n_m (acc_m - conf_m)^2
    if debias:
        accuracy = stats.correct.astype(jnp.float32) / safe_count
        variance = accuracy * (1.0 - accuracy) / jnp.maximum(count - 1.0, 1.0)
        per_bin = jnp.where(count >= 2, per_bin - count * variance, 0.0)
    squared = jnp.sum(per_bin) / total
    unusable = _is_unusable(stats, confidence)
    return {
        "l2_ece": _nan_if(unusable, jnp.sqrt(jnp.maximum(squared, 0.0))),
        "squared_l2_ece": _nan_if(unusable, squared),
    }


def l2_calibration_error(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    num_bins: int = 15,
    debias: bool = True,
    example_mask: Optional[ArrayLike] = None,
) -> dict[str, Array]:
    """Debiased (or plug-in) L2 calibration error; see `l2_calibration_error_from_stats`."""
    debias = _check_debias(debias)
    stats = calibration_stats(probs, labels, num_bins=num_bins, example_mask=example_mask)
    return l2_calibration_error_from_stats(stats, debias=debias)


# Bisection steps for the smooth-ECE bandwidth: brackets sigma* in [0, 1] to 2**-24.
_SMOOTH_ECE_STEPS = 24
# Periods of the folded Gaussian summed on each side (period 2 in confidence; sigma <= 1).
_SMOOTH_ECE_IMAGES = 3


def _smooth_residual_grid(stats: CalibrationStats):
    r"""Residual mass on the ``M + 1`` bin edges, evenly extended to a circle of ``2M`` points.

    Each bin's residual sum :math:`\sum (y - f) / N` sits at the bin's mean confidence and is split
    between the bin's two edges in proportion to the distance (mass and first moment kept). The
    edges ``0`` and ``M`` are their own mirror images and count twice.
    """
    confidence = _normalize_confidence(stats.confidence)
    gap, confidence_sum = _confidence_terms(stats.correct, confidence)
    count = stats.count.astype(jnp.float32)
    num_bins = count.shape[0]
    total = jnp.sum(count)
    residual = gap / jnp.maximum(total, 1.0)
    position = confidence_sum / jnp.maximum(count, 1.0) * num_bins
    upper_share = jnp.clip(position - jnp.arange(num_bins, dtype=jnp.float32), 0.0, 1.0)
    edges = jnp.zeros(num_bins + 1, jnp.float32)
    edges = edges.at[:-1].add((1.0 - upper_share) * residual).at[1:].add(upper_share * residual)
    circle = jnp.concatenate([edges.at[0].multiply(2.0).at[-1].multiply(2.0), edges[-2:0:-1]])
    return circle, total, _is_unusable(stats, confidence)


def _smooth_ece_at(circle_fft: Array, sigma: Array, num_bins: int) -> Array:
    """smECE at bandwidth ``sigma``: the L1 norm over [0, 1] of the kernel-smoothed residual."""
    period = 2 * num_bins
    offsets = jnp.arange(period, dtype=jnp.float32)[None, :] + period * jnp.arange(
        -_SMOOTH_ECE_IMAGES, _SMOOTH_ECE_IMAGES + 1, dtype=jnp.float32)[:, None]
    scaled = offsets / (num_bins * jnp.maximum(sigma, 1e-12))
    kernel = jnp.sum(jnp.exp(-0.5 * jnp.square(scaled)), axis=0)
    kernel = kernel / (jnp.sum(kernel) / num_bins)  # integrates to 1 over the period
    smoothed = jnp.fft.irfft(circle_fft * jnp.fft.rfft(kernel), n=period)
    # The circle holds [0, 1] and its mirror image: half its sum is the integral over [0, 1].
    return 0.5 * jnp.sum(jnp.abs(smoothed)) / num_bins


@jax.jit
def smooth_calibration_error_from_stats(stats: CalibrationStats) -> dict[str, Array]:
    r"""Smooth ECE (Błasiok & Nakkiran 2023) of the top-1 confidence, from a fine histogram.

    With residuals :math:`r_i = y_i - f_i` (:math:`y_i` whether the top-1 prediction is correct,
    :math:`f_i` its confidence) and the reflected Gaussian kernel
    :math:`\tilde K_\sigma(t, f) = \sum_{j \in \mathbb{Z}} \phi_\sigma(t - f - 2j)
    + \phi_\sigma(t + f - 2j)` (the Gaussian folded onto [0, 1] by reflecting at both ends,
    :math:`\int_0^1 \tilde K_\sigma(t, f)\,dt = 1`),

    .. math::
        \mathrm{smECE}_\sigma = \int_0^1 \Big|\frac{1}{N}\sum_i r_i\,
        \tilde K_\sigma(t, f_i)\Big|\,dt ,

    the L1 norm of the kernel-smoothed residual weighted by the smoothed density of confidences.
    **Bandwidth rule:** :math:`\sigma^*` is the fixed point :math:`\mathrm{smECE}_{\sigma^*} =
    \sigma^*`. Reflected Gaussian smoothing is a Markov semigroup, so :math:`\mathrm{smECE}_\sigma`
    does not increase with :math:`\sigma` and the fixed point in [0, 1] is unique; it is found by
    24 bisection steps (to :math:`2^{-24}`). No bandwidth needs choosing, and the result is a
    consistent estimate of the distance to calibration up to constant factors (Błasiok &
    Nakkiran 2023, "Smooth ECE: Principled Reliability Diagrams via Kernel Smoothing"; reference
    code ``apple/ml-calibration``, ``relplot.smECE``, which bisects the same fixed point to
    :math:`2^{-10}` and reflects once at each end).

    Accumulable approximation: the stats hold, per equal-width bin of width :math:`h = 1/M`, the
    exact count, number correct and confidence sum. Each bin's residual :math:`\sum_{i \in B_m}
    r_i` is placed at the bin's mean confidence, shared linearly between the bin's edges (which
    keeps its mass and first moment), and smoothed on the grid of edges by a circular FFT
    convolution that realises the reflections exactly. Moving a point by :math:`\delta` changes
    :math:`\mathrm{smECE}_\sigma` by at most :math:`|r_i| \delta \sqrt{2/\pi}/(N\sigma)`, and the
    first-order part cancels within a bin, so the error is far below :math:`h` once
    :math:`\sigma^* \gg h`. With `smooth_calibration_error`'s 4096 bins, against the exact
    estimator on the raw points (float64, quadrature on 4001 points), the measured difference in
    :math:`\mathrm{smECE}_{\sigma^*}` was below 2e-5 and :math:`\sigma^*` within 1% of the exact
    fixed point, for :math:`\sigma^*` from 0.008 to 0.19 and 1000 to 20000 examples. Use a fine
    histogram (``calibration_stats(..., num_bins=4096)``); on coarse bins this is a smoothed
    binned ECE.

    Args:
      stats: `CalibrationStats`, preferably with many bins.

    Returns:
      dict of float32 scalars ``smooth_ece`` (:math:`\mathrm{smECE}_{\sigma^*}`) and ``sigma``
      (:math:`\sigma^*`); both 0 with no examples, NaN if the stats saw an invalid example or a
      field overflowed.
    """
    circle, total, unusable = _smooth_residual_grid(stats)
    num_bins = stats.count.shape[0]
    circle_fft = jnp.fft.rfft(circle)

    def bisect(_, bracket):
        low, high = bracket
        middle = 0.5 * (low + high)
        above = _smooth_ece_at(circle_fft, middle, num_bins) > middle
        return jnp.where(above, middle, low), jnp.where(above, high, middle)

    _, sigma = jax.lax.fori_loop(
        0, _SMOOTH_ECE_STEPS, bisect, (jnp.float32(0.0), jnp.float32(1.0))
    )
    empty = total == 0
    sigma = jnp.where(empty, 0.0, sigma)
    smooth_ece = jnp.where(empty, 0.0, _smooth_ece_at(circle_fft, sigma, num_bins))
    return {"smooth_ece": _nan_if(unusable, smooth_ece), "sigma": _nan_if(unusable, sigma)}


def smooth_calibration_error(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    num_bins: int = ADAPTIVE_FINE_BINS,
    example_mask: Optional[ArrayLike] = None,
) -> dict[str, Array]:
    """Smooth ECE and its bandwidth on a ``num_bins`` histogram (4096); see
    `smooth_calibration_error_from_stats`.

    To accumulate it over batches or devices, accumulate `calibration_stats` with the same
    ``num_bins`` and call `smooth_calibration_error_from_stats`.
    """
    stats = calibration_stats(probs, labels, num_bins=num_bins, example_mask=example_mask)
    return smooth_calibration_error_from_stats(stats)


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
    probs, labels, example_mask, num_bins = _check_stats_inputs(
        "classwise_calibration_stats", probs, labels, example_mask, num_bins)
    return _classwise_calibration_stats(
        probs, labels, example_mask, num_bins=num_bins, tolerance=_validation.distribution_tolerance(probs.dtype)
    )


@functools.partial(jax.jit, static_argnames=("num_bins", "tolerance"))
def _classwise_calibration_stats(probs, labels, example_mask, *, num_bins: int, tolerance: float):
    num_examples, num_classes = probs.shape
    probs = probs.astype(_validation.compute_dtype(probs.dtype))
    is_distribution, takes_part, binned = _binned_rows(probs, example_mask, tolerance)
    probs = jnp.where(is_distribution[:, None], probs, 0.0)
    ids, label_valid = _examples.class_ids(labels, num_classes)
    hits = (jnp.arange(num_classes)[None, :] == ids[:, None]) & label_valid[:, None]
    bins = jnp.clip(jnp.ceil(probs * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
    quanta = jnp.round(probs * 2**_FRACTION_BITS).astype(jnp.int32)
    values = jnp.stack(
        [
            jnp.ones_like(quanta),
            hits.astype(jnp.int32),
            quanta >> (2 * _LIMB_BITS),
            (quanta >> _LIMB_BITS) & _LIMB_MASK,
            quanta & _LIMB_MASK,
        ],
        axis=-1,
    ) * binned[:, None, None].astype(jnp.int32)
    num_chunks = max(1, -(-num_examples // _CHUNK))
    cells = num_classes * num_bins
    chunk = (jnp.arange(num_examples, dtype=jnp.int32) // _CHUNK)[:, None]
    segments = jnp.arange(num_classes, dtype=jnp.int32)[None, :] * num_bins + bins + cells * chunk
    sums = jax.ops.segment_sum(
        values.reshape(-1, values.shape[-1]), segments.reshape(-1), num_segments=cells * num_chunks
    )
    sums = sums.reshape(num_chunks, num_classes, num_bins, values.shape[-1])
    confidence_sums = jnp.sum(_normalize_confidence(sums[..., 2:]), axis=0, dtype=jnp.int32)
    return ClasswiseCalibrationStats(
        count=jnp.sum(sums[..., 0], axis=0, dtype=jnp.int32),
        hits=jnp.sum(sums[..., 1], axis=0, dtype=jnp.int32),
        confidence=_normalize_confidence(confidence_sums),
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
    confidence = _add_marking_overflow(
        _normalize_confidence(a.confidence), _normalize_confidence(b.confidence)
    )
    return ClasswiseCalibrationStats(
        count=_add_marking_overflow(a.count, b.count),
        hits=_add_marking_overflow(a.hits, b.hits),
        confidence=_normalize_confidence(confidence),
        invalid=_add_marking_overflow(a.invalid, b.invalid),
    )


def _classwise_terms(stats: ClasswiseCalibrationStats):
    """``(gap [K, M], confidence sum [K, M], N, unusable)`` with gap = hits - sum of p_k."""
    confidence = _normalize_confidence(stats.confidence)
    unusable = (
        jnp.any(stats.invalid != 0)
        | jnp.any(stats.count < 0)
        | jnp.any(stats.hits < 0)
        | jnp.any(confidence < 0)
    )
    gap, confidence_sum = _confidence_terms(stats.hits, confidence)
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
    return _nan_if(unusable, sce)


def classwise_calibration_error(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    num_bins: int = 15,
    example_mask: Optional[ArrayLike] = None,
) -> Array:
    """Classwise ECE (SCE) of ``probs [..., K]``; see `classwise_calibration_error_from_stats`."""
    stats = classwise_calibration_stats(
        probs, labels, num_bins=num_bins, example_mask=example_mask
    )
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
        "reliability": _nan_if(unusable, reliability),
        "resolution": _nan_if(unusable, resolution),
        "uncertainty": _nan_if(unusable, uncertainty),
        "brier": _nan_if(unusable, reliability - resolution + uncertainty),
    }


def brier_decomposition(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    num_bins: int = 15,
    example_mask: Optional[ArrayLike] = None,
) -> dict[str, Array]:
    """Brier reliability/resolution/uncertainty; see `brier_decomposition_from_stats`."""
    stats = classwise_calibration_stats(
        probs, labels, num_bins=num_bins, example_mask=example_mask
    )
    return brier_decomposition_from_stats(stats)
