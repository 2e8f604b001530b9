"""Optional C++ row kernels for the fused cross-entropy + GSC loss on CPU (opt-in).

By default `gsc_jax.gsc_loss`, `gsc_jax.gsc_term` and ``gsc_jax.with_gsc(gsc_jax.cross_entropy,
...)`` run XLA operations on every backend, and nothing is compiled outside XLA. On the CPU
backend, two XLA FFI custom calls (``row_kernels.cc``) can replace the fused path's row
statistics (max, exps, both sums, top-c: one sweep per row while it is in cache) and its backward
pass (one elementwise pass plus the few written entries per row), for float32 and bfloat16
logits; XLA:CPU compiles the same work to several passes over memory, or for short rows to many
small operations. Values and gradients are the same to float32 rounding (top-c indices exactly).
To opt in::

    import gsc_jax.cpu_kernel
    gsc_jax.cpu_kernel.enable()   # compiles once per machine (about 10 s), then loads the cache

`enable` compiles the kernels with the system C++ compiler (``$CXX``, else ``c++``; a command with
arguments such as ``CXX="ccache g++"`` works) with ``-march=native``, caches the library (see
`gsc_jax.cpu_kernel._build`) and loads it; it raises `BuildError` with the reason when it cannot
(no compiler, a failed or timed-out build, an unsafe cache directory), with no fallback. It applies
to functions traced afterwards: `enable` and `disable` clear JAX's compilation caches, so
already-jitted functions are traced again on their next call.

Importing this module compiles nothing.
"""

from __future__ import annotations

from typing import Optional

from gsc_jax.cpu_kernel._build import BuildError
from gsc_jax.cpu_kernel._build import DEFAULT_TIMEOUT_S

__all__ = ["BuildError", "disable", "enable", "is_enabled"]

_enabled = False


def enable(*, cache_dir: Optional[str] = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Builds (or loads from the cache) the CPU row kernels and routes the fused loss through them.

    Args:
      cache_dir: where the compiled library is cached; default ``$XDG_CACHE_HOME/gsc_jax`` or
        ``~/.cache/gsc_jax``. It must belong to the current user and be writable by nobody else.
      timeout_s: limit for each compiler run, in seconds.

    Raises:
      BuildError: no C++ compiler, a failed or timed-out build, a library that does not load, or
        an unsafe cache directory; the message says which and what to do.
    """
    global _enabled
    import jax

    from gsc_jax.cpu_kernel import _build
    from gsc_jax.cpu_kernel import _ffi

    library = _build.load(cache_dir=cache_dir, timeout_s=timeout_s, symbols=_ffi.SYMBOLS)
    _ffi.register(library)
    _enabled = True
    jax.clear_caches()


def disable() -> None:
    """Routes the fused loss back to XLA operations (for functions traced afterwards)."""
    global _enabled
    import jax

    _enabled = False
    jax.clear_caches()


def is_enabled() -> bool:
    """Whether `enable` succeeded and `disable` has not been called since."""
    return _enabled
