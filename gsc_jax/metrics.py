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

# The implementations live in private modules (one per family, one shared binned sum in
# `gsc_jax._binning`); these are the public names.
from gsc_jax._calibration_metrics import ADAPTIVE_FINE_BINS
from gsc_jax._calibration_metrics import CalibrationStats
from gsc_jax._calibration_metrics import adaptive_calibration_error
from gsc_jax._calibration_metrics import adaptive_calibration_error_from_stats
from gsc_jax._calibration_metrics import area_under_risk_coverage
from gsc_jax._calibration_metrics import area_under_risk_coverage_from_stats
from gsc_jax._calibration_metrics import calibration_stats
from gsc_jax._calibration_metrics import expected_calibration_error
from gsc_jax._calibration_metrics import expected_calibration_error_from_stats
from gsc_jax._calibration_metrics import l2_calibration_error
from gsc_jax._calibration_metrics import l2_calibration_error_from_stats
from gsc_jax._calibration_metrics import maximum_calibration_error
from gsc_jax._calibration_metrics import maximum_calibration_error_from_stats
from gsc_jax._calibration_metrics import merge_calibration_stats
from gsc_jax._calibration_metrics import reliability_diagram
from gsc_jax._calibration_metrics import risk_coverage_curve_from_stats
from gsc_jax._calibration_metrics import smooth_calibration_error
from gsc_jax._calibration_metrics import smooth_calibration_error_from_stats
from gsc_jax._classwise_metrics import ClasswiseCalibrationStats
from gsc_jax._classwise_metrics import brier_decomposition
from gsc_jax._classwise_metrics import brier_decomposition_from_stats
from gsc_jax._classwise_metrics import classwise_calibration_error
from gsc_jax._classwise_metrics import classwise_calibration_error_from_stats
from gsc_jax._classwise_metrics import classwise_calibration_stats
from gsc_jax._classwise_metrics import merge_classwise_calibration_stats
from gsc_jax._per_example_metrics import brier_score
from gsc_jax._per_example_metrics import negative_log_likelihood
from gsc_jax._per_example_metrics import top_k_accuracy

__all__ = [
    "ADAPTIVE_FINE_BINS",
    "CalibrationStats",
    "ClasswiseCalibrationStats",
    "adaptive_calibration_error",
    "adaptive_calibration_error_from_stats",
    "area_under_risk_coverage",
    "area_under_risk_coverage_from_stats",
    "brier_decomposition",
    "brier_decomposition_from_stats",
    "brier_score",
    "calibration_stats",
    "classwise_calibration_error",
    "classwise_calibration_error_from_stats",
    "classwise_calibration_stats",
    "expected_calibration_error",
    "expected_calibration_error_from_stats",
    "l2_calibration_error",
    "l2_calibration_error_from_stats",
    "maximum_calibration_error",
    "maximum_calibration_error_from_stats",
    "merge_calibration_stats",
    "merge_classwise_calibration_stats",
    "negative_log_likelihood",
    "reliability_diagram",
    "risk_coverage_curve_from_stats",
    "smooth_calibration_error",
    "smooth_calibration_error_from_stats",
    "top_k_accuracy",
]
