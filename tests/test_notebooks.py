"""The Colab notebooks run top to bottom on CPU (smoke settings) and are committed without outputs."""

import os
import pathlib

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
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    nb = nbformat.read(COLAB / name, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                   resources={"metadata": {"path": str(ROOT)}}).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    assert figures >= NOTEBOOKS[name], f"{name} drew {figures} figures"
