"""The documentation site builds without a warning, and its API reference covers every public name."""

import pathlib
import re
import subprocess
import sys

import pytest

import gsc_jax
from gsc_jax import cpu_kernel
from gsc_jax import metrics
from gsc_jax import plots

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _public_names(module) -> set[str]:
    """Names of a module's ``__all__``, or else its public functions and classes."""
    if hasattr(module, "__all__"):
        names = set(module.__all__)
    else:  # defined in gsc_jax (here or in a private module), not imported from jax or numpy
        names = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and (callable(value) or isinstance(value, type))
            and str(getattr(value, "__module__", "")).startswith("gsc_jax")
        }
    # Submodules have their own sections.
    return {name for name in names if not isinstance(getattr(module, name), type(gsc_jax))}


@pytest.mark.parametrize("module", [gsc_jax, metrics, plots, cpu_kernel], ids=lambda m: m.__name__)
def test_api_reference_lists_every_public_name(module):
    """docs/api.md has an autosummary entry (or a ``data`` directive for a constant), under the
    module's ``currentmodule``, for each name."""
    text = (DOCS / "api.md").read_text()
    listed, current = set(), None
    for line in text.splitlines():
        directive = re.match(r"\.\. currentmodule:: (\S+)", line.strip())
        if directive:
            current = directive.group(1)
        elif current == module.__name__:
            entry = re.fullmatch(r" {3}(\w+)|\.\. (?:auto)?data:: (\w+)", line)
            if entry:
                listed.add(entry.group(1) or entry.group(2))
    missing = _public_names(module) - listed
    assert not missing, f"not in docs/api.md under {module.__name__}: {sorted(missing)}"


@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path):
    """`python -m sphinx -W`: a docstring's broken markup or a dead cross-reference fails here."""
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(tmp_path / "html"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, (build.stdout + build.stderr)[-5000:]
    for page in (
        "index.html",
        "api.html",
        "calibration.html",
        "notebooks/gsc_quickstart.html",
        "_autosummary/gsc_jax.gsc_loss.html",
    ):
        assert (tmp_path / "html" / page).is_file(), page
