"""Every loss trains a tiny model end to end; checkpoint-resume is exact; outputs are written."""

import json
import os
import signal

import gsc_jax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.common import checkpoint, losses
from experiments.cifar10 import train

from _experiments_util import synthetic_dataset, tiny_config

L = losses.LossSpec


pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.mark.parametrize("spec", [
    L("ce"), L("entropy"), L("focal"), L("ls"), L("ols"),
    L("focal", gsc_gamma=0.02, gsc_top_c=3),
], ids=lambda s: s.label)
def test_each_loss_trains_one_epoch(spec, tmp_path):
    ds = synthetic_dataset()
    result = train.run(tiny_config(spec, epochs=1), ds, str(tmp_path))
    s = result.summary
    assert result.interrupted_by is None
    for key in ("test_accuracy", "test_ece", "test_nll"):
        assert np.isfinite(s[key])
    assert 0.0 <= s["test_accuracy"] <= 1.0 and 0.0 <= s["test_ece"] <= 1.0
    (record,) = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert set(record) >= {"epoch", "train_loss", "test_top1", "test_top5", "test_nll",
                           "test_ece", "learning_rate", "epoch_time_s"}
    assert np.isfinite(record["train_loss"])
    assert _tensorboard_scalars(tmp_path / "tensorboard") >= {"train_loss", "test_top1", "test_ece"}
    if spec.name == "ols":  # finalised once at the end of the epoch: rows are distributions
        np.testing.assert_allclose(np.asarray(result.state.ols.soft_labels).sum(-1), 1.0,
                                   atol=1e-5)


