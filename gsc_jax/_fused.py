r"""One-pass softmax statistics for cross-entropy + GSC, with a closed-form backward pass.

`softmax_statistics` returns, per row of ``[..., num_classes]`` logits ``z``, everything the
cross-entropy and the GSC term (Zhao et al. 2022, Sec. 3.2, Eq. 4-9) need:

.. math::
    \mathrm{CE} = \mathrm{lse}(z) - \sum_i y_i z_i \ (\text{times } \textstyle\sum_i y_i), \qquad
    E = \log \Sigma + \sum_i S_i (m - z_i), \qquad K = \mathrm{top}_c(S),

with :math:`m = \max_i z_i`, :math:`\Sigma = \sum_i e^{z_i - m}`,
:math:`\mathrm{lse} = m + \log\Sigma` and :math:`S = e^{z - \mathrm{lse}}`. One exponential per
element serves all three and the backward pass (the ``[..., num_classes]`` buffer of
:math:`e^{z - m}` is the only residual besides the logits, as in autodiff cross-entropy):
:math:`E` is a sum of non-negative terms (no cancellation) and needs no logarithm per element,
and :math:`K` is read from the logits (softmax is monotone).

The backward pass is one elementwise pass plus ``top_c + 1`` in-place writes per row. With
cotangents :math:`\bar c, \bar E, \bar K`:

.. math::
    \frac{\partial \mathrm{CE}}{\partial z} &= (\textstyle\sum_j y_j) S - y, \qquad
    \frac{\partial E}{\partial z} = -S \odot (\log S + E), \\
    \sum_j \bar K_j \frac{\partial K_j}{\partial z} &= S \odot (g - \langle \bar K, K \rangle),
    \qquad g_i = \textstyle\sum_j \bar K_j [i = \mathrm{idx}_j],

the softmax Jacobian :math:`\mathrm{diag}(S) - S S^\top` applied to the gradient with respect to
the probabilities, so no ``[..., num_classes, num_classes]`` term. :math:`g` is non-zero at the
``top_c`` selected indices only and :math:`y` (integer labels) at one: the elementwise pass
computes every entry without them, and those ``top_c + 1`` entries per row are then rewritten in
place (measured on XLA:CPU: cheaper than ``top_c + 1`` compare-and-select terms per element, except
in rows of at most `SELECT_MAX_CLASSES`, which take the selects). The GSC term
itself (sigma, its floor, normalisation, ``stop_gradient_sigma``, ``mu``) is assembled from these
statistics by ordinary autodiff on ``[...]``- and ``[..., c]``-shaped arrays in `gsc_jax._gsc`.

These are XLA operations on every backend. On the CPU backend, `gsc_jax.cpu_kernel.enable`
(opt-in) routes float32 and bfloat16 rows to two C++ kernels instead: one computes the row
statistics (max, exps, both sums, top-c) in one sweep per row while it is in cache (short rows
eight at a time), the other the backward pass's elementwise pass and written entries; the results
are the same to float32 rounding (`tests/test_cpu_kernel.py`).

Top-c selection follows `jax.lax.top_k` exactly on ties (the lower index first). On the CPU
backend it uses neither `lax.top_k` nor a sort (`top_logits`: ``c`` rounds of max and
first-index-of-max): XLA:CPU compiles `lax.top_k` inside this computation to a full sort of every
row, and a standalone `lax.top_k` is no faster than `top_logits` either (``docs/performance.md``,
``python -m benchmarks.top_c_selection``). Other backends use `lax.top_k` (`select_top`).
For ``num_classes >= 256`` the rounds run on chunk maxima and then on candidates: the top-c
entries of a row lie in the ``c`` chunks with the largest maxima (ties to the lower chunk), so one
max pass over the row (chunks of ``w ~ sqrt(num_classes)``) plus selections over
``num_classes / w`` chunk maxima and ``c * w`` candidates replace ``c`` passes over the whole row.

Integer labels follow `gsc_jax.cross_entropy`'s rule: ids in ``[-n, n)``, negative ones counting
from the end; an id outside that range, or one naming a class masked out by ``where`` (in a row
with some class taking part), makes that row's cross-entropy NaN, with no derivative: only the
entropy and top-c terms reach that row's gradient.
A row whose logits are all ``-inf`` (no class with a finite logit among those taking part) has no
softmax and gives NaN; a row with no class taking part (``where`` all False) gives 0.

Derivatives: first-order reverse mode (`jax.grad`, `jax.vjp`) of the logits, of soft labels and,
through the caller, of ``gamma`` and ``mu``. Forward mode (`jax.jvp`, `jax.jacfwd`,
`jax.hessian`) and higher-order derivatives are refused with an error that names
``implementation="reference"``, which supports them.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from gsc_jax import _validation
from gsc_jax import cpu_kernel

Array = jax.Array

CHUNKED_MIN_CLASSES = 256
"""Rows at least this long select their top-c through chunk maxima; shorter rows directly."""

SELECT_MAX_CLASSES = 16
"""Rows at most this long get the backward pass's top_c + 1 written entries by compare-and-select
(fused into the elementwise pass); longer rows by an in-place scatter, cheaper there."""

SECOND_ORDER_ERROR = (
    "The fused GSC implementation (the default of gsc_jax.gsc_loss, gsc_jax.gsc_term and "
    "gsc_jax.with_gsc) supports first-order reverse-mode derivatives only (jax.grad, jax.vjp). "
    'For forward-mode or higher-order derivatives pass implementation="reference" (plain '
    "autodiff, every transformation)."
)


def _chunk_width(num_classes: int, top_c: int) -> Optional[int]:
    """Chunk width ``w`` dividing ``num_classes`` for the chunked top-c, or None to scan rows whole.

    Aims at ``w ~ sqrt(num_classes)`` (few chunk maxima and few candidates) within
    ``[16, num_classes / max(top_c, 4)]``; None for short rows or when no divisor fits.
    """
    if num_classes < CHUNKED_MIN_CLASSES:
        return None
    upper = num_classes // max(top_c, 4)
    target = math.sqrt(num_classes)
    divisors = [w for w in range(16, upper + 1) if num_classes % w == 0]
    if not divisors:
        return None
    return min(divisors, key=lambda w: (abs(math.log(w / target)), w))


def select_rounds(values: Array, ids: Array, count: int, sentinel: int) -> tuple[Array, Array]:
    """The ``count`` largest of ``values`` by repeated max, ties to the smallest id.

    Args:
      values: ``[..., n]`` with ``-inf`` for entries that take no part.
      ids: ``[..., n]`` integers, distinct per row: reported, and compared on ties.
      count: how many to select, ``<= n``.
      sentinel: id reported once a row has only ``-inf`` left (such an entry has probability 0).

    Returns:
      ``(top_values, top_ids)``, both ``[..., count]``, values descending.
    """
    top_values, top_ids = [], []
    for _ in range(count):
        value = jnp.max(values, axis=-1, keepdims=True)
        chosen = jnp.min(jnp.where(values == value, ids, sentinel), axis=-1, keepdims=True)
        chosen = jnp.where(value == -jnp.inf, sentinel, chosen)
        top_values.append(value)
        top_ids.append(chosen)
        values = jnp.where(ids == chosen, -jnp.inf, values)
    return jnp.concatenate(top_values, axis=-1), jnp.concatenate(top_ids, axis=-1)


def top_logits(logits: Array, top_c: int) -> tuple[Array, Array]:
    """The ``top_c`` largest entries of each row and their indices, with `jax.lax.top_k`'s ties.

    Args:
      logits: ``[..., num_classes]``; masked classes already set to ``-inf``.
      top_c: ``1 <= top_c <= num_classes``.

    Returns:
      ``(values, indices)``, both ``[..., top_c]``: values descending, equal values in increasing
      index order. Where a row has fewer than ``top_c`` finite entries the rest have value
      ``-inf`` and index ``num_classes`` (no class); `jax.lax.top_k` would name a masked class
      there, which has probability 0 either way. ``-0.0`` and ``0.0`` are equal here, as their
      probabilities are, whereas `jax.lax.top_k` on the logits ranks ``0.0`` first
      (`top_logits_top_k` gives this function's results by `jax.lax.top_k`). Logits that
      differ by less than the rounding of their probabilities tie in `gsc_term`'s `lax.top_k` over
      probabilities but not here; either choice is a one-sided derivative of the term.
    """
    num_classes = logits.shape[-1]
    class_ids = lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    width = _chunk_width(num_classes, top_c)
    if width is None:
        return select_rounds(logits, class_ids, top_c, num_classes)
    batch_shape = logits.shape[:-1]
    num_chunks = num_classes // width
    chunks = logits.reshape(batch_shape + (num_chunks, width))
    chunk_ids = lax.broadcasted_iota(jnp.int32, batch_shape + (num_chunks,), len(batch_shape))
    # The top-c entries lie in the c chunks with the largest maxima (ties to the lower chunk).
    chunk_max, top_chunks = select_rounds(jnp.max(chunks, axis=-1), chunk_ids, top_c, num_chunks)
    gathered = jnp.take_along_axis(
        chunks, jnp.minimum(top_chunks, num_chunks - 1)[..., None], axis=-2
    )
    candidates = jnp.where(chunk_max[..., None] == -jnp.inf, -jnp.inf, gathered)
    offsets = lax.broadcasted_iota(jnp.int32, candidates.shape, candidates.ndim - 1)
    candidate_ids = top_chunks[..., None] * width + offsets
    flat_shape = batch_shape + (top_c * width,)
    return select_rounds(
        candidates.reshape(flat_shape), candidate_ids.reshape(flat_shape), top_c, num_classes
    )


def top_logits_top_k(logits: Array, top_c: int) -> tuple[Array, Array]:
    """`top_logits` by `jax.lax.top_k`, with the same results (the path of non-CPU backends).

    ``-0.0`` counts as ``0.0`` and a missing entry (``-inf``) gets index ``num_classes``, as in
    `top_logits`.
    """
    values, indices = lax.top_k(jnp.where(logits == 0, 0.0, logits), top_c)  # -0.0 as 0.0
    return values, jnp.where(values == -jnp.inf, logits.shape[-1], indices)


def select_top(logits: Array, top_c: int) -> tuple[Array, Array]:
    """`top_logits` on the CPU backend, `top_logits_top_k` on every other backend."""
    return lax.platform_dependent(
        logits,
        cpu=functools.partial(top_logits, top_c=top_c),
        default=functools.partial(top_logits_top_k, top_c=top_c),
    )


@jax.custom_jvp
def _refuse_derivatives(x: Array) -> Array:
    """Identity that raises when differentiated: guards the closed-form backward pass."""
    return x


@_refuse_derivatives.defjvp
def _refuse_derivatives_jvp(primals, tangents):
    del primals, tangents
    raise NotImplementedError(SECOND_ORDER_ERROR)


def reverse_mode_only(custom_vjp_fn, *args):
    """``custom_vjp_fn(*args)``, with JAX's generic refusal of forward mode (a TypeError raised
    while jvp-tracing a `jax.custom_vjp` function) replaced by `SECOND_ORDER_ERROR`, which names
    ``implementation="reference"``."""
    try:
        return custom_vjp_fn(*args)
    except TypeError as error:
        if "forward-mode" in str(error):
            raise NotImplementedError(SECOND_ORDER_ERROR) from None
        raise


def _guard_float(x):
    """`_refuse_derivatives` on floating-point arrays; integer and boolean arrays pass through."""
    return _refuse_derivatives(x) if jnp.issubdtype(x.dtype, jnp.inexact) else x


def _row_statistics_xla(masked, logits, where, top_c):
    """exps, row max, sum of exps, sum_i exps_i (z_i - m), top-c values and indices, by XLA ops."""
    top_values, top_indices = select_top(masked, top_c)
    row_max = top_values[..., :1]
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    shifted = logits - row_max
    exps = jnp.exp(shifted if where is None else jnp.where(where, shifted, -jnp.inf))
    total = jnp.sum(exps, axis=-1, keepdims=True)
    # Entries with exps = 0 count 0, also at a -inf logit (0 * -inf), as in the kernel.
    weighted = jnp.sum(jnp.where(exps == 0, 0.0, exps * shifted), axis=-1, keepdims=True)
    return exps, row_max, total, weighted, top_values, top_indices


def _uses_kernel(logits):
    """Whether rows of ``logits`` go through the CPU kernel: float32 or bfloat16 on the CPU
    backend once `gsc_jax.cpu_kernel.enable` has succeeded."""
    return (
        cpu_kernel.is_enabled()
        and logits.dtype in (jnp.float32, jnp.bfloat16)
        and jax.default_backend() == "cpu"
    )


def _upcast(x):
    """``x`` in its compute dtype: float32 for 16-bit floats (which only the kernel reads)."""
    return x.astype(_validation.compute_dtype(x.dtype))


def _kernel_or_xla(kernel, xla, *args):
    """``kernel(*args)`` where `_uses_kernel` holds for ``args[0]`` (on the CPU backend at run
    time, ``xla(*args)`` elsewhere), else ``xla(*args)``."""
    if not _uses_kernel(args[0]):
        return xla(*args)
    return lax.platform_dependent(*args, cpu=kernel, default=xla)


def _row_statistics(masked, logits, where, top_c):
    """`_row_statistics_xla`, or with the CPU kernel enabled its one-sweep forward kernel."""

    def xla(masked, logits):
        return _row_statistics_xla(_upcast(masked), _upcast(logits), where, top_c)

    def kernel(masked, logits):
        # The custom call has no derivative rules; the guard names the alternative first.
        from gsc_jax.cpu_kernel import _ffi

        return _ffi.row_statistics(_refuse_derivatives(masked), top_c)

    return _kernel_or_xla(kernel, xla, masked, logits)


def _forward(logits, where, labels, label_kind, top_c):
    """Statistics and residuals; see `softmax_statistics`."""
    masked = logits if where is None else jnp.where(where, logits, -jnp.inf)
    exps, row_max, total, weighted, top_values, top_indices = _row_statistics(
        masked, logits, where, top_c
    )
    # No exp > 0: no class taking part (where all False; everything 0) or no softmax (NaN).
    undefined = (
        jnp.nan
        if where is None
        else jnp.where(jnp.any(where, axis=-1, keepdims=True), jnp.nan, 1.0)
    )
    total = jnp.where(total == 0, undefined, total)
    log_total = jnp.log(total)
    # E = log(Sigma) - sum_i S_i (z_i - m): every term >= 0 (masked: exps = 0, logits finite).
    entropy = log_total - weighted / total
    # Everything below uses z - m, exact near the top, never z - lse, which cancels at large |z|.
    top_scores = jnp.exp((top_values - row_max) - log_total)
    if label_kind == "int":
        # `softmax_statistics` sets an invalid label to num_classes: a NaN cross-entropy.
        valid = labels[..., None] < logits.shape[-1]
        label_logits = jnp.take_along_axis(
            logits, jnp.minimum(labels, logits.shape[-1] - 1)[..., None], axis=-1
        )
        cross_entropy = jnp.where(valid, log_total - (label_logits - row_max), jnp.nan)
        if where is not None:
            cross_entropy = jnp.where(jnp.any(where, axis=-1, keepdims=True), cross_entropy, 0.0)
    elif label_kind == "soft":
        active_labels = labels if where is None else jnp.where(where, labels, 0.0)
        cross_entropy = log_total * jnp.sum(active_labels, axis=-1, keepdims=True) - jnp.sum(
            active_labels * (logits - row_max), axis=-1, keepdims=True
        )
    else:
        cross_entropy = jnp.zeros_like(entropy)
    statistics = (cross_entropy[..., 0], entropy[..., 0], top_scores)
    residuals = (
        logits,
        where,
        labels,
        exps,
        total,
        row_max,
        entropy,
        top_scores,
        top_indices,
        top_values,
    )
    return statistics, residuals


def _update_at_indices(x, indices, values, how):
    """x[..., indices[..., k]] set to / plus values[..., k] (`how` 'set' or 'add') on the last axis.

    Out-of-range indices are dropped; ``indices`` and ``values`` are ``[..., k]``. Rows shorter
    than `SELECT_MAX_CLASSES` compare every entry with the k indices (selects that fuse into the
    pass that computes ``x``); longer rows scatter in place.
    """
    if x.shape[-1] <= SELECT_MAX_CLASSES:
        class_ids = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
        values = values.astype(x.dtype)
        for k in range(indices.shape[-1]):
            hit = class_ids == indices[..., k : k + 1]
            entry = values[..., k : k + 1]
            x = jnp.where(hit, entry if how == "set" else x + entry, x)
        return x

    def update_row(row, row_indices, row_values):
        return getattr(row.at[row_indices], how)(row_values, mode="drop")

    # vmap: a scatter whose row axes are batching dimensions, which stay sharded (indexing with a
    # row iota instead makes XLA's SPMD partitioner gather every row's indices on every device).
    for _ in range(x.ndim - 1):
        update_row = jax.vmap(update_row)
    return update_row(x, indices, values.astype(x.dtype))


def _logits_cotangent_xla(
    logits,
    exps,
    total,
    row_max,
    row_coefficient,
    ct_entropy,
    top_indices,
    top_entries,
    label_indices,
    label_entries,
):
    """`_logits_cotangent` by XLA operations: one elementwise pass, then the written entries."""
    logits = _upcast(logits)
    probs = exps * (1.0 / total)
    # 0 where exps = 0, also at a -inf logit (0 * inf), as in the kernel; NaN there too in a
    # row whose coefficient is NaN (no softmax), as exps * NaN in the kernel.
    cotangent = probs * (row_coefficient - ct_entropy * (logits - row_max))
    cotangent = jnp.where(exps == 0, jnp.where(jnp.isnan(row_coefficient), jnp.nan, 0.0), cotangent)
    cotangent = _update_at_indices(cotangent, top_indices, top_entries, "set")
    if label_indices is None:
        return cotangent
    return _update_at_indices(cotangent, label_indices, label_entries, "add")


def _logits_cotangent_kernel(
    logits,
    exps,
    total,
    row_max,
    row_coefficient,
    ct_entropy,
    top_indices,
    top_entries,
    label_indices,
    label_entries,
):
    """`_logits_cotangent` in one pass of the CPU kernel's backward pass (float32, CPU)."""
    from gsc_jax.cpu_kernel import _ffi

    if label_indices is None:
        label_indices = jnp.full(row_max.shape, logits.shape[-1], jnp.int32)  # out of range
        label_entries = jnp.zeros_like(row_max)
    inverse_total = 1.0 / total
    return _ffi.row_gradient(
        logits,
        exps,
        row_coefficient * inverse_total,
        ct_entropy * inverse_total,
        row_max,
        top_indices,
        top_entries,
        label_indices,
        label_entries,
    )


