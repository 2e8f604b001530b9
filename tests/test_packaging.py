"""The wheel installs the library only: experiments/ and benchmarks/ run from a checkout."""

import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
    """The file names inside a wheel built from this checkout."""
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = out.glob("gsc_jax-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_wheel_holds_only_the_gsc_jax_package(wheel_names):
    top_level = {name.split("/")[0] for name in wheel_names}
    packages = {name for name in top_level if not name.endswith(".dist-info")}
    assert packages == {"gsc_jax"}, sorted(top_level)


def test_wheel_ships_every_library_file(wheel_names):
    """Every module, and the optional CPU kernel's C++ source, which is compiled on opt-in."""
    modules = {p.relative_to(ROOT).as_posix() for pattern in ("*.py", "*.cc")
               for p in (ROOT / "gsc_jax").rglob(pattern)}
    assert modules <= set(wheel_names), sorted(modules - set(wheel_names))
