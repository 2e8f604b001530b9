"""The evaluation summary every experiment reports: top-1, top-5, NLL, ECE, reliability statistics.

Evaluation sums masked per-batch statistics, so that a test set padded to whole batches is weighted
exactly, and turns them into fractions once at the end:

    sums = batch_sums(logits, labels, example_mask=mask)     # jit / vmap / sharded
    sums = add(sums, batch_sums(...))                        # over batches
    summary = finalize(jax.device_get(sums))                 # plain Python numbers

`make_evaluator` does this over the padded, device-resident test set of a training run, one jitted
accumulation per batch. Calibration follows Guo et al. (2017): 15 equal-width confidence bins
(`gsc_jax.metrics.calibration_stats`).
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from gsc_jax import metrics

NUM_BINS = 15
TOP_K = 5


def batch_sums(logits: jax.Array, labels: jax.Array, *, example_mask: jax.Array | None = None,
               num_bins: int = NUM_BINS, confusion: bool = False) -> dict:
    """Sums of one batch's statistics over the examples where `example_mask` is True.

    Args:
      logits: float [B, K].
      labels: int [B].
      example_mask: bool [B]; False marks padding. Default: every example counts.
      num_bins: calibration bins.
      confusion: also count the confusion matrix.

    Returns:
      A dict of scalars 'count' (examples), 'correct1' and 'correct5' (top-1 / top-min(5, K) hits),
      'nll' (sum of -log softmax(logits)_y), 'nonfinite' (examples with a NaN or infinite logit;
      never counted as hits, and they make 'nll' non-finite), and 'calib' (the
      `gsc_jax.metrics.CalibrationStats` of softmax(logits)); with `confusion`, also 'confusion',
      int32 [K, K]: [i, j] counts the examples of label i whose top-1 class is j (examples with a
      non-finite logit, or a label outside [0, K), are not counted).
    """
    logits = logits.astype(jnp.float32)
    mask = (jnp.ones(labels.shape, bool) if example_mask is None
            else jnp.asarray(example_mask, bool))
    weight = mask.astype(jnp.float32)
    finite = jnp.all(jnp.isfinite(logits), axis=-1)
    hit_weight = weight * finite
    k = min(TOP_K, logits.shape[-1])
    nll = metrics.negative_log_likelihood(logits, labels)
    extra = {}
    if confusion:
        num_classes = logits.shape[-1]
        counted = mask & finite & (labels >= 0) & (labels < num_classes)
        extra["confusion"] = jnp.zeros((num_classes, num_classes), jnp.int32).at[
            jnp.where(counted, labels, 0), jnp.argmax(logits, axis=-1)].add(
                counted.astype(jnp.int32))
    return {**extra,
        "count": jnp.sum(weight),
        "correct1": jnp.sum(metrics.top_k_accuracy(logits, labels, k=1) * hit_weight),
        "correct5": jnp.sum(metrics.top_k_accuracy(logits, labels, k=k) * hit_weight),
        "nll": jnp.sum(jnp.where(mask, nll, 0.0)),
        "nonfinite": jnp.sum(weight * ~finite),
        "calib": metrics.calibration_stats(jax.nn.softmax(logits), labels, num_bins=num_bins,
                                           example_mask=mask),
    }


def add(a: dict, b: dict) -> dict:
    """Sums of two sets of examples (exact for the integer calibration statistics)."""
    return jax.tree.map(jnp.add, a, b)


def zeros(num_classes: int, num_bins: int = NUM_BINS, confusion: bool = False) -> dict:
    """The sums of no examples, in `batch_sums`' structure."""
    shapes = jax.eval_shape(functools.partial(batch_sums, num_bins=num_bins, confusion=confusion),
                            jax.ShapeDtypeStruct((1, num_classes), jnp.float32),
                            jax.ShapeDtypeStruct((1,), jnp.int32))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def finalize(sums: dict) -> dict:
    """Turns (host) sums into the summary: plain Python numbers and lists, ready for JSON.

    Returns:
      {'count': int, 'top1', 'top5', 'nll', 'ece': fractions (NaN for no examples; 'nll' and 'ece'
      are NaN when an example had a non-finite logit), 'nonfinite': int, 'reliability': dict of
      per-bin lists bin_lower, bin_upper, count, accuracy, confidence}, 'aurc' and
      'risk_coverage' (the area under the risk-coverage curve and the curve's lists threshold,
      coverage, risk, at the resolution of the confidence bins); when the sums hold a
      confusion matrix, also 'confusion' (K lists of K ints) and 'per_class_accuracy' (K
      fractions, the diagonal over the row sums; NaN for a class without examples).
    """
    n = float(sums["count"])
    mean = lambda key: float(sums[key]) / n if n > 0 else float("nan")  # noqa: E731
    extra = {}
    if "confusion" in sums:
        confusion = np.asarray(sums["confusion"], np.int64)
        rows = confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(rows > 0, np.diag(confusion) / np.maximum(rows, 1), np.nan)
        extra = {"confusion": confusion.tolist(), "per_class_accuracy": per_class.tolist()}
    return {**extra,
        "count": int(round(n)),
        "top1": mean("correct1"),
        "top5": mean("correct5"),
        "nll": mean("nll"),
        "ece": float(metrics.expected_calibration_error_from_stats(sums["calib"])),
        "nonfinite": int(round(float(sums["nonfinite"]))),
        "reliability": {k: np.asarray(v).tolist()
                        for k, v in metrics.reliability_diagram(sums["calib"]).items()},
        "aurc": float(metrics.area_under_risk_coverage_from_stats(sums["calib"])),
        "risk_coverage": {k: np.asarray(v).tolist()
                          for k, v in metrics.risk_coverage_curve_from_stats(sums["calib"]).items()},
    }


