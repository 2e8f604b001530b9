r"""Temperature, vector and matrix scaling of logits.

Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import optax

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

    Takes logits, not probabilities: concrete inputs whose every row is a distribution warn, and
    so does a concrete fitted temperature at an end of the bracket (the minimum lies outside it,
    which is what probabilities passed as logits give: ``T`` at ``min_temperature``).

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
    _validation.warn_if_probabilities("logits", logits, "fit_temperature")
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
    temperature = jnp.where(fails, jnp.nan, 1.0 / jnp.exp(0.5 * (low + high)))
    _warn_at_bound(temperature, min_temperature, max_temperature)
    return temperature


def _warn_at_bound(temperature, min_temperature: float, max_temperature: float) -> None:
    """Warns when a concrete fitted temperature lies at an end of its search bracket."""
    if not _validation.is_concrete(temperature) or not bool(jnp.isfinite(temperature)):
        return
    value = float(temperature)
    for bound, name in ((min_temperature, "min_temperature"), (max_temperature, "max_temperature")):
        if abs(math.log(value / bound)) < 1e-3:
            warnings.warn(
                f"`fit_temperature` stopped at `{name}`={bound}: the NLL's minimum lies outside "
                "the bracket. Probabilities passed as logits do this (pass logits), and so do "
                "perfectly separated examples; otherwise widen the bracket.",
                UserWarning,
                stacklevel=3,
            )


def _check_held_out(logits, labels, example_mask):
    """Checks ``logits [N, K]``, ``labels [N]`` and the mask; returns the prepared arrays."""
    logits = _validation.check_float_array("logits", logits)
    if logits.ndim != 2:
        raise ValueError(f"`logits` must have shape [N, num_classes], got {logits.shape}.")
    num_classes = _validation.check_num_classes(logits, 1)
    labels = _examples.as_labels(labels)
    if _validation.label_kind(labels, logits, 1) != "int":
        raise ValueError("`labels` must be integer class ids of shape [N].")
    example_mask = _examples.check_example_mask(example_mask, labels.shape)
    logits = logits.astype(_validation.compute_dtype(logits.dtype))
    ids, label_valid = _examples.class_ids(labels, num_classes)
    takes_part = jnp.ones(labels.shape, bool) if example_mask is None else example_mask
    usable = label_valid & jnp.all(jnp.isfinite(logits), axis=-1)
    fails = jnp.any(takes_part & ~usable) | ~jnp.any(takes_part)
    weights = (takes_part & usable).astype(logits.dtype)
    logits = jnp.where(usable[:, None], logits, 0.0)
    return logits, ids, weights, fails


def _check_fit_options(l2_penalty, num_iterations):
    if (
        isinstance(l2_penalty, bool)
        or not isinstance(l2_penalty, (int, float))
        or not (0 < l2_penalty < float("inf"))
    ):
        raise ValueError(f"`l2_penalty` must be a finite float > 0, got {l2_penalty!r}.")
    if (
        isinstance(num_iterations, bool)
        or not isinstance(num_iterations, int)
        or (num_iterations < 1)
    ):
        raise ValueError(f"`num_iterations` must be an int >= 1, got {num_iterations!r}.")


def _fit_affine(objective, init, num_iterations):
    """Minimises ``objective`` from ``init`` with optax L-BFGS; keeps the last finite iterate."""
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry, _):
        params, state, best = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(
            grad, state, params, value=value, grad=grad, value_fn=objective
        )
        params = optax.apply_updates(params, updates)
        finite = jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(params)])
        )
        best = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), params, best)
        return (params, state, best), None

    (_, _, best), _ = jax.lax.scan(
        step, (init, solver.init(init), init), None, length=num_iterations
    )
    return best


def _mean_nll(calibrated_logits, ids, weights):
    log_probs = jax.nn.log_softmax(calibrated_logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, ids[:, None], axis=-1)[:, 0]
    return jnp.sum(weights * nll) / jnp.maximum(jnp.sum(weights), 1.0)


def fit_vector_scaling(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    example_mask: Optional[ArrayLike] = None,
    l2_penalty: float = 1e-3,
    num_iterations: int = 100,
) -> tuple[Array, Array]:
    r"""Fits vector scaling (Guo et al. 2017) on held-out logits: a per-class scale and bias.

    .. math::
        (w^\star, b^\star) = \arg\min_{w, b} \frac{1}{N}\sum_n
        -\log \mathrm{softmax}(w \odot z_n + b)_{y_n}
        + \frac{\lambda}{2}\left(\|w - 1\|^2 + \|b\|^2\right)

    The penalty (towards the identity map) keeps the minimiser finite where the NLL alone has
    none: a held-out set that is all correct (the NLL falls as the scale grows), or with one class
    only (its bias would grow without bound). The objective is convex; it is minimised with optax's
    L-BFGS for ``num_iterations`` steps from ``w = 1, b = 0``, keeping the last finite iterate, so
    the parameters are finite for finite logits. Jittable.

    The result is NaN when an example that takes part has a non-finite logit or a label outside
    ``[-K, K)``, or when no example takes part (as `fit_temperature`).

    Args:
      logits: ``[N, K]`` held-out logits.
      labels: ``[N]`` integer class ids; negative ids count from the end.
      example_mask: optional ``[N]`` boolean mask; False examples (padding) take no part.
      l2_penalty: :math:`\lambda > 0`.
      num_iterations: L-BFGS steps.

    Returns:
      ``(scale [K], bias [K])``; calibrated probabilities are ``softmax(logits * scale + bias)``.
    """
    _check_fit_options(l2_penalty, num_iterations)
    logits, ids, weights, fails = _check_held_out(logits, labels, example_mask)
    return _fit_vector_scaling(
        logits, ids, weights, fails, l2_penalty, num_iterations=num_iterations
    )


@functools.partial(jax.jit, static_argnames="num_iterations")
def _fit_vector_scaling(logits, ids, weights, fails, l2_penalty, *, num_iterations):
    num_classes = logits.shape[1]

    def objective(params):
        scale, bias = params
        penalty = jnp.sum(jnp.square(scale - 1.0)) + jnp.sum(jnp.square(bias))
        return _mean_nll(logits * scale + bias, ids, weights) + 0.5 * l2_penalty * penalty

    init = (jnp.ones((num_classes,), logits.dtype), jnp.zeros((num_classes,), logits.dtype))
    scale, bias = _fit_affine(objective, init, num_iterations)
    return jnp.where(fails, jnp.nan, scale), jnp.where(fails, jnp.nan, bias)


def fit_matrix_scaling(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    example_mask: Optional[ArrayLike] = None,
    l2_penalty: float = 1e-3,
    num_iterations: int = 100,
) -> tuple[Array, Array]:
    r"""Fits matrix scaling (Guo et al. 2017) on held-out logits: an affine map of the logits.

    .. math::
        (W^\star, b^\star) = \arg\min_{W, b} \frac{1}{N}\sum_n
        -\log \mathrm{softmax}(W z_n + b)_{y_n}
        + \frac{\lambda}{2}\left(\|W - I\|_F^2 + \|b\|^2\right)

    As in `fit_vector_scaling`, the penalty towards the identity map keeps the minimiser finite on
    degenerate held-out sets and regularises the :math:`K^2 + K` parameters (Kull et al. 2019
    regularise matrix scaling likewise). Minimised with optax's L-BFGS from ``W = I, b = 0``,
    keeping the last finite iterate. Jittable. NaN on the same unusable inputs as
    `fit_vector_scaling`.

    Args:
      logits: ``[N, K]`` held-out logits.
      labels: ``[N]`` integer class ids; negative ids count from the end.
      example_mask: optional ``[N]`` boolean mask; False examples (padding) take no part.
      l2_penalty: :math:`\lambda > 0`.
      num_iterations: L-BFGS steps.

    Returns:
      ``(weight [K, K], bias [K])``; calibrated probabilities are
      ``softmax(logits @ weight.T + bias)``.
    """
    _check_fit_options(l2_penalty, num_iterations)
    logits, ids, weights, fails = _check_held_out(logits, labels, example_mask)
    return _fit_matrix_scaling(
        logits, ids, weights, fails, l2_penalty, num_iterations=num_iterations
    )


@functools.partial(jax.jit, static_argnames="num_iterations")
def _fit_matrix_scaling(logits, ids, weights, fails, l2_penalty, *, num_iterations):
    num_classes = logits.shape[1]
    identity = jnp.eye(num_classes, dtype=logits.dtype)

    def objective(params):
        weight, bias = params
        penalty = jnp.sum(jnp.square(weight - identity)) + jnp.sum(jnp.square(bias))
        return _mean_nll(logits @ weight.T + bias, ids, weights) + 0.5 * l2_penalty * penalty

    init = (identity, jnp.zeros((num_classes,), logits.dtype))
    weight, bias = _fit_affine(objective, init, num_iterations)
    return jnp.where(fails, jnp.nan, weight), jnp.where(fails, jnp.nan, bias)
