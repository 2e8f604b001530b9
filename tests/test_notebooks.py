"""The Colab notebooks run top to bottom on CPU (smoke settings) and are committed without outputs;
their shared setup cell fails with a message, not later, when it cannot reach a checkout."""

import os
import pathlib
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
# notebook -> the least number of figures (image/png outputs) it must produce
NOTEBOOKS = {
    "gsc_anatomy.ipynb": 4,  # binary f(p); (P, N) plane; gradients (Fig. 4); top_c / mu
    "gsc_quickstart.ipynb": 3,  # data samples; training curves; reliability diagrams
}
PLACEHOLDER_URL = "https://github.com/<org>/gsc-jax"
CELL_TIMEOUT_S = 300


def test_every_colab_notebook_is_covered():
    assert sorted(p.name for p in COLAB.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_is_committed_without_outputs(name):
    nb = nbformat.read(COLAB / name, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} has outputs"
            assert cell.execution_count is None, f"cell {i} has an execution count"
            assert "execution" not in cell.metadata, f"cell {i} has timing metadata"
    # the repository URL is a constant set in one place
    assert sum(PLACEHOLDER_URL in c.source for c in nb.cells if c.cell_type == "code") == 1


def _setup_cell(name: str) -> str:
    nb = nbformat.read(COLAB / name, as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code" and "REPO_URL" in c.source)


def test_the_notebooks_share_one_setup_cell():
    assert len({_setup_cell(name) for name in NOTEBOOKS}) == 1


@pytest.mark.parametrize(
    "repo_url, message",
    [
        (PLACEHOLDER_URL, "REPO_URL is still the placeholder"),
        ("/nonexistent/gsc-jax", "git clone /nonexistent/gsc-jax failed"),
    ],
)
def test_setup_outside_a_checkout_fails_in_its_cell_with_a_message(tmp_path, repo_url, message):
    code = _setup_cell("gsc_quickstart.ipynb").replace(PLACEHOLDER_URL, repo_url)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode != 0
    assert "RuntimeError" in done.stderr and message in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "gsc-jax").exists() or repo_url != PLACEHOLDER_URL


def test_setup_inside_a_checkout_runs_from_it(tmp_path):
    code = _setup_cell("gsc_quickstart.ipynb") + "\nprint('ROOT', ROOT)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT / "colab",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"ROOT {ROOT}" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_and_draws_its_figures(name, monkeypatch):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    if name == "gsc_quickstart.ipynb":
        pytest.importorskip("flax")
        pytest.importorskip("sklearn")
        pytest.importorskip("orbax.checkpoint")
    from nbclient import NotebookClient

    monkeypatch.setenv("GSC_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    )
    nb = nbformat.read(COLAB / name, as_version=4)
    NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(ROOT)}},
    ).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    assert figures >= NOTEBOOKS[name], f"{name} drew {figures} figures"
