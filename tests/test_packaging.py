"""The release artefacts: `python -m build` makes a wheel and an sdist; the wheel installs the
library only (experiments/ and benchmarks/ run from a checkout) and works from its install."""

import os
import pathlib
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import jax.numpy as jnp
import pytest

import gsc_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, pathlib.Path]:
    """The wheel and the sdist that `python -m build` makes from this checkout."""
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, (build.stdout + build.stderr)[-5000:]
    (wheel,) = out.glob("gsc_jax-*.whl")
    (sdist,) = out.glob("gsc_jax-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


@pytest.fixture(scope="module")
def wheel_names(dist) -> list[str]:
    with zipfile.ZipFile(dist["wheel"]) as archive:
        return archive.namelist()


def test_wheel_holds_only_the_gsc_jax_package(wheel_names):
    top_level = {name.split("/")[0] for name in wheel_names}
    packages = {name for name in top_level if not name.endswith(".dist-info")}
    assert packages == {"gsc_jax"}, sorted(top_level)


def test_wheel_ships_every_library_file(wheel_names):
    """Every module, the optional CPU kernel's C++ source (compiled on opt-in) and py.typed."""
    modules = {
        p.relative_to(ROOT).as_posix()
        for pattern in ("*.py", "*.cc", "py.typed")
        for p in (ROOT / "gsc_jax").rglob(pattern)
    }
    assert "gsc_jax/py.typed" in modules
    assert modules <= set(wheel_names), sorted(modules - set(wheel_names))


def test_metadata_has_the_version_and_the_spdx_license(dist, wheel_names):
    assert dist["wheel"].name.startswith(f"gsc_jax-{gsc_jax.__version__}-")
    assert dist["sdist"].name == f"gsc_jax-{gsc_jax.__version__}.tar.gz"
    info = f"gsc_jax-{gsc_jax.__version__}.dist-info"
    assert f"{info}/licenses/LICENSE" in wheel_names
    with zipfile.ZipFile(dist["wheel"]) as archive:
        metadata = archive.read(f"{info}/METADATA").decode()
    assert f"Version: {gsc_jax.__version__}\n" in metadata
    assert "License-Expression: Apache-2.0\n" in metadata
    assert "License-File: LICENSE\n" in metadata


def test_sdist_holds_the_sources_the_license_and_the_changelog(dist):
    with tarfile.open(dist["sdist"]) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        "gsc_jax/__init__.py",
        "gsc_jax/py.typed",
        "gsc_jax/cpu_kernel/row_kernels.cc",
    } <= names, sorted(names)
    # The tests import experiments/, which is not packaged: they run from a clone.
    assert not any(name.startswith(("tests/", "experiments/", "benchmarks/")) for name in names)


def test_the_installed_wheel_imports_and_computes_a_loss(dist, tmp_path):
    """The wheel, installed with --no-deps into a fresh venv that sees this environment's
    packages (jax, optax) through a .pth file, imports from the venv, not from the checkout."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The dependencies come from the environment running this test; a path listed in a .pth file
    # is appended after the venv's own site-packages, and the .pth files in it (this
    # environment's editable install of gsc_jax among them) are not processed.
    here = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    (pathlib.Path(purelib) / "_test_dependencies.pth").write_text("\n".join(sorted(here)) + "\n")
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(dist["wheel"]),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    script = (
        "import pathlib, jax.numpy as jnp, gsc_jax\n"
        "print(pathlib.Path(gsc_jax.__file__).resolve())\n"
        "print(gsc_jax.__version__)\n"
        "logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])\n"
        "print(float(gsc_jax.gsc_loss(logits, jnp.array([0, 2]), gamma=0.05, top_c=2).mean()))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    run = subprocess.run(
        [str(python), "-I", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    location, version, loss = run.stdout.split()
    assert pathlib.Path(location).is_relative_to(venv.resolve()), location
    assert not pathlib.Path(location).is_relative_to(ROOT), location
    assert version == gsc_jax.__version__
    expected = gsc_jax.gsc_loss(
        jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]]), jnp.array([0, 2]), gamma=0.05, top_c=2
    ).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
