r"""Output projection + cross-entropy + GSC in vocabulary chunks, without the ``[B, V]`` logits.

For hidden states :math:`h \in \mathbb{R}^{B \times D}`, an output weight
:math:`W \in \mathbb{R}^{D \times V}` and an optional bias :math:`b \in \mathbb{R}^V`, the logits
:math:`z = h W + b` are the largest tensor of a language model's step (``B x V``: 4 GiB in float32
at 8,192 tokens and a 128K vocabulary, and their gradient as large again). Cross-entropy and the
GSC term need only per-row statistics of :math:`z`,

.. math::
    m = \max_i z_i, \quad \Sigma = \sum_i e^{z_i - m}, \quad
    \mathrm{CE} = \log\Sigma - (z_y - m), \quad
    E = \log\Sigma + \sum_i S_i (m - z_i), \quad K = \mathrm{top}_c(S),

(:math:`S = e^{z - m}/\Sigma`, as in `gsc_jax._fused`), and all of them can be accumulated over
vocabulary chunks :math:`z^{(k)} = h W_{:, k} + b_k` of ``chunk_size`` columns in one streaming
pass (`jax.lax.scan`): the online softmax (Milakov & Gimelshein 2018) keeps a running max
:math:`m` and sum :math:`\Sigma`, rescaled by :math:`\alpha = e^{m_{old} - m_{new}}` when the max
grows; the entropy's running sum :math:`w = \sum_i e^{z_i - m}(z_i - m)` is rescaled as
:math:`w \leftarrow \alpha (w + (m_{old} - m_{new}) \Sigma)`; the top-c logits are merged chunk by
chunk, selecting from the running top-c and the chunk's top-c (equal values: the lower vocabulary
index first, as `jax.lax.top_k` on the whole row; `jax.lax.top_k` on accelerators, on the CPU
backend `gsc_jax._fused.top_logits` and rounds of max, as the fused loss does).

The backward pass (`jax.custom_vjp`) recomputes each chunk's logits and applies the closed-form
gradient of `gsc_jax._fused` to them,

.. math::
    \frac{\partial L}{\partial z} = S \odot \big(r - \bar E (z - m)\big)
        \text{ (entries at the top-c indices rewritten with their } \bar K \text{ term)}
        - \bar c\, e_y,

then accumulates :math:`\partial L/\partial h \mathrel{+}= \frac{\partial L}{\partial z^{(k)}}
W_{:,k}^\top`, :math:`\partial L/\partial W_{:,k} = h^\top \frac{\partial L}{\partial z^{(k)}}`
and :math:`\partial L/\partial b_k = \sum_{rows} \frac{\partial L}{\partial z^{(k)}}` chunk by
chunk, as Liger-Kernel's fused linear cross-entropy does for cross-entropy alone. Temporary
memory is ``O(B x chunk_size)`` (plus the ``[D, V]`` weight gradient, an output) instead of
``O(B x V)``.

References:
  Zhao et al., GSC Loss: A Gaussian Score Calibrating Loss for Deep Learning, 2022
  (https://arxiv.org/abs/2203.00833).
  Milakov and Gimelshein, Online normalizer calculation for softmax, 2018
  (https://arxiv.org/abs/1805.02867).
  Hsu et al., Liger Kernel: Efficient Triton Kernels for LLM Training, 2024
  (https://github.com/linkedin/Liger-Kernel, ``fused_linear_cross_entropy``).
"""

from __future__ import annotations

import functools
import numbers
from typing import Optional, Union

import jax
import jax.numpy as jnp
from jax import lax

from gsc_jax import _examples
from gsc_jax import _fused
from gsc_jax import _gsc
from gsc_jax import _validation

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

DEFAULT_CHUNK_SIZE = 4096
"""Vocabulary columns per chunk unless ``chunk_size`` says otherwise."""