def _logits_cotangent(
    logits,
    exps,
    total,
    row_max,
    row_coefficient,
    ct_entropy,
    top_indices,
    top_entries,
    label_indices,
    label_entries,
):
    """S * (row_coefficient - ct_entropy (z - m)) with S = exps / total, then per row the
    entries at ``top_indices`` set to ``top_entries`` and, unless ``label_indices`` is None,
    ``label_entries`` added at ``label_indices`` (indices outside the row are dropped)."""

    def bound(fn):
        return functools.partial(fn, label_indices=label_indices, label_entries=label_entries)

    return _kernel_or_xla(
        bound(_logits_cotangent_kernel),
        bound(_logits_cotangent_xla),
        logits,
        exps,
        total,
        row_max,
        row_coefficient,
        ct_entropy,
        top_indices,
        top_entries,
    )


def _backward(label_kind, top_c, residuals, cotangents):
    """Closed-form VJP of `softmax_statistics`: one elementwise pass, then top_c + 1 entries a row."""
    del top_c
    residuals, cotangents = jax.tree.map(_guard_float, (residuals, cotangents))
    (logits, where, labels, exps, total, row_max, entropy, top_scores, top_indices, top_values) = (
        residuals
    )
    ct_cross_entropy, ct_entropy, ct_top = cotangents
    ct_cross_entropy = ct_cross_entropy[..., None]
    ct_entropy = ct_entropy[..., None]
    # dL/dz = S * (ct_ce * sum(y) + g - <ct_top, K> - ct_E (log S + E)) - ct_ce * y, with
    # log S = (z - m) - log(Sigma).
    # <ct_top, K> as c explicit adds: a reduce here would pull this whole pass into a YNNPACK
    # fusion on XLA:CPU, which materialises every broadcast operand as a [..., num_classes] buffer.
    log_total = jnp.log(total)
    row_coefficient = ct_entropy * (log_total - entropy) - sum(
        ct_top[..., j : j + 1] * top_scores[..., j : j + 1] for j in range(top_scores.shape[-1])
    )
    labels_cotangent = None
    if label_kind == "int":
        if where is not None:
            ct_cross_entropy = jnp.where(
                jnp.any(where, axis=-1, keepdims=True), ct_cross_entropy, 0.0
            )
        # An invalid label (set to num_classes by `softmax_statistics`): its NaN cross-entropy
        # has no derivative (`_validation.poison_invalid_rows`); the label entry is dropped.
        ct_cross_entropy = jnp.where(labels[..., None] < logits.shape[-1], ct_cross_entropy, 0.0)
        row_coefficient = row_coefficient + ct_cross_entropy
    elif label_kind == "soft":
        active_labels = labels if where is None else jnp.where(where, labels, 0.0)
        row_coefficient = row_coefficient + ct_cross_entropy * jnp.sum(
            active_labels, axis=-1, keepdims=True
        )
        targets = ct_cross_entropy * active_labels
        log_probs = (logits - row_max) - log_total
        if where is not None:
            log_probs = jnp.where(where, log_probs, 0.0)
        labels_cotangent = -ct_cross_entropy * log_probs
    # g is non-zero at the top_c indices only: there the entry is recomputed with g's term inside
    # the bracket (added outside it would cancel in saturated rows) and written in place; a
    # missing entry's sentinel index num_classes is dropped.
    top_shifted = jnp.where(top_scores > 0, top_values - row_max, 0.0)  # -inf: a missing entry
    top_entries = top_scores * (row_coefficient + ct_top - ct_entropy * top_shifted)
    label_indices, label_entries = (
        (labels[..., None], -ct_cross_entropy) if label_kind == "int" else (None, None)
    )
    logits_cotangent = _logits_cotangent(
        logits,
        exps,
        total,
        row_max,
        row_coefficient,
        ct_entropy,
        top_indices,
        top_entries,
        label_indices,
        label_entries,
    )
    if label_kind == "soft":
        logits_cotangent = logits_cotangent - targets
    return logits_cotangent.astype(logits.dtype), None, labels_cotangent


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _statistics(logits, where, labels, label_kind, top_c):
    return _forward(logits, where, labels, label_kind, top_c)[0]


