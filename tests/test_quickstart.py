"""The quickstart trains losses x seeds as population runs and writes its table and figures."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _experiments_util import config_file
from _experiments_util import load_config

from experiments.common import config as cfg
from experiments.common import grid
from experiments.common import losses

pytestmark = pytest.mark.usefixtures("fast_compile")  # tiny model: compile time dominates

CALIBRATION_LOSSES = ("flsd53", "mbls", "mdca", "mmce", "dca", "poly1")


def _small_digits(n_train=512, n_test=64, **overrides):
    """The quickstart's config on the first digits (no progress bar, no compilation cache)."""
    return load_config(
        "quickstart",
        "default",
        data__num_train_examples=n_train,
        data__num_eval_examples=n_test,
        eval_batch_size=n_test,
        **overrides,
    )


def _grid(name="default"):
    return cfg.load(config_file("quickstart", name))[1]


def _table(workdir) -> dict:
    return grid.results_json(str(workdir), "table")


@pytest.mark.slow
def test_the_default_grid_trains_every_loss_and_seed_and_writes_the_table(tmp_path):
    config = _small_digits(epochs=3, optimizer__learning_rate=1e-2)
    text = grid.run(dataclasses.replace(_grid(), seeds=(0, 1)), config, str(tmp_path))
    saved = _table(tmp_path)
    assert len(saved["rows"]) == 6 and all(r["status"] == "completed" for r in saved["rows"])
    accuracies = []
    for row in saved["rows"]:
        summary = json.load(open(tmp_path / "table" / row["row"] / "summary.json"))
        assert summary["seeds"] == [0, 1] and summary["test/count"] == [64, 64]
        top1 = row["values"]["test/top1"]
        assert len(top1) == 2 and all(0.0 <= a <= 1.0 for a in top1)
        assert all(np.isfinite(row["values"]["test/nll"]))
        accuracies.append(np.mean(top1))
    assert np.mean(accuracies) > 0.5  # learns digits in 24 steps
    assert "| CE+GSC(0.05,2) |" in text and "±" in text


@pytest.mark.slow
def test_selected_losses_write_every_column_and_figure(tmp_path):
    g = dataclasses.replace(_grid(), rows=grid_rows(("ce", "mdca")), seeds=(0,))
    labels = ["CE", "CE+GSC(0.05,2)", "MDCA(1)", "MDCA(1)+GSC(0.05,2)"]
    grid.run(g, _small_digits(256, 48, epochs=2, optimizer__learning_rate=1e-2), str(tmp_path))
    table = (tmp_path / "table.md").read_text()
    header = table.splitlines()[4]
    for column in (
        "accuracy %",
        "ECE %",
        "classwise ECE %",
        "smooth ECE %",
        "NLL",
        "Brier",
        "AURC %",
    ):
        assert f"| {column} |" in header
    assert table.count("\n| ") == 1 + len(labels)  # header + one row per loss
    saved = _table(tmp_path)
    assert [r["method"] for r in saved["rows"]] == labels
    for row in saved["rows"]:
        for column in (c.key for c in g.columns):
            values = row["values"][column]
            assert len(values) == 1 and np.isfinite(values[0]), column
        for column in ("top1", "ece", "classwise_ece", "smooth_ece", "brier", "aurc"):
            value = row["values"][f"test/{column}"][0]
            assert 0.0 <= value <= (2.0 if column == "brier" else 1.0), column
        # Pooled over one seed, the AURC of the plotted curve is the table's.
        summary = json.load(open(tmp_path / "table" / row["row"] / "summary.json"))
        curve = summary["test/risk_coverage"]
        widths = -np.diff(np.append(curve["coverage"], 0.0))
        np.testing.assert_allclose(
            np.sum(widths * np.asarray(curve["risk"])), row["values"]["test/aurc"][0], atol=1e-6
        )
        assert (tmp_path / "table" / row["row"] / "test_reliability.png").exists()
    assert (tmp_path / "risk_coverage.png").exists()