def _chunk_logits(hidden, weight, bias, index, chunk, vocab):
    """Logits of chunk ``index`` in the compute dtype, ``-inf`` at columns outside the chunk.

    The last chunk starts at ``vocab - chunk`` when ``vocab`` is not a multiple of ``chunk``: its
    columns below ``index * chunk`` belong to the previous chunk and are masked out here.

    Returns:
      ``(logits [B, chunk], column_ids [1, chunk], in_chunk [1, chunk], start)``.
    """
    compute = hidden.dtype if hidden.dtype.itemsize >= 4 else jnp.float32
    start = jnp.minimum(index * chunk, vocab - chunk)
    weight_chunk = lax.dynamic_slice_in_dim(weight, start, chunk, axis=1)
    logits = jnp.dot(hidden, weight_chunk, preferred_element_type=compute).astype(compute)
    if bias is not None:
        logits = logits + lax.dynamic_slice_in_dim(bias, start, chunk).astype(compute)
    column_ids = start + lax.broadcasted_iota(jnp.int32, (1, chunk), 1)
    in_chunk = column_ids >= index * chunk
    return jnp.where(in_chunk, logits, -jnp.inf), column_ids, in_chunk, start


def _merge_top_k(logits, start, top_values, top_ids, chunk_top, vocab):
    """`_merge_top` by `jax.lax.top_k` (the path of non-CPU backends)."""
    top_c = top_values.shape[-1]
    # -0.0 ranks as 0.0 (equal probabilities); a missing entry (-inf) gets id `vocab`.
    chunk_values, chunk_positions = lax.top_k(jnp.where(logits == 0, 0.0, logits), chunk_top)
    chunk_ids = jnp.where(chunk_values == -jnp.inf, vocab, start + chunk_positions)
    # The running top-c first: on ties lax.top_k keeps the earlier position, the lower id.
    merged_values = jnp.concatenate([top_values, chunk_values], axis=-1)
    merged_ids = jnp.concatenate([top_ids, chunk_ids], axis=-1)
    top_values, positions = lax.top_k(merged_values, top_c)
    return top_values, jnp.take_along_axis(merged_ids, positions, axis=-1)


def _merge_top_select(logits, start, top_values, top_ids, chunk_top, vocab):
    """`_merge_top` by `gsc_jax._fused.top_logits` and rounds of max (the CPU backend's path:
    XLA:CPU's TopK is a sort, and the SPMD partitioner gathers its rows onto every device)."""
    chunk_values, chunk_positions = _fused.top_logits(logits, chunk_top)
    chunk_ids = jnp.where(chunk_positions >= logits.shape[-1], vocab, start + chunk_positions)
    return _fused.select_rounds(
        jnp.concatenate([top_values, chunk_values], axis=-1),
        jnp.concatenate([top_ids, chunk_ids], axis=-1),
        top_values.shape[-1],
        vocab,
    )


def _merge_top(logits, start, top_values, top_ids, chunk_top, vocab):
    """The top-c of the running top-c and a chunk's logits, ties to the lower vocabulary id.

    Args:
      logits: ``[B, chunk]`` the chunk's logits, ``-inf`` at columns outside it.
      start: vocabulary id of the chunk's first column.
      top_values, top_ids: ``[B, c]`` the running top-c (ids ``vocab`` for missing entries).
      chunk_top: ``min(c, chunk)``, how many of the chunk's entries can enter.
      vocab: ``V``, the id of a missing entry.

    Returns:
      The new ``(top_values, top_ids)``, values descending.
    """
    options = dict(chunk_top=chunk_top, vocab=vocab)
    return lax.platform_dependent(
        logits,
        start,
        top_values,
        top_ids,
        cpu=functools.partial(_merge_top_select, **options),
        default=functools.partial(_merge_top_k, **options),
    )


