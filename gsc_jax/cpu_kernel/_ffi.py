"""The row kernels as JAX operations: FFI registration and data-parallel wrappers.

``row_kernels.cc`` holds two XLA FFI custom calls on float32 or bfloat16 rows (computing in
float32; bfloat16 needs no float32 copy of the logits). `row_statistics` (the forward pass): per
row the max ``m``, ``exp(z - m)``, its sum, ``sum_i exp(z_i - m) (z_i - m)`` and the top-c logits
with `jax.lax.top_k`'s tie order, in one sweep over the row while it is in cache. `row_gradient`
(the backward pass): ``exp(z - m) (a - b (z - m))`` per entry with per-row ``a``, ``b``, then the
few entries per row where the top-c and label terms enter written in place.

Rows are independent, so both calls are wrapped to stay data-parallel: a `custom_partitioning`
rule lets XLA shard every leading (row) axis and keeps the class axis whole on each device (a
logits array sharded along its classes is gathered along them first), and a `custom_vmap` rule
(`custom_partitioning` has no batching rule) treats a vmapped axis as one more row axis.
"""

from __future__ import annotations

import ctypes
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

STATISTICS_TARGET = "gsc_jax_row_statistics"
GRADIENT_TARGET = "gsc_jax_row_gradient"
SYMBOLS = ("GscRowStatistics", "GscRowGradient")

_registered = False
_library = None  # the loaded library, kept referenced for the life of the process


def register(library: ctypes.CDLL) -> None:
    """Registers the library's two handlers as CPU FFI targets (once per process)."""
    global _registered, _library
    if _registered:
        return
    _library = library
    jax.ffi.register_ffi_target(
        STATISTICS_TARGET, jax.ffi.pycapsule(library.GscRowStatistics), platform="cpu"
    )
    jax.ffi.register_ffi_target(
        GRADIENT_TARGET, jax.ffi.pycapsule(library.GscRowGradient), platform="cpu"
    )
    _registered = True


def _require_registered():
    if not _registered:
        raise RuntimeError(
            "the gsc_jax CPU kernel is not enabled: call gsc_jax.cpu_kernel.enable() first."
        )


def _row_sharding(mesh, sharding, ndim):
    """``sharding``'s split of the leading (row) axes on ``mesh``, the class axis whole."""
    spec = tuple(getattr(sharding, "spec", ()))  # not a NamedSharding: rows replicated
    spec = spec + (None,) * (ndim - len(spec))
    return NamedSharding(mesh, PartitionSpec(*spec[:-1], None))


def _row_parallel(call, rule: str, num_results: int):
    """``call`` (an FFI call on arrays of rows) sharded and vmapped along its row axes.

    Args:
      call: ``f(*operands)`` on operands whose last axis is per row (classes, top-c entries or a
        single value) and whose leading axes are the rows, all with the same leading shape.
      rule: its Shardy sharding rule, e.g. ``'... c -> ... c, ... o'``; the factor ``c`` (the
        class axis) must stay whole on each device.
      num_results: how many arrays ``call`` returns (1: a single array, not a tuple).
    """

    def partition(mesh, arg_shapes, result_shape):
        sharding = _row_sharding(mesh, arg_shapes[0].sharding, len(arg_shapes[0].shape))
        results = sharding if num_results == 1 else (sharding,) * num_results
        return mesh, call, results, (sharding,) * len(arg_shapes)

    sharded = custom_partitioning(call)
    sharded.def_partition(partition, sharding_rule=rule, need_replication_factors=("c",))

    @custom_vmap
    def batched(*operands):
        return sharded(*operands)

    @batched.def_vmap
    def _vmap_rule(axis_size, in_batched, *operands):
        # The vmapped axis (first, where batched) becomes one more leading row axis.
        operands = [
            x if b else jnp.broadcast_to(x, (axis_size,) + x.shape)
            for x, b in zip(operands, in_batched)
        ]
        return batched(*operands), True if num_results == 1 else (True,) * num_results

    return batched


@functools.cache
def _statistics_call(top_c: int):
    def call(logits):
        batch = logits.shape[:-1]
        shapes = (
            jax.ShapeDtypeStruct(logits.shape, jnp.float32),
            *(jax.ShapeDtypeStruct(batch + (1,), jnp.float32) for _ in range(3)),
            jax.ShapeDtypeStruct(batch + (top_c,), jnp.float32),
            jax.ShapeDtypeStruct(batch + (top_c,), jnp.int32),
        )
        return jax.ffi.ffi_call(STATISTICS_TARGET, shapes)(logits, top_c=np.int64(top_c))

    return _row_parallel(call, "... c -> ... c, ... o, ... o, ... o, ... k, ... k", 6)


@functools.cache
def _gradient_call():
    def call(logits, exps, scale, slope, row_max, entry_indices, entries, labels, label_entries):
        result = jax.ShapeDtypeStruct(logits.shape, jnp.float32)
        return jax.ffi.ffi_call(GRADIENT_TARGET, result, input_output_aliases={1: 0})(
            logits, exps, scale, slope, row_max, entry_indices, entries, labels, label_entries
        )

    return _row_parallel(
        call, "... c, ... c, ... o, ... o, ... o, ... k, ... k, ... o, ... o -> ... c", 1
    )


def row_statistics(logits: jax.Array, top_c: int):
    """The forward kernel on float32 or bfloat16 ``[..., C]`` logits (masked entries -inf).

    Returns:
      ``(exps [..., C], row_max [..., 1], total [..., 1], weighted [..., 1],
      top_values [..., top_c], top_indices [..., top_c] int32)`` as defined in ``row_kernels.cc``.
    """
    _require_registered()
    return _statistics_call(int(top_c))(logits)


def row_gradient(
    logits, exps, scale, slope, row_max, entry_indices, entries, labels, label_entries
):
    """The backward kernel on ``[..., C]`` rows.

    Args:
      logits, exps: ``[..., C]``, float32 or bfloat16 logits; float32 ``exps`` as
        `row_statistics` returned it (its buffer is reused for the float32 result).
      scale, slope, row_max: ``[..., 1]`` per-row ``a``, ``b`` and ``m``.
      entry_indices, entries: ``[..., k]`` int32 and float32: entries written over the result.
      labels, label_entries: ``[..., 1]`` int32 and float32: added at ``labels`` afterwards.
        Indices outside ``[0, C)`` are skipped.

    Returns:
      ``[..., C]``: ``exps * (scale - slope * max(logits - row_max, -88))``, then
      ``[entry_indices] = entries``, then ``[labels] += label_entries``.
    """
    _require_registered()
    return _gradient_call()(
        logits,
        exps,
        scale,
        slope,
        row_max,
        entry_indices.astype(jnp.int32),
        entries,
        labels.astype(jnp.int32),
        label_entries,
    )
