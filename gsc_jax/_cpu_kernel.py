"""The CPU row kernel of the fused cross-entropy + GSC path: built on first use, optional.

`row_statistics` runs ``_cpu_kernel.cc`` (an XLA FFI custom call) on float32 logits: per row the
max ``m``, ``exp(z - m)``, its sum, ``sum_i exp(z_i - m) (z_i - m)`` and the top-c logits with
`jax.lax.top_k`'s tie order, in one sweep over the row while it is in cache. XLA:CPU compiles the
same statistics to several passes over memory (its reduction fusions do not share a pass), which
made the fused loss 2-4x the cost of cross-entropy on CPU; see ``benchmarks/loss_overhead.py``.

The kernel is compiled once per machine with the system C++ compiler (``$CXX``, else ``c++``)
against the XLA FFI headers that ship with jaxlib (`jax.ffi.include_dir`), with
``-march=native``, into ``$GSC_JAX_CACHE_DIR`` (default ``~/.cache/gsc_jax``), keyed by a hash of
the source, the compiler command and the jaxlib version. Without a compiler, or with
``GSC_JAX_CPU_KERNEL=0`` in the environment, `available` is False and `gsc_jax._fused` computes
the same statistics with XLA operations (the path every non-CPU backend takes). A failed build
logs one warning and falls back the same way.

The custom call has no sharding rule: under a multi-device CPU mesh XLA all-gathers the rows
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
    except (OSError, RuntimeError, subprocess.CalledProcessError, AttributeError) as error:
        detail = getattr(error, "stderr", "") or error
        _log.warning("gsc_jax: CPU kernel unavailable, using XLA operations instead: %s",
                     str(detail)[-2000:])
        return False
    return True


def row_statistics(logits: jax.Array, top_c: int):
    """The kernel on float32 ``[..., C]`` logits (masked entries -inf); builds it if needed.

    Returns:
      ``(exps [..., C], row_max [..., 1], total [..., 1], weighted [..., 1],
      top_values [..., top_c], top_indices [..., top_c] int32)`` as defined in ``_cpu_kernel.cc``.
    """
    if not available():
        raise RuntimeError("the gsc_jax CPU kernel is not available (no C++ compiler, a failed "
                           "build, or GSC_JAX_CPU_KERNEL=0); see the log's warning.")
    batch = logits.shape[:-1]
    shapes = (
        jax.ShapeDtypeStruct(logits.shape, jnp.float32),
        *(jax.ShapeDtypeStruct(batch + (1,), jnp.float32) for _ in range(3)),
        jax.ShapeDtypeStruct(batch + (top_c,), jnp.float32),
        jax.ShapeDtypeStruct(batch + (top_c,), jnp.int32),
    )
    call = jax.ffi.ffi_call(_TARGET, shapes, vmap_method="broadcast_all")
    return call(logits, top_c=np.int64(top_c))
