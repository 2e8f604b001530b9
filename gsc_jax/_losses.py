r"""Base classification losses that the GSC term combines with (paper Table 1, Eq. 18).

All take ``(logits, labels, *, hyper-parameters, axis=-1, where=None)`` and return per-example
values in optax's conventions. ``labels`` are integer class ids (the logits' shape without
``axis``) or probability vectors (the logits' shape); ``where`` is a boolean class mask of the
logits' shape (masked classes have probability 0 and are not counted as classes).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from gsc_jax import _softmax
from gsc_jax import _validation

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _targets(labels: Array, kind: str, num_classes: int, dtype) -> Array:
    """Probability-vector targets ``[..., num_classes]`` from ids or probability vectors."""
    if kind == "int":
        return jax.nn.one_hot(labels, num_classes, dtype=dtype)
    return labels.astype(dtype)


def _prepare(logits, labels, axis, where):
    """Validates and moves everything class-axis-last; returns logits, mask, targets, labels, kind.

    Integer labels follow the rule of `cross_entropy` (`_validation.label_ids`): the returned ids
    are in ``[0, num_classes)`` and the logits of rows with an invalid label are NaN.
    """
    logits_shape = jnp.shape(logits)
    logits_last, where_last, axis, num_classes = _validation.prepare_logits(logits, axis, where)
    labels_last, kind = _validation.prepare_labels(labels, logits_shape, axis)
    if kind == "int":
        labels_last, valid = _validation.label_ids(labels_last, num_classes, where_last)
        logits_last = _validation.poison_invalid_rows(logits_last, valid)
    targets = _targets(labels_last, kind, num_classes, logits_last.dtype)
    return logits_last, where_last, targets, labels_last, kind


def _cross_entropy_last_axis(logits, labels, kind, where) -> Array:
    """optax's softmax cross-entropy on the last axis (integer ids or probability vectors)."""
    if kind == "int":
        return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels, where=where)
    log_probs, _ = _softmax.masked_log_softmax(logits, where)
    return -jnp.sum(labels * log_probs, axis=-1)


def cross_entropy(
    logits: ArrayLike, labels: ArrayLike, *, axis: int = -1, where: Optional[ArrayLike] = None
) -> Array:
    r"""Computes softmax cross-entropy per example, for integer or probability-vector labels.

    .. math::
        \mathrm{CE}(z, y) = -\sum_i y_i \log \mathrm{softmax}(z)_i

    Integer labels go through `optax.losses.softmax_cross_entropy_with_integer_labels`; probability
    vectors use a masked log-softmax whose gradient stays finite for masked classes.

    Integer labels follow one rule in every loss of `gsc_jax` (`cross_entropy`,
    `label_smoothing_cross_entropy`, `focal_loss`, `entropy_regularized_cross_entropy`,
    `online_label_smoothing_loss`, `gsc_loss` on both implementations, `with_gsc`,
    `arcface_logits`, `cosface_logits`), the rule of NumPy indexing:

    - ids in ``[-n, n)`` are valid (``n`` = number of classes); negative ids count from the end,
      so ``-1`` is class ``n - 1``;
    - an id outside ``[-n, n)``, or one naming a class that ``where`` masks out, gives a NaN loss
      for that example and NaN in its whole gradient row; the other examples are unaffected;
    - a row whose ``where`` is all False (no class takes part) gives 0, whatever its label;
    - a row whose logits are all ``-inf`` has no softmax and gives NaN.

    (`optax.losses.softmax_cross_entropy_with_integer_labels` also reads negative ids from the end
    and gives NaN for an out-of-range id, but with a finite gradient that lacks the label's term,
    and it takes a masked-out label as the target.) To leave an example out of a batch, give it
    any valid id and weight its loss by 0; an invalid id makes its gradient NaN.

    Args:
      logits: ``[..., num_classes]`` scores (16-bit floats are computed in float32).
      labels: ``[...]`` integer ids (see the rule above) or ``[..., num_classes]`` probability
        vectors.
      axis: the class axis.
      where: optional ``[..., num_classes]`` boolean class mask.

    Returns:
      ``[...]`` per-example loss.
    """
    logits, where, targets, labels, kind = _prepare(logits, labels, axis, where)
    return _cross_entropy_last_axis(logits, labels if kind == "int" else targets, kind, where)


