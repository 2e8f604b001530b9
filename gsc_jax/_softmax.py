"""Masked softmax and entropy on the last axis, finite for every finite input."""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def masked_log_softmax(
    logits: jax.Array, where: Optional[jax.Array]
) -> tuple[jax.Array, jax.Array]:
    r"""Log-probabilities and probabilities of a softmax over the last axis, with a class mask.

    .. math::
        \log S_i = z_i - \log \sum_{j \in A} e^{z_j}, \quad S_i = 0 \text{ for } i \notin A,

    where :math:`A` is the set of classes with ``where`` True. Masked entries get log-probability 0
    (not -inf) so that products such as ``probs * log_probs`` and their gradients stay finite; a row
    with every class masked gets all zeros.

    Args:
      logits: ``[..., num_classes]`` floating-point array.
      where: ``[..., num_classes]`` boolean mask, or None for all classes.

    Returns:
      ``(log_probs, probs)``, both of the logits' shape and dtype.
    """
    if where is None:
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        return log_probs, jnp.exp(log_probs)
    row_max = jnp.max(jnp.where(where, logits, -jnp.inf), axis=-1, keepdims=True)
    row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    shifted = jnp.where(where, logits - row_max, 0.0)
    exps = jnp.where(where, jnp.exp(shifted), 0.0)
    total = jnp.sum(exps, axis=-1, keepdims=True)
    total = jnp.where(total > 0, total, 1.0)
    log_probs = jnp.where(where, shifted - jnp.log(total), 0.0)
    return log_probs, exps / total


def num_active_classes(
    logits: jax.Array, where: Optional[jax.Array], dtype: Optional[jnp.dtype] = None
) -> jax.Array:
    """Number of classes taking part per row: ``[...]`` in ``dtype`` (default: the logits').

    Pass the compute dtype for 16-bit logits: float16 rounds counts above 2048 and overflows at
    65520, bfloat16 rounds counts above 256.
    """
    dtype = logits.dtype if dtype is None else dtype
    if where is None:
        return jnp.full(logits.shape[:-1], logits.shape[-1], dtype=dtype)
    return jnp.sum(where, axis=-1, dtype=dtype)


def entropy_from_log_probs(log_probs: jax.Array, probs: jax.Array) -> jax.Array:
    r"""Shannon entropy in nats, :math:`E(S) = -\sum_i S_i \log S_i` (paper Eq. 7). Shape ``[...]``."""
    return -jnp.sum(probs * log_probs, axis=-1)


def normalized_entropy(entropy: jax.Array, num_classes: jax.Array) -> jax.Array:
    r"""Min-max rescaled entropy :math:`H = E / \log n` (paper Eq. 8); 0 where ``n < 2``."""
    log_n = jnp.log(jnp.maximum(num_classes, 2.0))
    return jnp.where(num_classes >= 2, entropy / log_n, 0.0)


LOG_TWO_PI = math.log(2.0 * math.pi)


def cross_entropy_last_axis(logits, labels, kind, where) -> Array:
    """optax's softmax cross-entropy on the last axis (integer ids or probability vectors)."""
    if kind == "int":
        return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels, where=where)
    log_probs, _ = masked_log_softmax(logits, where)
    return -jnp.sum(labels * log_probs, axis=-1)


def safe_power(base: Array, exponent: float) -> Array:
    """``base ** exponent`` for ``base >= 0`` with a finite (zero) gradient at ``base == 0``."""
    positive = base > 0
    safe_base = jnp.where(positive, base, 1.0)
    return jnp.where(positive, safe_base**exponent, 1.0 if exponent == 0 else 0.0)
