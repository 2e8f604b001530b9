"""Compiling and loading the row kernels: compiler, cache directory, cache key, build, load.

Everything here runs inside `gsc_jax.cpu_kernel.enable`, never while a function is traced.

The library is compiled with the C++ compiler command in ``$CXX`` (split like a shell command
line, so ``CXX="ccache g++"`` works; default ``c++``) with ``-march=native``, against the XLA FFI
headers that ship with jaxlib (`jax.ffi.include_dir`). It is cached as
``row_kernels_<key>.so`` in the cache directory, where ``<key>`` hashes the source, the compiler
command, what ``-march=native`` resolves to on this machine (so a cache shared between different
CPUs never loads a library built for another one) and the jaxlib version. The cache directory must
belong to the current user and be writable by nobody else: a library loaded from it runs in this
process.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import uuid
from typing import Optional, Sequence

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "row_kernels.cc")
FLAGS = (
    "-O3",
    "-march=native",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-fopenmp-simd",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-w",
)
LIBRARY_MODE = 0o644
DEFAULT_TIMEOUT_S = 300.0
PROBE_TIMEOUT_S = 60.0


class BuildError(RuntimeError):
    """The CPU kernel could not be compiled or loaded; the message says why and what to do."""


def compiler_command() -> list[str]:
    """The C++ compiler command: ``$CXX`` split like a shell command line, else ``['c++']``."""
    text = os.environ.get("CXX", "").strip() or "c++"
    try:
        command = shlex.split(text)
    except ValueError as error:
        raise BuildError(f"CXX={text!r} is not a valid command line: {error}") from None
    if shutil.which(command[0]) is None:
        raise BuildError(
            f"no C++ compiler: {command[0]!r} (from "
            f"{'CXX=' + repr(text) if os.environ.get('CXX', '').strip() else 'the default c++'}) "
            "is not on PATH. Install a C++17 compiler (g++ or clang++) or set CXX to one, "
            "e.g. CXX='g++' or CXX='ccache g++'."
        )
    return command


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/gsc_jax``, else ``~/.cache/gsc_jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gsc_jax")


def prepare_cache_dir(path: str) -> str:
    """Creates ``path`` (mode 0755) if missing; refuses a directory other users could write to.

    Returns:
      The absolute path.

    Raises:
      BuildError: ``path`` is not a directory, belongs to another user, or is writable by its
        group or by other users.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        try:
            os.makedirs(path, exist_ok=True)
            os.chmod(path, 0o755)
        except OSError as error:
            raise BuildError(
                f"cannot create the kernel cache directory {path}: {error}. Pass "
                "gsc_jax.cpu_kernel.enable(cache_dir=...) a directory you can write to."
            ) from None
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise BuildError(f"the kernel cache {path} is not a directory.")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise BuildError(
            f"the kernel cache directory {path} belongs to another user (uid {info.st_uid}): a "
            "library loaded from it would run in this process. Pass "
            "gsc_jax.cpu_kernel.enable(cache_dir=...) a directory of your own."
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise BuildError(
            f"the kernel cache directory {path} is writable by other users (mode "
            f"{stat.S_IMODE(info.st_mode):o}): one of them could replace the library this process "
            f"loads. Make it private (chmod go-w {shlex.quote(path)}) or pass "
            "gsc_jax.cpu_kernel.enable(cache_dir=...) a directory only you can write to."
        )
    return path


def _run(command: Sequence[str], timeout_s: float, what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise BuildError(
            f"{what} did not finish within {timeout_s:g} s: {shlex.join(command)}. Pass a longer "
            "gsc_jax.cpu_kernel.enable(timeout_s=...) on a slow or busy machine."
        ) from None
    except OSError as error:
        raise BuildError(f"{what} could not start: {shlex.join(command)}: {error}") from None


def native_target(compiler: Sequence[str], timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """What ``-march=native`` resolves to with ``compiler`` on this machine, as the compiler says.

    GCC prints its resolved target options (``-Q --help=target``: ``-march=znver3``, each
    instruction-set extension on or off); compilers without that option (Clang) print the
    command line they would run (``-###``: ``-target-cpu``, ``-target-feature``).
    """
    probes = (
        [*compiler, "-march=native", "-Q", "--help=target"],
        [*compiler, "-march=native", "-###", "-x", "c++", "-c", os.devnull, "-o", os.devnull],
    )
    failures = []
    for probe in probes:
        result = _run(probe, timeout_s, "resolving -march=native")
        text = result.stdout + result.stderr
        if result.returncode == 0 and text.strip():
            return text
        failures.append(f"{shlex.join(probe)}: exit {result.returncode}: {text.strip()[-500:]}")
    raise BuildError("could not resolve what -march=native means here:\n" + "\n".join(failures))


def cache_key(source: bytes, command: Sequence[str], target: str, jaxlib_version: str) -> str:
    """A hash of everything the library depends on: source, compiler command, resolved
    ``-march=native`` target and jaxlib version."""
    digest = hashlib.sha256()
    for part in (source, "\0".join(command).encode(), target.encode(), jaxlib_version.encode()):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()[:24]


def compile_command(compiler: Sequence[str]) -> list[str]:
    """The compile command without its ``source -o output`` tail."""
    import jax

    return [*compiler, *FLAGS, "-I", jax.ffi.include_dir()]


def library_path(
    cache_dir: str,
    compiler: Sequence[str],
    *,
    source: str = SOURCE,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> str:
    """Where the library for ``source`` built by ``compiler`` on this machine is cached."""
    import jaxlib

    with open(source, "rb") as f:
        code = f.read()
    command = compile_command(compiler)
    key = cache_key(code, command, native_target(compiler, timeout_s), jaxlib.__version__)
    stem = os.path.splitext(os.path.basename(source))[0]
    return os.path.join(cache_dir, f"{stem}_{key}.so")


def build(source: str, library: str, command: Sequence[str], timeout_s: float) -> None:
    """Compiles ``source`` to ``library`` (mode 0644) by way of a uniquely named partial file.

    The partial file is renamed into place only once complete, so concurrent processes never
    load a partial library, and it is removed whenever the build does not complete: a compiler
    error, a timeout, an interruption (KeyboardInterrupt included).
    """
    partial = f"{library}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    full_command = [*command, source, "-o", partial]
    try:
        result = _run(full_command, timeout_s, "building the gsc_jax CPU kernel")
        if result.returncode != 0 or not os.path.isfile(partial):
            raise BuildError(
                f"building the gsc_jax CPU kernel failed (exit {result.returncode}): "
                f"{shlex.join(full_command)}\n{(result.stderr or result.stdout)[-3000:]}"
            )
        os.chmod(partial, LIBRARY_MODE)
        os.replace(partial, library)
    finally:
        if os.path.lexists(partial):
            os.remove(partial)


def _open(library: str, symbols: Sequence[str]) -> ctypes.CDLL:
    handle = ctypes.CDLL(library)
    for symbol in symbols:
        getattr(handle, symbol)  # AttributeError if missing
    return handle


def load(
    *,
    source: str = SOURCE,
    cache_dir: Optional[str] = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    symbols: Sequence[str] = (),
) -> ctypes.CDLL:
    """The compiled ``source``, built into the cache unless there; rebuilt once if it fails to load.

    Args:
      source: the C++ source.
      cache_dir: the cache directory (default `default_cache_dir`).
      timeout_s: limit for each compiler run.
      symbols: names the library must define.

    Raises:
      BuildError: no compiler, an unsafe cache directory, a failed or timed-out build, or a fresh
        build that does not load.
    """
    compiler = compiler_command()
    directory = prepare_cache_dir(cache_dir or default_cache_dir())
    library = library_path(
        directory, compiler, source=source, timeout_s=min(timeout_s, PROBE_TIMEOUT_S)
    )
    command = compile_command(compiler)
    if os.path.exists(library):
        try:
            return _open(library, symbols)
        except (OSError, AttributeError):
            # Truncated or corrupt (e.g. an interrupted copy): rebuilt below, once.
            try:
                os.remove(library)
            except FileNotFoundError:
                pass
    build(source, library, command, timeout_s)
    try:
        return _open(library, symbols)
    except (OSError, AttributeError) as error:
        raise BuildError(f"the freshly built kernel {library} does not load: {error}") from None