def label_smoothing_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: float,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
) -> Array:
    r"""Computes cross-entropy against smoothed targets (Szegedy et al. 2016).

    .. math::
        y^{LS} = (1 - \alpha)\, y + \alpha / n, \qquad L = \mathrm{CE}(z, y^{LS})

    with ``n`` the number of classes taking part (`optax.smooth_labels`). Table 1 uses
    :math:`\alpha = 0.1`.

    Args:
      logits: ``[..., num_classes]`` scores.
      labels: integer ids ``[...]`` (the rule of `cross_entropy`) or probability vectors
        ``[..., num_classes]``.
      alpha: smoothing weight in ``[0, 1]``.
      axis: the class axis.
      where: optional boolean class mask of the logits' shape.

    Returns:
      ``[...]`` per-example loss.
    """
    _validation.check_in_unit_interval("alpha", alpha)
    logits, where, targets, _, _ = _prepare(logits, labels, axis, where)
    smoothed = optax.smooth_labels(targets, alpha, where=where)
    if where is not None:
        smoothed = jnp.where(where, smoothed, 0.0)
    return _cross_entropy_last_axis(logits, smoothed, "soft", where)


def _safe_power(base: Array, exponent: float) -> Array:
    """``base ** exponent`` for ``base >= 0`` with a finite (zero) gradient at ``base == 0``."""
    positive = base > 0
    safe_base = jnp.where(positive, base, 1.0)
    return jnp.where(positive, safe_base**exponent, 1.0 if exponent == 0 else 0.0)


def focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    eta: float = 2.0,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
) -> Array:
    r"""Computes the multi-class focal loss (Lin et al. 2017; GSC paper Eq. 18 without the GSC term).

    .. math::
        \mathrm{FL}(z, y) = -\sum_i y_i (1 - S_i)^{\eta} \log S_i, \qquad S = \mathrm{softmax}(z)

    For integer labels this is :math:`-(1 - S_y)^\eta \log S_y`. :math:`1 - S_i` is computed as
    ``-expm1(log S_i)``; the gradient flows through the modulating factor. ``eta = 0`` gives
    cross-entropy. Table 1 uses :math:`\eta = 2`.

    Args:
      logits: ``[..., num_classes]`` scores.
      labels: integer ids ``[...]`` (the rule of `cross_entropy`) or probability vectors
        ``[..., num_classes]``.
      eta: focusing parameter, ``>= 0``.
      axis: the class axis.
      where: optional boolean class mask of the logits' shape.

    Returns:
      ``[...]`` per-example loss.
    """
    _validation.check_non_negative("eta", eta)
    logits, where, targets, _, _ = _prepare(logits, labels, axis, where)
    log_probs, _ = _softmax.masked_log_softmax(logits, where)
    one_minus_probs = jnp.maximum(-jnp.expm1(log_probs), 0.0)
    weighted = targets * _safe_power(one_minus_probs, eta) * log_probs
    if where is not None:
        weighted = jnp.where(where, weighted, 0.0)
    return -jnp.sum(weighted, axis=-1)


def softmax_entropy(
    logits: ArrayLike,
    *,
    normalize: bool = True,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
) -> Array:
    r"""Computes the entropy of the softmax scores per example.

    .. math::
        E(S) = -\sum_i S_i \log S_i \ \text{(Eq. 7)}, \qquad H(S) = E(S) / \log n \ \text{(Eq. 8)}

    Args:
      logits: ``[..., num_classes]`` scores.
      normalize: return :math:`H \in [0, 1]` if True, :math:`E` in nats if False.
      axis: the class axis.
      where: optional boolean class mask; ``n`` counts the classes taking part.

    Returns:
      ``[...]`` entropy per example (0 for rows with fewer than 2 classes when normalised).
    """
    logits, where, _, _ = _validation.prepare_logits(logits, axis, where)
    log_probs, probs = _softmax.masked_log_softmax(logits, where)
    entropy = _softmax.entropy_from_log_probs(log_probs, probs)
    if normalize:
        entropy = _softmax.normalized_entropy(entropy, _softmax.num_active_classes(logits, where))
    return entropy


def entropy_regularized_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    entropy_weight: float,
    normalize_entropy: bool = True,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
) -> Array:
    r"""Computes cross-entropy plus an entropy penalty (the "Entropy" baseline of Table 1).

    .. math::
        L(z, y) = \mathrm{CE}(z, y) + \lambda\, H(S)

    following Yao et al. (2020) as quoted in the GSC paper (Sec. 4.1): with :math:`\lambda > 0` it
    penalises uncertain predictions (entropy minimisation). Table 1 uses :math:`\lambda = 0.02`.

    Args:
      logits: ``[..., num_classes]`` scores.
      labels: integer ids ``[...]`` (the rule of `cross_entropy`) or probability vectors
        ``[..., num_classes]``.
      entropy_weight: :math:`\lambda \ge 0`.
      normalize_entropy: use :math:`H = E/\log n` (True) or :math:`E` in nats (False).
      axis: the class axis.
      where: optional boolean class mask of the logits' shape.

    Returns:
      ``[...]`` per-example loss.
    """
    _validation.check_non_negative("entropy_weight", entropy_weight)
    entropy = softmax_entropy(logits, normalize=normalize_entropy, axis=axis, where=where)
    return cross_entropy(logits, labels, axis=axis, where=where) + entropy_weight * entropy
