r"""Online Label Smoothing (Zhang et al., "Delving Deep into Label Smoothing", TIP 2021).

Each class ``k`` has a soft target (row ``k`` of a ``[K, K]`` matrix) equal to the mean softmax
vector of the correctly classified class-``k`` training examples of the *previous* epoch. The loss
mixes hard-label cross-entropy with cross-entropy against that soft target.

The state is a pure pytree: `ols_update` adds a batch's sums (so statistics from several devices or
hosts are combined by summation, e.g. `jax.lax.psum` of `ols_batch_statistics`), and
`ols_finalize_epoch` turns the sums into the next epoch's soft labels.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from gsc_jax import _examples
from gsc_jax import _losses
from gsc_jax import _validation

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


class OnlineLabelSmoothingState(NamedTuple):
    """State of online label smoothing for ``K`` classes."""

    soft_labels: Array  # [K, K] float32; row k: soft target of class k used during this epoch.
    prob_sums: Array  # [K, K] float32; row k: sum of softmax vectors of correct class-k examples.
    counts: Array  # [K] int32; number of correctly classified class-k examples this epoch.


def ols_init(num_classes: int, *, init: str = "uniform") -> OnlineLabelSmoothingState:
    """Creates the state before the first epoch.

    Args:
      num_classes: ``K >= 2``.
      init: ``"uniform"`` (every row 1/K: the first epoch uses uniform label smoothing, as in the
        reference's fine-grained code) or ``"zeros"`` (the first epoch's soft term is 0, as in the
        reference's CIFAR code).

    Returns:
      The initial `OnlineLabelSmoothingState`.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes!r}.")
    if init not in ("uniform", "zeros"):
        raise ValueError(f"`init` must be 'uniform' or 'zeros', got {init!r}.")
    fill = 1.0 / num_classes if init == "uniform" else 0.0
    return OnlineLabelSmoothingState(
        soft_labels=jnp.full((num_classes, num_classes), fill, jnp.float32),
        prob_sums=jnp.zeros((num_classes, num_classes), jnp.float32),
        counts=jnp.zeros((num_classes,), jnp.int32),
    )


def ols_batch_statistics(
    logits: ArrayLike, labels: ArrayLike, *, example_mask: Optional[ArrayLike] = None
) -> tuple[Array, Array]:
    """Sums of softmax vectors and counts of correctly classified examples, per true class.

    An example counts when the argmax of its logits is its label. Labels in ``[-K, K)`` are valid
    (negative ids count from the end); a label outside it, or a row with a NaN or ``+inf`` logit
    (whose softmax is not defined), never counts. No gradient flows through the sums.

    Args:
      logits: ``[B, K]`` scores.
      labels: ``[B]`` integer class ids.
      example_mask: optional ``[B]`` boolean mask; False examples (padding) are not counted.

    Returns:
      ``(prob_sums [K, K] float32, counts [K] int32)``.
    """
    logits = jax.lax.stop_gradient(_validation.check_float_array("logits", logits))
    if logits.ndim != 2:
        raise ValueError(f"`logits` must have shape [batch, num_classes], got {logits.shape}.")
    num_classes = _validation.check_num_classes(logits, 1)
    labels = _examples.as_labels(labels)
    _validation.label_kind(labels, logits, 1)
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"`labels` must be integer ids of shape [batch], got {labels.shape}.")
    example_mask = _examples.check_example_mask(example_mask, labels.shape)
    ids, label_valid = _examples.class_ids(labels, num_classes)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    keep = (
        (jnp.argmax(logits, axis=-1) == ids) & label_valid & jnp.all(jnp.isfinite(probs), axis=-1)
    )
    if example_mask is not None:
        keep = keep & example_mask
    probs = jnp.where(keep[:, None], probs, 0.0)
    one_hot_kept = jax.nn.one_hot(ids, num_classes, dtype=jnp.float32) * keep[:, None]
    return one_hot_kept.T @ probs, jnp.sum(one_hot_kept, axis=0).astype(jnp.int32)


def ols_update(
    state: OnlineLabelSmoothingState,
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    example_mask: Optional[ArrayLike] = None,
) -> OnlineLabelSmoothingState:
    """Adds a batch's statistics (`ols_batch_statistics`) to the epoch accumulators."""
    prob_sums, counts = ols_batch_statistics(logits, labels, example_mask=example_mask)
    return state._replace(prob_sums=state.prob_sums + prob_sums, counts=state.counts + counts)


def ols_finalize_epoch(state: OnlineLabelSmoothingState) -> OnlineLabelSmoothingState:
    r"""Ends an epoch: soft labels become the accumulated means; accumulators are reset.

    .. math::
        S_k = A_k / c_k \text{ if } c_k > 0 \text{ else } \mathbf{1}/K
    """
    num_classes = state.counts.shape[0]
    seen = state.counts > 0
    means = state.prob_sums / jnp.maximum(state.counts, 1)[:, None].astype(jnp.float32)
    soft_labels = jnp.where(seen[:, None], means, 1.0 / num_classes)
    return OnlineLabelSmoothingState(
        soft_labels=soft_labels,
        prob_sums=jnp.zeros_like(state.prob_sums),
        counts=jnp.zeros_like(state.counts),
    )


def online_label_smoothing_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    soft_labels: ArrayLike,
    hard_weight: float = 0.5,
    soft_weight: float = 0.5,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    example_mask: Optional[ArrayLike] = None,
) -> Array:
    r"""Computes the online-label-smoothing loss per example.

    .. math::
        L(z, y) = w_h\, \mathrm{CE}(z, y) + w_s\, \mathrm{CE}(z, S_{y})

    with :math:`S` the ``[K, K]`` soft-label matrix of the state (a constant here). The reference's
    CIFAR/ImageNet script uses :math:`w_h = w_s = 0.5`.

    Args:
      logits: ``[..., K]`` scores.
      labels: ``[...]`` integer class ids.
      soft_labels: ``[K, K]`` matrix, ``state.soft_labels``.
      hard_weight, soft_weight: ``>= 0`` weights of the two terms.
      axis: the class axis.
      where: optional boolean class mask of the logits' shape.
      example_mask: optional ``[...]`` boolean mask; False examples (padding) give 0 and a zero
        gradient row, whatever their logits and label.

    Returns:
      ``[...]`` per-example loss.
    """
    _validation.check_non_negative("hard_weight", hard_weight)
    _validation.check_non_negative("soft_weight", soft_weight)
    logits = _validation.check_float_array("logits", logits)
    axis = _validation.normalize_axis(axis, max(logits.ndim, 1))
    num_classes = _validation.check_num_classes(logits, axis)
    labels = jnp.asarray(labels)
    if _validation.label_kind(labels, logits, axis) != "int":
        raise ValueError("`labels` for online label smoothing must be integer class ids.")
    soft_labels = jnp.asarray(soft_labels)
    if soft_labels.shape != (num_classes, num_classes):
        raise ValueError(
            f"`soft_labels` must have shape ({num_classes}, {num_classes}), got {soft_labels.shape}."
        )
    soft_targets = jnp.moveaxis(jax.lax.stop_gradient(soft_labels)[labels], -1, axis)
    options = dict(axis=axis, where=where, example_mask=example_mask)
    hard = _losses.cross_entropy(logits, labels, **options)
    soft = _losses.cross_entropy(logits, soft_targets.astype(logits.dtype), **options)
    return hard_weight * hard + soft_weight * soft
