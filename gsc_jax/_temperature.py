r"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from gsc_jax import _examples
from gsc_jax import _validation

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _mean_nll_slope(inverse_temperature: Array, logits: Array, labels: Array, weights: Array):
    r""":math:`\partial_\beta` of the mean NLL of ``softmax(beta * logits)``: ``E_S[z] - z_y``.

    A ``-inf`` logit has probability 0 and adds nothing to :math:`\mathbb{E}_S[z]`.
    """
    probs = jax.nn.softmax(inverse_temperature * logits, axis=-1)
    expected = jnp.sum(jnp.where(probs > 0, probs * logits, 0.0), axis=-1)
    target = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    return jnp.sum(weights * (expected - target)) / jnp.maximum(jnp.sum(weights), 1.0)


def fit_temperature(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    example_mask: Optional[ArrayLike] = None,
    min_temperature: float = 0.01,
    max_temperature: float = 100.0,
    num_iterations: int = 60,
) -> Array:
    r"""Fits one temperature on held-out logits by minimising the negative log-likelihood.

    .. math::
        T^\star = \arg\min_T \frac{1}{N}\sum_n -\log \mathrm{softmax}(z_n / T)_{y_n}

    The NLL is convex in :math:`\beta = 1/T` (its second derivative is the variance of the logits
    under the softmax), so the minimiser is the root of the monotone slope
    :math:`\mathbb{E}_S[z] - z_y`, found by bisection on :math:`\log\beta`; if the slope has one
    sign on the whole bracket the nearer end is returned. Jittable.

    Labels in ``[-K, K)`` are valid (negative ids count from the end). The result is NaN, never a
    temperature fitted to part of the data, when an example that takes part has a NaN or ``+inf``
    logit, a ``-inf`` logit at its label (its NLL is infinite at every temperature) or a label
    outside ``[-K, K)``, and when no example takes part. ``-inf`` logits of other classes (masked
    classes) are allowed. Values are only known at run time, so this is a NaN rather than an error.

    Args:
      logits: ``[N, K]`` validation logits.
      labels: ``[N]`` integer class ids.
      example_mask: optional ``[N]`` boolean mask; False examples (padding) take no part.
      min_temperature, max_temperature: the search bracket, ``0 < min < max``.
      num_iterations: bisection steps (60 resolves :math:`\log\beta` to about 1e-17 of the bracket).

    Returns:
      The scalar temperature :math:`T^\star`; calibrated probabilities are ``softmax(logits / T)``.
    """
    logits = _validation.check_float_array("logits", logits)
    if logits.ndim != 2:
        raise ValueError(f"`logits` must have shape [N, num_classes], got {logits.shape}.")
    num_classes = _validation.check_num_classes(logits, 1)
    labels = _examples.as_labels(labels)
    if _validation.label_kind(labels, logits, 1) != "int":
        raise ValueError("`labels` must be integer class ids of shape [N].")
    example_mask = _examples.check_example_mask(example_mask, labels.shape)
    if not 0 < min_temperature < max_temperature:
        raise ValueError(
            "`min_temperature` and `max_temperature` must satisfy 0 < min < max, got "
            f"{min_temperature} and {max_temperature}."
        )
    logits = logits.astype(_validation.compute_dtype(logits.dtype))
    ids, label_valid = _examples.class_ids(labels, num_classes)
    takes_part = jnp.ones(labels.shape, bool) if example_mask is None else example_mask
    label_logit = jnp.take_along_axis(logits, ids[:, None], axis=-1)[:, 0]
    usable = (
        label_valid
        & ~jnp.any(jnp.isnan(logits) | (logits == jnp.inf), axis=-1)
        & (label_logit > -jnp.inf)
    )
    fails = jnp.any(takes_part & ~usable) | ~jnp.any(takes_part)
    weights = (takes_part & usable).astype(logits.dtype)
    logits = jnp.where(usable[:, None], logits, 0.0)

    def bisect(_, bracket):
        low, high = bracket  # log(beta) bracket
        mid = 0.5 * (low + high)
        rising = _mean_nll_slope(jnp.exp(mid), logits, ids, weights) > 0
        return jnp.where(rising, low, mid), jnp.where(rising, mid, high)

    start = (jnp.log(1.0 / max_temperature), jnp.log(1.0 / min_temperature))
    start = tuple(jnp.asarray(x, logits.dtype) for x in start)
    low, high = jax.lax.fori_loop(0, num_iterations, bisect, start)
    return jnp.where(fails, jnp.nan, 1.0 / jnp.exp(0.5 * (low + high)))
