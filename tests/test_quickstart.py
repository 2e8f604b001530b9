"""The quickstart trains losses x seeds in one vmapped program and writes its table and figures."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tqdm import tqdm

from experiments import quickstart
from experiments.common import data, losses

pytestmark = pytest.mark.usefixtures("fast_compile")  # tiny model: compile time dominates

CALIBRATION_LOSSES = ("flsd53", "mbls", "mdca", "mmce", "dca", "poly1")


def _small_digits(n_train=512, n_test=64):
    full = data.load_digits()
    return full._replace(train_images=full.train_images[:n_train],
                         train_labels=full.train_labels[:n_train],
                         test_images=full.test_images[:n_test],
                         test_labels=full.test_labels[:n_test])


def test_train_all_and_table():
    ds = _small_digits()
    with tqdm(total=3, disable=True) as bar:
        out = quickstart.train_all(ds, num_seeds=2, epochs=3, batch_size=64,
                                   learning_rate=1e-2, bar=bar)
    assert out["count"].shape == (len(quickstart.LOSSES), 2)
    assert np.all(out["count"] == 64)
    rows = [quickstart.summarize(spec, jax.tree.map(lambda a, i=i: a[i], out))
            for i, spec in enumerate(quickstart.LOSSES)]
    assert all(0.0 <= r["accuracy"]["mean"] <= 1.0 and np.isfinite(r["nll"]["mean"]) for r in rows)
    assert np.mean([r["accuracy"]["mean"] for r in rows]) > 0.5  # learns digits in 24 steps
    table = quickstart.markdown_table(rows, "t")
    assert "| CE+GSC(0.05,2) |" in table and "±" in table


def test_selected_losses_write_every_column_and_figure(tmp_path):
    specs = quickstart.loss_specs("ce,mdca")
    assert [s.label for s in specs] == ["CE", "CE+GSC(0.05,2)", "MDCA(1)", "MDCA(1)+GSC(0.05,2)"]
    rows = quickstart.run(specs, _small_digits(256, 48), workdir=str(tmp_path), num_seeds=1,
                          epochs=2, batch_size=64, learning_rate=1e-2)
    table = (tmp_path / "table.md").read_text()
    header = table.splitlines()[2]
    for column in ("accuracy %", "ECE %", "classwise ECE %", "smooth ECE %", "NLL", "Brier",
                   "AURC %"):
        assert f"| {column} |" in header
    assert table.count("\n| ") == 1 + len(specs)  # header + one row per loss
    saved = json.loads((tmp_path / "table.json").read_text())
    assert [r["loss"] for r in saved["rows"]] == [s.label for s in specs]
    for row in saved["rows"]:
        for column in quickstart.COLUMNS:
            assert np.isfinite(row[column]["mean"]) and row[column]["std"] == 0.0, column
        for column in ("accuracy", "ece", "classwise_ece", "smooth_ece", "brier", "aurc"):
            assert 0.0 <= row[column]["mean"] <= (2.0 if column == "brier" else 1.0), column
    # Pooled over one seed, the AURC of the plotted curve is the table's.
    for row in rows:
        curve = row["risk_coverage"]
        widths = -np.diff(np.append(curve["coverage"], 0.0))
        np.testing.assert_allclose(np.sum(widths * np.asarray(curve["risk"])),
                                   row["aurc"]["mean"], atol=1e-6)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"risk_coverage.png", "reliability_ce.png", "reliability_mdca_1_gsc_0.05_2.png"} <= names


def test_loss_selection():
    assert quickstart.loss_specs("default") == quickstart.LOSSES
    every = quickstart.loss_specs("all")
    names = [s.name for s in every]
    assert set(names) == set(losses.LOSS_NAMES) - {"ols"} and len(every) == 2 * len(set(names))
    assert all(not a.uses_gsc and b.uses_gsc and a.name == b.name
               for a, b in zip(every[::2], every[1::2]))
    settings = {s.name: (s.gsc_gamma, s.gsc_top_c) for s in every if s.uses_gsc}
    assert settings["focal"] == (0.02, 3) and settings["mmce"] == (0.05, 2)
    for bad, message in (("ce,foo", "unknown loss 'foo'"), ("ols", "'ols' cannot"),
                         ("", "unknown loss ''"), ("ce,ce", "twice")):
        with pytest.raises(ValueError, match=message):
            quickstart.loss_specs(bad)


@pytest.mark.parametrize("name", CALIBRATION_LOSSES)
def test_calibration_loss_trains_through_make_objective(name):
    """Each new loss name: label and hyper-parameters, value = base + gamma * gsc_term, and a few
    gradient steps of a linear model on its objective lower it."""
    spec = losses.LossSpec(name, gsc_gamma=0.5, gsc_top_c=2)
    assert name in losses.LOSS_NAMES and spec.label.endswith("+GSC(0.5,2)")
    fixed = losses.CALIBRATION_LOSS_DEFAULTS[name]
    assert spec.hyperparameters() == {"name": name, "gsc_gamma": 0.5, "gsc_top_c": 2,
                                      **{f"{name}_{k}": v for k, v in fixed.items()}}
    x = jax.random.normal(jax.random.key(0), (32, 6))
    labels = jnp.arange(32) % 4
    objective = losses.make_objective(spec)

    @jax.jit
    def step(w):
        (loss, parts), grad = jax.value_and_grad(
            lambda w: objective(3.0 * x @ w, labels), has_aux=True)(w)
        return w - 0.5 * grad, loss, parts

    w = jax.random.normal(jax.random.key(1), (6, 4)) * 0.3
    base_loss, base_parts = losses.make_objective(losses.LossSpec(name))(3.0 * x @ w, labels)
    w, first, parts = step(w)
    assert set(parts) == {"loss", "base_loss", "gsc_term"} and set(base_parts) == {"loss",
                                                                                  "base_loss"}
    np.testing.assert_allclose(parts["base_loss"], base_loss, rtol=1e-5)  # the loss without GSC
    np.testing.assert_allclose(parts["base_loss"] + 0.5 * parts["gsc_term"], first, rtol=1e-5)
    assert 0.5 * parts["gsc_term"] > 1e-3  # the sum above sees the GSC part
    for _ in range(8):
        w, loss, _ = step(w)
    assert np.isfinite(loss) and loss < first