def grid_rows(base_losses):
    from experiments.quickstart.configs import default  # pylint: disable=import-outside-toplevel

    return default.rows_for(base_losses)


def test_loss_selection():
    base = load_config("quickstart", "default")

    def labels(g):
        return [
            losses.LossSpec.from_config(cfg.apply_overrides(base, r.overrides).loss).label
            for r in g.rows
        ]

    default = _grid()
    assert labels(default) == [
        "CE",
        "CE+GSC(0.05,2)",
        "CE+LS(0.1)",
        "CE+LS(0.1)+GSC(0.03,2)",
        "Focal(2)",
        "Focal(2)+GSC(0.02,3)",
    ]
    every = _grid("all_losses")
    names = [r.overrides["loss.name"] for r in every.rows]
    assert set(names) == set(losses.LOSS_NAMES) - {"ols"} and len(every.rows) == 2 * len(set(names))
    assert all(
        "loss.gsc.gamma" not in a.overrides
        and b.overrides["loss.gsc.gamma"] > 0
        and a.overrides["loss.name"] == b.overrides["loss.name"]
        for a, b in zip(every.rows[::2], every.rows[1::2])
    )
    settings = {
        r.overrides["loss.name"]: (r.overrides["loss.gsc.gamma"], r.overrides["loss.gsc.top_c"])
        for r in every.rows
        if "loss.gsc.gamma" in r.overrides
    }
    assert settings["focal"] == (0.02, 3) and settings["mmce"] == (0.05, 2)
    assert len({r.id for r in every.rows}) == len(every.rows)
    for bad in (["ce", "foo"], [""]):
        with pytest.raises(ValueError, match="unknown rows"):
            grid.check_rows(every, bad)
    assert grid.check_rows(every, []) == tuple(r.id for r in every.rows)


@pytest.mark.parametrize("name", CALIBRATION_LOSSES)
def test_calibration_loss_trains_through_make_objective(name):
    """Each calibration loss: label and hyper-parameters, value = base + gamma * gsc_term, and a
    few gradient steps of a linear model on its objective lower it."""
    spec = losses.LossSpec(name, gsc_gamma=0.5, gsc_top_c=2)
    assert name in losses.LOSS_NAMES and spec.label.endswith("+GSC(0.5,2)")
    fixed = losses.REGISTRY[name].defaults
    assert spec.hyperparameters() == {"name": name, "gsc_gamma": 0.5, "gsc_top_c": 2, **fixed}
    x = jax.random.normal(jax.random.key(0), (32, 6))
    labels = jnp.arange(32) % 4
    objective = losses.make_objective(spec)

    @jax.jit
    def step(w):
        (loss, parts), grad = jax.value_and_grad(
            lambda w: objective(3.0 * x @ w, labels), has_aux=True
        )(w)
        return w - 0.5 * grad, loss, parts

    w = jax.random.normal(jax.random.key(1), (6, 4)) * 0.3
    base_loss, base_parts = losses.make_objective(losses.LossSpec(name))(3.0 * x @ w, labels)
    w, first, parts = step(w)
    assert {"loss", "base_loss", "gsc_term"} <= set(parts) and set(base_parts) == {
        "loss",
        "base_loss",
    }
    np.testing.assert_allclose(parts["base_loss"], base_loss, rtol=1e-5)  # the loss without GSC
    np.testing.assert_allclose(parts["base_loss"] + 0.5 * parts["gsc_term"], first, rtol=1e-5)
    np.testing.assert_allclose(parts["gsc_weighted"], 0.5 * parts["gsc_term"], rtol=1e-6)
    assert 0.5 * parts["gsc_term"] > 1e-3  # the sum above sees the GSC part
    for _ in range(8):
        w, loss, _ = step(w)
    assert np.isfinite(loss) and loss < first
