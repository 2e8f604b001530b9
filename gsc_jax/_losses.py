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

from gsc_jax import _examples
from gsc_jax import _softmax
from gsc_jax import _validation

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    example_mask: Optional[ArrayLike] = None,
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
      for that example, so a mistake that reaches the loss shows in its value; no gradient flows
      through that example's label (its gradient row is 0 here), so the other examples and a
      masked sum are unaffected;
    - a row whose ``where`` is all False (no class takes part) gives 0, whatever its label;
    - a row whose logits are all ``-inf`` has no softmax and gives NaN.

    Padding: mark the examples that take part with ``example_mask`` (False rows give 0 and a zero
    gradient row, whatever their logits and label: PyTorch's ``-100``, ``-1``, garbage), or mask
    the per-example values yourself with ``jnp.where(mask, loss, 0)`` or ``loss * mask``; both
    give the gradients of optax's cross-entropy on the examples that take part. Average with
    ``loss.sum() / mask.sum()``. (`optax.losses.softmax_cross_entropy_with_integer_labels` also
    reads negative ids from the end and gives NaN for an out-of-range id, but with a finite
    gradient that lacks the label's term, and it takes a masked-out label as the target.)

    Args:
      logits: ``[..., num_classes]`` scores (16-bit floats are computed in float32).
      labels: ``[...]`` integer ids (see the rule above) or ``[..., num_classes]`` probability
        vectors.
      axis: the class axis.
      where: optional ``[..., num_classes]`` boolean class mask.
      example_mask: optional ``[...]`` boolean mask, one entry per example; False examples
        (padding) give 0 and a zero gradient row.

    Returns:
      ``[...]`` per-example loss.
    """
    logits, where, targets, labels, kind, example_mask = _validation.prepare_classification(
        logits, labels, axis, where, example_mask
    )
    values = _softmax.cross_entropy_last_axis(
        logits, labels if kind == "int" else targets, kind, where
    )
    return _examples.zero_rows(values, example_mask)


def label_smoothing_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: float,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    example_mask: Optional[ArrayLike] = None,
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
      example_mask: optional ``[...]`` boolean mask; False examples (padding) give 0 and a zero
        gradient row (see `cross_entropy`).

    Returns:
      ``[...]`` per-example loss.
    """
    _validation.check_in_unit_interval("alpha", alpha)
    logits, where, targets, _, _, example_mask = _validation.prepare_classification(
        logits, labels, axis, where, example_mask
    )
    smoothed = optax.smooth_labels(targets, alpha, where=where)
    if where is not None:
        smoothed = jnp.where(where, smoothed, 0.0)
    values = _softmax.cross_entropy_last_axis(logits, smoothed, "soft", where)
    return _examples.zero_rows(values, example_mask)


def focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    eta: float = 2.0,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    example_mask: Optional[ArrayLike] = None,
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
      example_mask: optional ``[...]`` boolean mask; False examples (padding) give 0 and a zero
        gradient row (see `cross_entropy`).

    Returns:
      ``[...]`` per-example loss.
    """
    _validation.check_non_negative("eta", eta)
    logits, where, targets, _, _, example_mask = _validation.prepare_classification(
        logits, labels, axis, where, example_mask
    )
    log_probs, _ = _softmax.masked_log_softmax(logits, where)
    one_minus_probs = jnp.maximum(-jnp.expm1(log_probs), 0.0)
    weighted = targets * _softmax.safe_power(one_minus_probs, eta) * log_probs
    if where is not None:
        weighted = jnp.where(where, weighted, 0.0)
    return _examples.zero_rows(-jnp.sum(weighted, axis=-1), example_mask)


def softmax_entropy(
    logits: ArrayLike,
    *,
    normalize: bool = True,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    example_mask: Optional[ArrayLike] = None,
) -> Array:
    r"""Computes the entropy of the softmax scores per example.

    .. math::
        E(S) = -\sum_i S_i \log S_i \ \text{(Eq. 7)}, \qquad H(S) = E(S) / \log n \ \text{(Eq. 8)}

    Args:
      logits: ``[..., num_classes]`` scores.
      normalize: return :math:`H \in [0, 1]` if True, :math:`E` in nats if False.
      axis: the class axis.
      where: optional boolean class mask; ``n`` counts the classes taking part.
      example_mask: optional ``[...]`` boolean mask; False examples give 0 and a zero gradient.

    Returns:
      ``[...]`` entropy per example (0 for rows with fewer than 2 classes when normalised).
    """
    logits, where, _, _ = _validation.prepare_logits(logits, axis, where)
    example_mask = _examples.check_example_mask(example_mask, logits.shape[:-1])
    if example_mask is not None:
        logits = jnp.where(example_mask[..., None], logits, jnp.zeros((), logits.dtype))
    log_probs, probs = _softmax.masked_log_softmax(logits, where)
    entropy = _softmax.entropy_from_log_probs(log_probs, probs)
    if normalize:
        entropy = _softmax.normalized_entropy(entropy, _softmax.num_active_classes(logits, where))
    return _examples.zero_rows(entropy, example_mask)


def entropy_regularized_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    entropy_weight: float,
    normalize_entropy: bool = True,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    example_mask: Optional[ArrayLike] = None,
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
      example_mask: optional ``[...]`` boolean mask; False examples (padding) give 0 and a zero
        gradient row (see `cross_entropy`).

    Returns:
      ``[...]`` per-example loss.
    """
    _validation.check_non_negative("entropy_weight", entropy_weight)
    options = dict(axis=axis, where=where, example_mask=example_mask)
    entropy = softmax_entropy(logits, normalize=normalize_entropy, **options)
    return cross_entropy(logits, labels, **options) + entropy_weight * entropy