def _forward(hidden, weight, bias, labels, top_c, chunk):
    """Cross-entropy, entropy and top-c scores of ``hidden @ weight + bias``; and residuals."""
    vocab = weight.shape[1]
    rows = hidden.shape[0]
    num_chunks = -(-vocab // chunk)
    compute = hidden.dtype if hidden.dtype.itemsize >= 4 else jnp.float32
    chunk_top = min(top_c, chunk)

    def step(carry, index):
        row_max, total, weighted, label_logit, top_values, top_ids = carry
        logits, column_ids, in_chunk, start = _chunk_logits(
            hidden, weight, bias, index, chunk, vocab
        )
        new_max = jnp.maximum(row_max, jnp.max(logits, axis=-1))
        shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
        # exp(m_old - m_new) <= 1; 0 while nothing finite has been seen.
        old_shift = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
        scale = jnp.where(jnp.isfinite(row_max), jnp.exp(row_max - shift), 0.0)
        shifted = logits - shift[:, None]
        exps = jnp.exp(shifted)
        # Entries with exps = 0 count 0, also at a -inf logit (0 * -inf).
        weighted = scale * (weighted + (old_shift - shift) * total) + jnp.sum(
            jnp.where(exps == 0, 0.0, exps * shifted), axis=-1
        )
        total = scale * total + jnp.sum(exps, axis=-1)
        hit = (column_ids == labels[:, None]) & in_chunk
        label_logit = jnp.where(
            jnp.any(hit, axis=-1), jnp.sum(jnp.where(hit, logits, 0.0), axis=-1), label_logit
        )
        top_values, top_ids = _merge_top(logits, start, top_values, top_ids, chunk_top, vocab)
        return (new_max, total, weighted, label_logit, top_values, top_ids), None

    init = (
        jnp.full((rows,), -jnp.inf, compute),
        jnp.zeros((rows,), compute),
        jnp.zeros((rows,), compute),
        jnp.zeros((rows,), compute),
        jnp.full((rows, top_c), -jnp.inf, compute),
        jnp.full((rows, top_c), vocab, jnp.int32),
    )
    (row_max, total, weighted, label_logit, top_values, top_ids), _ = lax.scan(
        step, init, jnp.arange(num_chunks, dtype=jnp.int32)
    )
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    total = jnp.where(total == 0, jnp.nan, total)  # no finite logit: no softmax
    log_total = jnp.log(total)
    entropy = log_total - weighted / total
    top_scores = jnp.exp((top_values - row_max[:, None]) - log_total[:, None])
    valid = labels < vocab  # an invalid label is `vocab` here
    cross_entropy = jnp.where(valid, log_total - (label_logit - row_max), jnp.nan)
    statistics = (cross_entropy, entropy, top_scores)
    residuals = (
        hidden,
        weight,
        bias,
        labels,
        row_max,
        log_total,
        entropy,
        top_scores,
        top_ids,
        top_values,
    )
    return statistics, residuals


def _backward(top_c, chunk, residuals, cotangents):
    """Closed-form VJP of `_statistics`, chunk by chunk (see the module docstring)."""
    (hidden, weight, bias, labels, row_max, log_total, entropy, top_scores, top_ids, top_values) = (
        residuals
    )
    ct_cross_entropy, ct_entropy, ct_top = cotangents
    vocab = weight.shape[1]
    num_chunks = -(-vocab // chunk)
    compute = row_max.dtype
    accumulate = jnp.promote_types(compute, jnp.float32)
    # As `gsc_jax._fused._backward`: r = ct_E (log Sigma - E) - <ct_K, K> + ct_ce; the NaN
    # cross-entropy of an invalid label has no derivative.
    row_coefficient = ct_entropy * (log_total - entropy) - jnp.sum(ct_top * top_scores, axis=-1)
    row_coefficient = row_coefficient + jnp.where(labels < vocab, ct_cross_entropy, 0.0)
    top_shifted = jnp.where(top_scores > 0, top_values - row_max[:, None], 0.0)
    top_entries = top_scores * (
        row_coefficient[:, None] + ct_top - ct_entropy[:, None] * top_shifted
    )
    matmul_dtype = jnp.promote_types(hidden.dtype, weight.dtype)

    def step(carry, index):
        d_hidden, d_weight, d_bias = carry
        logits, column_ids, in_chunk, start = _chunk_logits(
            hidden, weight, bias, index, chunk, vocab
        )
        shifted = logits - row_max[:, None]
        probs = jnp.exp(shifted - log_total[:, None])
        d_logits = probs * (row_coefficient[:, None] - ct_entropy[:, None] * shifted)
        d_logits = jnp.where(
            probs == 0, jnp.where(jnp.isnan(row_coefficient), jnp.nan, 0.0)[:, None], d_logits
        )
        for j in range(top_c):
            hit = (column_ids == top_ids[:, j : j + 1]) & in_chunk
            d_logits = jnp.where(hit, top_entries[:, j : j + 1], d_logits)
        label_hit = (column_ids == labels[:, None]) & in_chunk
        d_logits = jnp.where(label_hit, d_logits - ct_cross_entropy[:, None], d_logits)
        d_logits = jnp.where(in_chunk, d_logits, 0.0)
        weight_chunk = lax.dynamic_slice_in_dim(weight, start, chunk, axis=1)
        d_low = d_logits.astype(matmul_dtype)
        d_hidden = d_hidden + jnp.dot(
            d_low, weight_chunk.T, preferred_element_type=accumulate
        ).astype(accumulate)
        d_weight_chunk = jnp.dot(hidden.T, d_low, preferred_element_type=accumulate)
        # Columns of the overlapping last chunk that belong to the previous one add 0.
        d_weight = lax.dynamic_update_slice_in_dim(
            d_weight,
            lax.dynamic_slice_in_dim(d_weight, start, chunk, axis=1)
            + d_weight_chunk.astype(accumulate),
            start,
            axis=1,
        )
        if d_bias is not None:
            d_bias = lax.dynamic_update_slice_in_dim(
                d_bias,
                lax.dynamic_slice_in_dim(d_bias, start, chunk) + jnp.sum(d_logits, axis=0),
                start,
                axis=0,
            )
        return (d_hidden, d_weight, d_bias), None

    init = (
        jnp.zeros(hidden.shape, accumulate),
        jnp.zeros(weight.shape, accumulate),
        None if bias is None else jnp.zeros(bias.shape, accumulate),
    )
    (d_hidden, d_weight, d_bias), _ = lax.scan(step, init, jnp.arange(num_chunks, dtype=jnp.int32))
    return (
        d_hidden.astype(hidden.dtype),
        d_weight.astype(weight.dtype),
        None if bias is None else d_bias.astype(bias.dtype),
        None,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _statistics(hidden, weight, bias, labels, top_c, chunk):
    return _forward(hidden, weight, bias, labels, top_c, chunk)[0]


_statistics.defvjp(_forward, _backward)


def _check_chunk_size(chunk_size) -> int:
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, numbers.Integral)
        or chunk_size < 1
    ):
        raise ValueError(f"`chunk_size` must be an int >= 1, got {chunk_size!r}.")
    return int(chunk_size)


def linear_gsc_loss(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: Union[float, ArrayLike],
    top_c: int,
    bias: Optional[ArrayLike] = None,
    mu: float = 0.0,
    normalize_entropy: bool = True,
    stop_gradient_sigma: bool = False,
    example_mask: Optional[ArrayLike] = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Array:
    r"""Cross-entropy plus ``gamma`` times GSC of ``hidden @ weight + bias``, in vocabulary chunks.

    Equal to ``gsc_loss(hidden @ weight + bias, labels, gamma=gamma, top_c=top_c, ...)`` (paper
    Eq. 9),

    .. math::
        L = \mathrm{CE}(z, y) + \gamma\, f_{top_c}(K, \mu, \sigma), \qquad z = h W + b,

    but the ``[..., V]`` logits are never materialised: the forward pass streams over chunks of
    ``chunk_size`` vocabulary columns (`jax.lax.scan`; online softmax with a running max, sum of
    exponentials, entropy sum and top-c), and a `jax.custom_vjp` backward pass recomputes each
    chunk's logits and accumulates the gradients of ``hidden``, ``weight`` and ``bias`` chunk by
    chunk (see `gsc_jax._linear`). Temporary memory is ``O(rows x chunk_size)``. With
    ``gamma=0`` it is chunked softmax cross-entropy (the GSC statistics are still computed).

    Args:
      hidden: ``[..., D]`` hidden states (the last layer's input). 16-bit floats go into the
        matrix products as they are, with float32 accumulation; all statistics are float32.
      weight: ``[D, V]`` output projection, ``V >= 2``.
      labels: ``[...]`` integer token ids, the rule of `gsc_jax.cross_entropy`: ids in
        ``[-V, V)``, negative ones from the end; an id outside it gives a NaN value for that
        example, with no gradient through its cross-entropy.
      gamma: weight of the GSC term, ``>= 0``; may be traced.
      top_c: number of top scores in the term, ``1 <= top_c <= V``; may exceed ``chunk_size``.
      bias: optional ``[V]`` output bias.
      mu, normalize_entropy, stop_gradient_sigma: see `gsc_jax.gsc_term`.
      example_mask: optional boolean ``[...]`` (the labels' shape); False examples (padding
        tokens) give loss 0 and gradient 0 whatever their label.
      chunk_size: vocabulary columns per chunk, ``>= 1`` (values above ``V`` use one chunk).
        ``V`` need not be a multiple: the last chunk overlaps the previous one, whose columns it
        masks out.

    Returns:
      ``[...]`` per-example loss in float32 (float64 for float64 inputs).

    Derivatives: first-order reverse mode (`jax.grad`, `jax.vjp`) with respect to ``hidden``,
    ``weight``, ``bias``, ``gamma`` and ``mu``, under `jax.jit`, `jax.vmap` and sharding.

    Raises:
      ValueError: ``chunk_size < 1``, ``top_c`` outside ``[1, V]``, ``weight`` not ``[D, V]``
        with ``D = hidden.shape[-1]`` and ``V >= 2``, ``bias`` not ``[V]``, labels or
        ``example_mask`` not of shape ``hidden.shape[:-1]``, a negative ``gamma``, a non-finite
        ``mu``.
      TypeError: non-floating ``hidden``, ``weight`` or ``bias``, non-integer labels, a
        non-boolean ``example_mask``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from gsc_jax import linear_gsc_loss
      >>> hidden = jax.random.normal(jax.random.key(0), (4, 8))
      >>> weight = jax.random.normal(jax.random.key(1), (8, 100))
      >>> loss = linear_gsc_loss(hidden, weight, jnp.arange(4), gamma=0.02, top_c=5,
      ...                        chunk_size=32)
      >>> loss.shape
      (4,)

    References:
      Zhao et al., `GSC Loss <https://arxiv.org/abs/2203.00833>`_, 2022; Milakov and Gimelshein,
      `Online normalizer calculation for softmax <https://arxiv.org/abs/1805.02867>`_, 2018;
      Liger-Kernel's fused linear cross-entropy (https://github.com/linkedin/Liger-Kernel).
    """
    chunk_size = _check_chunk_size(chunk_size)
    hidden = _validation.check_float_array("hidden", hidden)
    weight = _validation.check_float_array("weight", weight)
    if hidden.ndim < 1:
        raise ValueError("`hidden` must have a feature axis [..., D], got a scalar.")
    if weight.ndim != 2 or weight.shape[0] != hidden.shape[-1]:
        raise ValueError(
            f"`weight` must have shape [D, V] with D = hidden.shape[-1] = {hidden.shape[-1]}, "
            f"got shape {weight.shape} (hidden shape {hidden.shape})."
        )
    vocab = weight.shape[1]
    if vocab < 2:
        raise ValueError(
            f"`weight` must have at least 2 columns (classes), got shape {weight.shape}."
        )
    if bias is not None:
        bias = _validation.check_float_array("bias", bias)
        if bias.shape != (vocab,):
            raise ValueError(f"`bias` must have shape [V] = ({vocab},), got shape {bias.shape}.")
    top_c = _validation.check_top_c(top_c, vocab)
    _validation.check_non_negative("gamma", gamma)
    mu = _gsc.check_mu(mu)
    batch_shape = hidden.shape[:-1]
    labels = jnp.asarray(labels)
    if labels.shape != batch_shape:
        raise ValueError(
            f"`labels` must be integer ids of shape hidden.shape[:-1] = {batch_shape}, got shape "
            f"{labels.shape}."
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"`labels` must be integers, got dtype {labels.dtype}.")
    example_mask = _examples.check_example_mask(example_mask, batch_shape)

    dtypes = [hidden.dtype, weight.dtype] + ([] if bias is None else [bias.dtype])
    input_dtype = jnp.result_type(*dtypes)
    compute = _validation.compute_dtype(input_dtype)
    hidden2d = hidden.reshape(-1, hidden.shape[-1]).astype(input_dtype)
    weight = weight.astype(input_dtype)
    ids, valid = _validation.label_ids(labels.reshape(-1), vocab)
    if example_mask is not None:
        mask = example_mask.reshape(-1)
        valid = valid | ~mask
        ids = jnp.where(mask, ids, 0)
    ids = jnp.where(valid, ids, vocab)
    cross_entropy, entropy, top_scores = _fused.reverse_mode_only(
        _statistics, hidden2d, weight, bias, ids, top_c, min(chunk_size, vocab)
    )
    term = _gsc.gsc_from_statistics(
        entropy,
        top_scores,
        jnp.full(entropy.shape, vocab, compute),
        mu=mu,
        normalize_entropy=normalize_entropy,
        stop_gradient_sigma=stop_gradient_sigma,
    )
    loss = cross_entropy + gamma * term
    if example_mask is not None:
        loss = jnp.where(mask, loss, 0.0)
    return loss.reshape(batch_shape)
