r"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from gsc_jax import _validation

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _mean_nll_slope(inverse_temperature: Array, logits: Array, labels: Array, weights: Array):
    r""":math:`\partial_\beta` of the mean NLL of ``softmax(beta * logits)``: ``E_S[z] - z_y``."""
    probs = jax.nn.softmax(inverse_temperature * logits, axis=-1)
    expected = jnp.sum(probs * logits, axis=-1)
    target = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    return jnp.sum(weights * (expected - target)) / jnp.maximum(jnp.sum(weights), 1.0)


def fit_temperature(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    where: Optional[ArrayLike] = None,
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

    Args:
      logits: ``[N, K]`` validation logits.
      labels: ``[N]`` integer class ids.
      where: optional ``[N]`` boolean example mask (False for padding).
      min_temperature, max_temperature: the search bracket, ``0 < min < max``.
      num_iterations: bisection steps (60 resolves :math:`\log\beta` to about 1e-17 of the bracket).

    Returns:
      The scalar temperature :math:`T^\star`; calibrated probabilities are ``softmax(logits / T)``.
    """
    logits = _validation.check_float_array("logits", logits)
    if logits.ndim != 2:
        raise ValueError(f"`logits` must have shape [N, num_classes], got {logits.shape}.")
    _validation.check_num_classes(logits, 1)
    labels = jnp.asarray(labels)
    if _validation.label_kind(labels, logits, 1) != "int":
        raise ValueError("`labels` must be integer class ids of shape [N].")
    if not 0 < min_temperature < max_temperature:
        raise ValueError(
            "`min_temperature` and `max_temperature` must satisfy 0 < min < max, got "
            f"{min_temperature} and {max_temperature}."
        )
    logits = logits.astype(_validation.compute_dtype(logits.dtype))
    weights = jnp.ones(labels.shape, logits.dtype) if where is None else jnp.asarray(where, logits.dtype)

    def bisect(_, bracket):
        low, high = bracket  # log(beta) bracket
        mid = 0.5 * (low + high)
        rising = _mean_nll_slope(jnp.exp(mid), logits, labels, weights) > 0
        return jnp.where(rising, low, mid), jnp.where(rising, mid, high)

    start = (jnp.log(1.0 / max_temperature), jnp.log(1.0 / min_temperature))
    start = tuple(jnp.asarray(x, logits.dtype) for x in start)
    low, high = jax.lax.fori_loop(0, num_iterations, bisect, start)
    return 1.0 / jnp.exp(0.5 * (low + high))
