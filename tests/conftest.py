"""Fixtures shared by the test modules, and one XLA compilation cache for a whole pytest run.

Most of the suite's time is XLA compiling small programs, many of them more than once: the same
reference loss under each row path, the same primitives after `jax.clear_caches()`, the same
train step in a test and in the subprocess it compares with. JAX's persistent compilation cache
keys programs by their HLO and compile options, so a recompilation becomes a file read. The
cache lives in a fresh temporary folder per pytest run (it starts empty, so a run measures the
code as it is), shared by the pytest-xdist workers and the subprocesses the tests start (through
the environment), and removed at the end. A `JAX_COMPILATION_CACHE_DIR` set by the caller is
used as it is.
"""

import os
import shutil
import tempfile

_RUN_CACHE = "GSC_TEST_XLA_CACHE"  # set by the process that made the folder
_OWNS_CACHE = _RUN_CACHE not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWNS_CACHE:
    os.environ[_RUN_CACHE] = tempfile.mkdtemp(prefix="gsc_jax_test_xla_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_RUN_CACHE]
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402  (after the environment: JAX reads it at import)
import pytest  # noqa: E402


def pytest_unconfigure(config):
    del config
    if _OWNS_CACHE:
        shutil.rmtree(os.environ[_RUN_CACHE], ignore_errors=True)


@pytest.fixture(scope="module")
def fast_compile():
    """Tiny models: compile time dominates, so skip most XLA optimisations in the module.

    Use as ``pytestmark = pytest.mark.usefixtures("fast_compile")``.
    """
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