def test_alexnet_step_and_outputs(tmp_path):
    ds = synthetic_dataset(n_train=32, n_test=12, size=32)
    config = tiny_config(L("ce", gsc_gamma=0.05, gsc_top_c=2), model="alexnet", epochs=1,
                         model_overrides=())
    s = train.run(config, ds, str(tmp_path)).summary
    assert s["model"] == "alexnet" and np.isfinite(s["test_nll"])
    for name in ("summary.json", "metrics.jsonl", "curves.png", "reliability.png",
                 "risk_coverage.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert 0 <= s["test_aurc"] <= 1 and s["risk_coverage"]["coverage"][0] == 1.0
    assert json.load(open(tmp_path / "summary.json"))["test_accuracy"] == s["test_accuracy"]


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    ds = synthetic_dataset()  # 64 images / batch 16 = 4 steps per epoch, 2 epochs
    spec = L("ols", gsc_gamma=0.05, gsc_top_c=2)  # OLS state must survive the restart too
    full = train.run(tiny_config(spec), ds, str(tmp_path / "full"))
    part = train.run(tiny_config(spec, stop_after_steps=3), ds, str(tmp_path / "resumed"))
    assert part.interrupted_by == 0 and int(part.state.step) == 3
    resumed = train.run(tiny_config(spec), ds, str(tmp_path / "resumed"))
    assert int(resumed.state.step) == int(full.state.step) == 8
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    records = [[json.loads(x) for x in open(tmp_path / d / "metrics.jsonl")]
               for d in ("full", "resumed")]
    assert [r["test_nll"] for r in records[0]] == [r["test_nll"] for r in records[1]]
    assert [r["train_loss"] for r in records[0]] == [r["train_loss"] for r in records[1]]


def test_sigterm_sets_stop_request_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with checkpoint.StopOnSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_loss_parts_add_up_to_the_trained_loss(name):
    logits = jax.random.normal(jax.random.key(0), (6, 10)) * 3.0
    labels = jnp.arange(6) % 10
    soft = gsc_jax.ols_init(10).soft_labels
    spec = L(name, gsc_gamma=0.5, gsc_top_c=3)
    parts = losses.make_loss_parts_fn(spec)(logits, labels, soft)
    assert set(parts) == {"base_loss", "gsc_term"}
    total = losses.make_loss_fn(spec)(logits, labels, soft)
    np.testing.assert_allclose(parts["base_loss"] + 0.5 * parts["gsc_term"], total, rtol=1e-5,
                               atol=1e-6)
    assert np.all(np.abs(0.5 * parts["gsc_term"]) > 1e-3)  # the check above sees the GSC part
    off = L(name)  # gamma 0: the base loss is the loss, and no GSC term
    parts = losses.make_loss_parts_fn(off)(logits, labels, soft)
    assert set(parts) == {"base_loss"}
    np.testing.assert_allclose(parts["base_loss"], losses.make_loss_fn(off)(logits, labels, soft),
                               rtol=1e-6)


def _records(workdir):
    return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


@pytest.mark.parametrize("spec", [L("ce", gsc_gamma=0.5, gsc_top_c=2),  # fused CE+GSC
                                  L("ls", gsc_gamma=0.5, gsc_top_c=3)],  # base + gsc_term
                         ids=lambda s: s.label)
def test_metrics_log_base_loss_and_gsc_term(spec, tmp_path):
    train.run(tiny_config(spec), synthetic_dataset(), str(tmp_path))
    records = _records(tmp_path)
    assert len(records) == 2
    for r in records:
        gsc_part = spec.gsc_gamma * r["train_gsc_term"]
        assert gsc_part > 1e-2  # large against the tolerance below: the sum tests something
        np.testing.assert_allclose(r["train_base_loss"] + gsc_part, r["train_loss"], rtol=1e-5)


def test_metrics_without_gsc_log_base_loss_only(tmp_path):
    train.run(tiny_config(L("focal")), synthetic_dataset(), str(tmp_path))
    for r in _records(tmp_path):
        assert "train_gsc_term" not in r
        assert r["train_base_loss"] == pytest.approx(r["train_loss"], rel=1e-6)


def test_loss_spec_decides_gsc_and_the_objective_logs_its_parts():
    logits = jax.random.normal(jax.random.key(1), (5, 7)) * 2.0
    labels = jnp.arange(5) % 7
    off, on = L("focal", gsc_gamma=0.0, gsc_top_c=3), L("focal", gsc_gamma=0.3, gsc_top_c=3)
    assert (off.uses_gsc, on.uses_gsc) == (False, True)
    assert "GSC" not in off.label and on.label == "Focal(2)+GSC(0.3,3)"
    assert off.hyperparameters() == {"name": "focal", "focal_eta": 2.0}
    assert on.hyperparameters() == {"name": "focal", "focal_eta": 2.0, "gsc_gamma": 0.3,
                                    "gsc_top_c": 3}
    term = jnp.mean(gsc_jax.gsc_term(logits, top_c=3))
    for spec, with_term, keys in ((off, None, {"loss", "base_loss"}),
                                  (off, True, {"loss", "base_loss", "gsc_term"}),
                                  (on, None, {"loss", "base_loss", "gsc_term"})):
        objective = losses.make_objective(spec, with_gsc_term=with_term)
        (loss, parts), grad = jax.value_and_grad(objective, has_aux=True)(logits, labels)
        assert set(parts) == keys
        want = jnp.mean(losses.make_loss_fn(spec)(logits, labels))
        np.testing.assert_allclose(loss, want, rtol=1e-6)
        # The logged parts do not enter the gradient: it is the loss's alone.
        np.testing.assert_allclose(grad, jax.grad(lambda z: jnp.mean(
            losses.make_loss_fn(spec)(z, labels)))(logits), rtol=1e-5, atol=1e-7)
        if "gsc_term" in keys:
            np.testing.assert_allclose(parts["gsc_term"], term, rtol=1e-5)
            np.testing.assert_allclose(parts["base_loss"] + spec.gsc_gamma * parts["gsc_term"],
                                       loss, rtol=1e-5)


def _tensorboard_scalars(logdir) -> set:
    """The scalar tags written to the TensorBoard event files in `logdir`."""
    from tensorboard.backend.event_processing import event_accumulator
    events = event_accumulator.EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    events.Reload()
    return set(events.Tags()["tensors"])


def test_poly1_follows_the_label_rule():
    """Poly-1 (optax on one-hot labels) reads -1 as the last class and gives NaN, value and
    gradient, for an id outside [-K, K), as every library loss does."""
    loss_fn = losses.make_loss_fn(L("poly1"))
    logits = jax.random.normal(jax.random.key(0), (3, 5))
    np.testing.assert_allclose(loss_fn(logits, jnp.array([0, -1, 2])),
                               loss_fn(logits, jnp.array([0, 4, 2])), rtol=1e-6)
    grads = jax.grad(lambda z: loss_fn(z, jnp.array([0, 5, 2])).sum())(logits)
    assert np.isnan(loss_fn(logits, jnp.array([0, 5, 2]))[1])
    assert np.all(np.isnan(grads[1])) and np.all(np.isfinite(np.asarray(grads)[[0, 2]]))