def pad_to_multiple(images: np.ndarray, labels: np.ndarray, multiple: int):
    """Zero-pads [M, ...] arrays to a multiple of `multiple`; returns (images, labels, mask)."""
    m = len(labels)
    extra = (-m) % multiple
    mask = np.concatenate([np.ones(m, bool), np.zeros(extra, bool)])
    images = np.concatenate([images, np.zeros((extra, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(extra, labels.dtype)])
    return images, labels, mask


def make_evaluator(logits_fn: Callable, *, batch_size: int, num_classes: int,
                   num_bins: int = NUM_BINS, replicated=None, batch_sharded=None,
                   confusion: bool = False) -> Callable:
    """Builds `evaluate(variables, images, labels, mask) -> finalize(...)` over padded arrays.

    Args:
      logits_fn: `logits_fn(variables, images [B, ...]) -> logits [B, K]` (traced under jit).
      batch_size: B; the arrays' length is a multiple of it (`pad_to_multiple`).
      num_classes: K.
      num_bins: calibration bins.
      replicated: sharding of the running sums (e.g. `parallel.replicated(mesh)`); None: default.
      batch_sharded: sharding constraint of each batch (e.g. `parallel.batch_sharded(mesh)`).
      confusion: also count the confusion matrix (and report per-class accuracy).

    Each batch is one call of a jitted accumulation `sums + batch_sums(batch i)`; the host reads the
    sums once, at the end.
    """
    init = jax.jit(lambda: zeros(num_classes, num_bins, confusion), out_shardings=replicated)

    def accumulate(sums, variables, images_all, labels_all, mask_all, i):
        def batch(a):
            a = jax.lax.dynamic_slice_in_dim(a, i * batch_size, batch_size)
            return a if batch_sharded is None else jax.lax.with_sharding_constraint(
                a, batch_sharded)

        images, labels, mask = batch(images_all), batch(labels_all), batch(mask_all)
        logits = logits_fn(variables, images)
        return add(sums, batch_sums(logits, labels, example_mask=mask, num_bins=num_bins,
                                    confusion=confusion))

    accumulate = jax.jit(accumulate, donate_argnums=0)

    def evaluate(variables, images, labels, mask) -> dict:
        if len(labels) % batch_size:
            raise ValueError(f"{len(labels)} examples are not a multiple of the batch size "
                             f"{batch_size}; pad them with `pad_to_multiple`.")
        sums = init()
        for i in range(len(labels) // batch_size):
            sums = accumulate(sums, variables, images, labels, mask, i)
        return finalize(jax.device_get(sums))

    return evaluate
