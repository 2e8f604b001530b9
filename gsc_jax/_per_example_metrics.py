"""Per-example metrics: top-k accuracy, negative log-likelihood (logits) and Brier score (probabilities)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gsc_jax import _binning
from gsc_jax import _examples
from gsc_jax import _validation

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


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
    labels = _binning.check_int_labels(labels, logits, "logits")
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
    labels = _binning.check_int_labels(labels, logits, "logits")
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
    labels = _binning.check_int_labels(labels, probs, "probs")
    _validation.warn_if_not_probabilities("probs", probs, "brier_score")
    ids, valid = _examples.class_ids(labels, num_classes)
    valid = valid & _validation.distribution_rows(probs)
    probs = probs.astype(_validation.compute_dtype(probs.dtype))
    one_hot = jax.nn.one_hot(ids, num_classes, dtype=probs.dtype)
    return jnp.where(valid, jnp.sum(jnp.square(probs - one_hot), axis=-1), jnp.nan)
