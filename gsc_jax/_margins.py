r"""Additive margin logits for face recognition: CosFace (Wang et al. 2018) and ArcFace (Deng et al.
2019), following insightface's ``arcface_torch`` losses. Feed the result to `gsc_jax.cross_entropy`
or `gsc_jax.with_gsc(gsc_jax.cross_entropy, ...)` (GSC paper Table 5).

Inputs are cosines between L2-normalised embeddings and L2-normalised class weights. Labels follow
the rule of `gsc_jax.cross_entropy`, as the loss the logits are fed to reads them: ids in
``[-K, K)`` are valid and negative ids count from the end (``-1`` is class ``K - 1``, which gets
the margin); a row with an id outside that range comes out NaN, with no derivative (its gradient
row is 0), as its cross-entropy would. To leave padded rows out, mask the loss computed from the
logits (``example_mask`` or ``jnp.where``). insightface's partial-FC convention, where ``-1`` marks a target held on
another device, has no counterpart here: the logits cover all ``K`` classes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gsc_jax import _validation

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _target_mask(cosines: Array, labels: ArrayLike) -> tuple[Array, Array]:
    """Validates ``cosines [..., K]`` and integer ``labels [...]``.

    Returns:
      ``(cosines, target)``: the cosines with the rows of invalid labels NaN, and the ``[..., K]``
      one-hot mask of each row's target class.
    """
    num_classes = _validation.check_num_classes(cosines, cosines.ndim - 1, name="cosines")
    labels = jnp.asarray(labels)
    if labels.shape != cosines.shape[:-1] or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"`labels` must be integer ids of shape {cosines.shape[:-1]}, got {labels.shape} "
            f"{labels.dtype}."
        )
    ids, valid = _validation.label_ids(labels, num_classes)
    target = ids[..., None] == jnp.arange(num_classes)
    return _validation.poison_invalid_rows(cosines, valid), target


def _check_scale_margin(scale, margin) -> None:
    _validation.check_non_negative("scale", scale)
    _validation.check_non_negative("margin", margin)


def cosface_logits(
    cosines: ArrayLike, labels: ArrayLike, *, scale: float = 64.0, margin: float = 0.4
) -> Array:
    r"""CosFace logits: :math:`s\,(\cos\theta_j - m\,[j = y])`.

    Args:
      cosines: ``[..., K]`` cosine similarities in [-1, 1].
      labels: ``[...]`` integer ids, the rule of `gsc_jax.cross_entropy` (see above).
      scale: :math:`s` (insightface default 64).
      margin: :math:`m` (default 0.4).

    Returns:
      ``[..., K]`` logits.
    """
    _check_scale_margin(scale, margin)
    cosines = _validation.check_float_array("cosines", cosines)
    cosines, target = _target_mask(cosines, labels)
    return scale * jnp.where(target, cosines - margin, cosines)


def arcface_logits(
    cosines: ArrayLike,
    labels: ArrayLike,
    *,
    scale: float = 64.0,
    margin: float = 0.5,
    easy_margin: bool = False,
) -> Array:
    r"""ArcFace logits: :math:`s \cos(\theta_y + m)` for the target, :math:`s\cos\theta_j` otherwise.

    With :math:`t = \cos\theta_y`, :math:`\cos(\theta_y + m) = t\cos m - \sqrt{1-t^2}\sin m`. When
    :math:`\theta_y + m > \pi` the target would stop being monotone in :math:`\theta_y`, so (as in
    insightface) it becomes :math:`t - m \sin m` for :math:`t \le \cos(\pi - m)`. With
    ``easy_margin`` the margin is applied only where :math:`t > 0`. Gradients are exact (the margin
    is differentiated, unlike insightface's in-place variant).

    Args:
      cosines: ``[..., K]`` cosine similarities; clipped to [-1, 1].
      labels: ``[...]`` integer ids, the rule of `gsc_jax.cross_entropy` (see above).
      scale: :math:`s` (insightface default 64).
      margin: angular margin :math:`m` in radians (default 0.5).
      easy_margin: see above.

    Returns:
      ``[..., K]`` logits.
    """
    _check_scale_margin(scale, margin)
    cosines = _validation.check_float_array("cosines", cosines)
    cosines, target = _target_mask(cosines, labels)
    cos_t = jnp.clip(cosines, -1.0, 1.0)
    sin_squared = 1.0 - jnp.square(cos_t)
    positive = sin_squared > 0
    sin_t = jnp.where(positive, jnp.sqrt(jnp.where(positive, sin_squared, 1.0)), 0.0)
    cos_t_plus_m = cos_t * math.cos(margin) - sin_t * math.sin(margin)
    if easy_margin:
        target_logit = jnp.where(cos_t > 0, cos_t_plus_m, cos_t)
    else:
        threshold = math.cos(math.pi - margin)
        target_logit = jnp.where(cos_t > threshold, cos_t_plus_m, cos_t - margin * math.sin(margin))
    return scale * jnp.where(target, target_logit, cosines)
