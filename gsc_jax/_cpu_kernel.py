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

The custom calls have no sharding rule: under a multi-device CPU mesh XLA all-gathers the rows
before it (correct, not data-parallel).
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


def row_statistics(logits: jax.Array, top_c: int):
    """The forward kernel on float32 or bfloat16 ``[..., C]`` logits (masked entries -inf).

    Builds the kernel if needed.

    Returns:
      ``(exps [..., C], row_max [..., 1], total [..., 1], weighted [..., 1],
      top_values [..., top_c], top_indices [..., top_c] int32)`` as defined in ``_cpu_kernel.cc``.
    """
    _require_kernel()
    batch = logits.shape[:-1]
    shapes = (
        jax.ShapeDtypeStruct(logits.shape, jnp.float32),
        *(jax.ShapeDtypeStruct(batch + (1,), jnp.float32) for _ in range(3)),
        jax.ShapeDtypeStruct(batch + (top_c,), jnp.float32),
        jax.ShapeDtypeStruct(batch + (top_c,), jnp.int32),
    )
    call = jax.ffi.ffi_call(_TARGET, shapes, vmap_method="broadcast_all")
    return call(logits, top_c=np.int64(top_c))


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
    call = jax.ffi.ffi_call(_GRADIENT_TARGET, jax.ShapeDtypeStruct(logits.shape, jnp.float32),
                            vmap_method="broadcast_all", input_output_aliases={1: 0})
    return call(logits, exps, scale, slope, row_max, entry_indices.astype(jnp.int32), entries,
                labels.astype(jnp.int32), label_entries)