_statistics.defvjp(_forward, _backward)


def softmax_statistics(
    logits: Array,
    where: Optional[Array],
    labels: Optional[Array],
    label_kind: Optional[str],
    top_c: int,
) -> tuple[Array, Array, Array]:
    r"""Cross-entropy, softmax entropy and top-c softmax scores of validated last-axis logits.

    Args:
      logits: ``[..., num_classes]`` float logits. 16-bit floats are computed in float32: upcast
        here, except bfloat16 rows that the CPU kernel reads as they are (no float32 copy of the
        logits; the gradient comes back in bfloat16, as for an upcast).
      where: ``[..., num_classes]`` boolean class mask or None. Masked classes have probability 0;
        a row with no class taking part gives cross-entropy 0, entropy 0 and scores 0; a row
        whose classes taking part all have logit ``-inf`` gives NaN.
      labels: ``[...]`` integer ids (``label_kind='int'``; the rule of `gsc_jax.cross_entropy`:
        an invalid id gives a NaN cross-entropy without a derivative), ``[..., num_classes]``
        probability vectors in the logits' dtype (``'soft'``), or None with ``label_kind=None``
        (no cross-entropy; the first output is then 0).
      label_kind: ``'int'``, ``'soft'`` or None.
      top_c: number of top scores, ``1 <= top_c <= num_classes``.

    Returns:
      ``(cross_entropy [...], entropy [...], top_scores [..., top_c])``: the cross-entropy as
      `gsc_jax.cross_entropy` computes it, :math:`E(S)` in nats and :math:`\mathrm{top}_c(S)`.
    """
    if label_kind is None:
        labels = None
    if label_kind == "int":
        # The label rule (`_validation.label_ids`); an invalid label becomes num_classes, which
        # both passes read as an invalid row.
        ids, valid = _validation.label_ids(labels, logits.shape[-1], where)
        labels = jnp.where(valid, ids, logits.shape[-1])
    if not (logits.dtype == jnp.bfloat16 and _uses_kernel(logits)):
        logits = _upcast(logits)
    return reverse_mode_only(_statistics, logits, where, labels, label_kind, top_c)
