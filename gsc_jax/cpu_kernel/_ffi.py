"""The CPU row kernels of the fused cross-entropy + GSC path: built on first use, optional.

``_cpu_kernel.cc`` holds two XLA FFI custom calls on float32 or bfloat16 rows (computing in
float32; bfloat16 needs no float32 copy of the logits). `row_statistics` (the forward
pass): per row the max ``m``, ``exp(z - m)``, its sum, ``sum_i exp(z_i - m) (z_i - m)`` and the
top-c logits with `jax.lax.top_k`'s tie order, in one sweep over the row while it is in cache.
`row_gradient` (the backward pass): ``exp(z - m) (a - b (z - m))`` per entry with per-row ``a``,
``b``, then the few entries per row where the top-c and label terms enter written in place. XLA:CPU
compiles the same work to several passes over memory (its reduction fusions do not share a pass)
or, for short rows, to dozens of small operations, which made the fused loss 2-4x the cost of
cross-entropy on CPU; see ``benchmarks/loss_overhead.py``.

The kernel is compiled once per machine with the system C++ compiler (``$CXX``, else ``c++``)
against the XLA FFI headers that ship with jaxlib (`jax.ffi.include_dir`), with
``-march=native``, into ``$GSC_JAX_CACHE_DIR`` (default ``~/.cache/gsc_jax``), keyed by a hash of
the source, the compiler command and the jaxlib version. Without a compiler, or with
``GSC_JAX_CPU_KERNEL=0`` in the environment, `available` is False and `gsc_jax._fused` computes
the same statistics with XLA operations (the path every non-CPU backend takes). A failed build
logs one warning and falls back the same way.

Rows are independent, so both calls are wrapped to stay data-parallel: a
`custom_partitioning` rule lets XLA shard every leading (row) axis and keeps the class axis whole
on each device (a logits array sharded along its classes is gathered along them first), and a
`custom_vmap` rule (`custom_partitioning` has no batching rule) treats a vmapped axis as one more
row axis.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax.custom_batching import custom_vmap
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

_SOURCE = os.path.join(os.path.dirname(__file__), "_cpu_kernel.cc")
_TARGET = "gsc_jax_row_statistics"
_GRADIENT_TARGET = "gsc_jax_row_gradient"
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fopenmp-simd",
          "-fno-math-errno", "-fno-trapping-math", "-w")
_log = logging.getLogger(__name__)


def _cache_dir() -> str:
    default = os.path.join(os.path.expanduser("~"), ".cache", "gsc_jax")
    return os.environ.get("GSC_JAX_CACHE_DIR", default)


def _build() -> str:
    """Compiles the kernel unless a build of this source, compiler and jaxlib is cached; its path."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH")
    with open(_SOURCE, "rb") as f:
        source = f.read()
    include = jax.ffi.include_dir()
    command = [compiler, *_FLAGS, "-I", include]
    key = hashlib.sha256(
        source + " ".join(command).encode() + jaxlib.__version__.encode()
    ).hexdigest()[:16]
    os.makedirs(_cache_dir(), exist_ok=True)
    library = os.path.join(_cache_dir(), f"row_statistics_{key}.so")
    if not os.path.exists(library):
        # Build beside the target and rename: concurrent processes never load a partial file.
        fd, partial = tempfile.mkstemp(suffix=".so", dir=_cache_dir())
        os.close(fd)
        try:
            subprocess.run([*command, _SOURCE, "-o", partial], check=True, capture_output=True,
                           text=True)
            os.replace(partial, library)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    return library


@functools.cache
def available() -> bool:
    """Whether the CPU kernel is built and registered (builds it on the first call)."""
    if os.environ.get("GSC_JAX_CPU_KERNEL", "1") == "0":
        return False
    try:
        library = ctypes.cdll.LoadLibrary(_build())
        jax.ffi.register_ffi_target(
            _TARGET, jax.ffi.pycapsule(library.GscRowStatistics), platform="cpu"
        )
        jax.ffi.register_ffi_target(
            _GRADIENT_TARGET, jax.ffi.pycapsule(library.GscRowGradient), platform="cpu"
        )
    except (OSError, RuntimeError, subprocess.CalledProcessError, AttributeError) as error:
        detail = getattr(error, "stderr", "") or error
        _log.warning("gsc_jax: CPU kernel unavailable, using XLA operations instead: %s",
                     str(detail)[-2000:])
        return False
    return True


def _require_kernel():
    if not available():
        raise RuntimeError("the gsc_jax CPU kernel is not available (no C++ compiler, a failed "
                           "build, or GSC_JAX_CPU_KERNEL=0); see the log's warning.")


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
        operands = [x if b else jnp.broadcast_to(x, (axis_size,) + x.shape)
                    for x, b in zip(operands, in_batched)]
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
        return jax.ffi.ffi_call(_TARGET, shapes)(logits, top_c=np.int64(top_c))

    return _row_parallel(call, "... c -> ... c, ... o, ... o, ... o, ... k, ... k", 6)


@functools.cache
def _gradient_call():
    def call(logits, exps, scale, slope, row_max, entry_indices, entries, labels, label_entries):
        result = jax.ShapeDtypeStruct(logits.shape, jnp.float32)
        return jax.ffi.ffi_call(_GRADIENT_TARGET, result, input_output_aliases={1: 0})(
            logits, exps, scale, slope, row_max, entry_indices, entries, labels, label_entries)

    return _row_parallel(call, "... c, ... c, ... o, ... o, ... o, ... k, ... k, ... o, ... o "
                               "-> ... c", 1)


def row_statistics(logits: jax.Array, top_c: int):
    """The forward kernel on float32 or bfloat16 ``[..., C]`` logits (masked entries -inf).

    Builds the kernel if needed.

    Returns:
      ``(exps [..., C], row_max [..., 1], total [..., 1], weighted [..., 1],
      top_values [..., top_c], top_indices [..., top_c] int32)`` as defined in ``_cpu_kernel.cc``.
    """
    _require_kernel()
    return _statistics_call(int(top_c))(logits)


def row_gradient(logits, exps, scale, slope, row_max, entry_indices, entries, labels,
                 label_entries):
    """The backward kernel on ``[..., C]`` rows; builds it if needed.

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
    _require_kernel()
    return _gradient_call()(logits, exps, scale, slope, row_max,
                            entry_indices.astype(jnp.int32), entries, labels.astype(jnp.int32),
                            label_entries)
