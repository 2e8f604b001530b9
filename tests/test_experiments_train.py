"""Every loss trains a tiny model end to end; checkpoint-resume is exact; outputs are written."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _experiments_util import load_config
from _experiments_util import synthetic_dataset
from _experiments_util import tiny_cifar_config
from _experiments_util import write_npz

import gsc_jax
from experiments.common import checkpoint
from experiments.common import loop
from experiments.common import losses

L = losses.LossSpec


pytestmark = pytest.mark.usefixtures("fast_compile")


def _loss_overrides(spec: losses.LossSpec) -> dict:
    """The config overrides of a LossSpec's name and GSC setting."""
    return {
        "loss__name": spec.name,
        "loss__gsc__gamma": spec.gsc_gamma,
        "loss__gsc__top_c": spec.gsc_top_c,
    }


def _records(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    [
        L("ce"),
        L("entropy"),
        L("focal"),
        L("ls"),
        L("ols"),
        L("ce", gsc_gamma=0.5, gsc_top_c=2),  # fused CE+GSC
        L("ls", gsc_gamma=0.5, gsc_top_c=3),  # base + gsc_term
    ],
    ids=lambda s: s.label,
)
def test_each_loss_trains_one_epoch_and_logs_its_parts(spec, tmp_path):
    npz = write_npz(tmp_path)  # 64 images / batch 16 = 4 steps per epoch
    workdir = str(tmp_path / "run")
    result = loop.train_and_evaluate(
        tiny_cifar_config(npz, epochs=1, **_loss_overrides(spec)), workdir
    )
    s = result.summary
    assert result.status == loop.COMPLETED and result.interrupted_by is None
    assert s["loss"] == spec.label
    for key in ("test/top1", "test/ece", "test/nll"):
        assert np.isfinite(s[key])
    assert 0.0 <= s["test/top1"] <= 1.0 and 0.0 <= s["test/ece"] <= 1.0
    (record,) = _records(workdir)
    assert set(record) >= {
        "epoch",
        "train/loss",
        "train/base_loss",
        "test/top1",
        "test/top5",
        "test/nll",
        "test/ece",
        "learning_rate",
        "epoch_time_s",
    }
    assert np.isfinite(record["train/loss"])
    assert _tensorboard_scalars(os.path.join(workdir, "tensorboard")) >= {
        "train/loss",
        "test/top1",
        "test/ece",
    }
    if spec.uses_gsc:  # the logged parts add up to the trained loss
        gsc_part = spec.gsc_gamma * record["train/gsc_term"]
        assert gsc_part > 1e-2  # large against the tolerance below: the sum tests something
        np.testing.assert_allclose(
            record["train/base_loss"] + gsc_part, record["train/loss"], rtol=1e-5
        )
    else:
        assert "train/gsc_term" not in record
        assert record["train/base_loss"] == pytest.approx(record["train/loss"], rel=1e-6)
    if spec.name == "ols":  # finalised once at the end of the epoch: rows are distributions
        np.testing.assert_allclose(np.asarray(result.state.ols.soft_labels).sum(-1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_alexnet_step_and_outputs(tmp_path):
    npz = write_npz(tmp_path, synthetic_dataset(n_train=32, n_test=12, size=32))
    config = load_config(
        "cifar10",
        "alexnet",
        data__npz=npz,
        epochs=1,
        batch_size=16,
        eval_batch_size=8,
        loss__gsc__gamma=0.05,
        loss__gsc__top_c=2,
    )
    s = loop.train_and_evaluate(config, str(tmp_path)).summary
    assert s["config"]["model"]["name"] == "alexnet" and np.isfinite(s["test/nll"])
    for name in (
        "summary.json",
        "metrics.jsonl",
        "curves.png",
        "test_reliability.png",
        "test_risk_coverage.png",
    ):
        assert (tmp_path / name).stat().st_size > 0
    assert 0 <= s["test/aurc"] <= 1 and s["test/risk_coverage"]["coverage"][0] == 1.0
    assert json.load(open(tmp_path / "summary.json"))["test/top1"] == s["test/top1"]


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    npz = write_npz(tmp_path)  # 64 images / batch 16 = 4 steps per epoch, 2 epochs
    # OLS state must survive the restart too.
    loss = _loss_overrides(L("ols", gsc_gamma=0.05, gsc_top_c=2))
    full = loop.train_and_evaluate(tiny_cifar_config(npz, **loss), str(tmp_path / "full"))
    part = loop.train_and_evaluate(
        tiny_cifar_config(npz, run__stop_after_steps=3, **loss), str(tmp_path / "resumed")
    )
    assert part.status == loop.STOPPED and part.interrupted_by == 0
    assert int(part.state.step) == 3
    resumed = loop.train_and_evaluate(tiny_cifar_config(npz, **loss), str(tmp_path / "resumed"))
    assert int(resumed.state.step) == int(full.state.step) == 8
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    records = [_records(tmp_path / d) for d in ("full", "resumed")]
    assert [r["test/nll"] for r in records[0]] == [r["test/nll"] for r in records[1]]
    assert [r["train/loss"] for r in records[0]] == [r["train/loss"] for r in records[1]]


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
    loss, parts = losses.make_objective(spec)(logits, labels, soft)
    assert {"base_loss", "gsc_term"} <= set(parts)
    total = jnp.mean(losses.make_loss_fn(spec)(logits, labels, soft))
    np.testing.assert_allclose(loss, total, rtol=1e-6)
    np.testing.assert_allclose(
        parts["base_loss"] + 0.5 * parts["gsc_term"], total, rtol=1e-5, atol=1e-6
    )
    assert np.abs(0.5 * parts["gsc_term"]) > 1e-3  # the check above sees the GSC part
    off = L(name)  # gamma 0: the base loss is the loss, and no GSC term
    loss, parts = losses.make_objective(off)(logits, labels, soft)
    assert set(parts) == {"loss", "base_loss"}
    np.testing.assert_allclose(
        parts["base_loss"], jnp.mean(losses.make_loss_fn(off)(logits, labels, soft)), rtol=1e-6
    )


def test_loss_spec_decides_gsc_and_the_objective_logs_its_parts():
    logits = jax.random.normal(jax.random.key(1), (5, 7)) * 2.0
    labels = jnp.arange(5) % 7
    off, on = L("focal", gsc_gamma=0.0, gsc_top_c=3), L("focal", gsc_gamma=0.3, gsc_top_c=3)
    assert (off.uses_gsc, on.uses_gsc) == (False, True)
    assert "GSC" not in off.label and on.label == "Focal(2)+GSC(0.3,3)"
    assert off.hyperparameters() == {"name": "focal", "eta": 2.0}
    assert on.hyperparameters() == {"name": "focal", "eta": 2.0, "gsc_gamma": 0.3, "gsc_top_c": 3}
    term = jnp.mean(gsc_jax.gsc_term(logits, top_c=3))
    with_gsc = {"loss", "base_loss", "gsc_term", "gsc_weighted", "gsc_grad_ratio"}
    for spec, with_term, keys in (
        (off, None, {"loss", "base_loss"}),
        (off, True, {"loss", "base_loss", "gsc_term"}),
        (on, None, with_gsc),
    ):
        objective = losses.make_objective(spec, with_gsc_term=with_term)
        (loss, parts), grad = jax.value_and_grad(objective, has_aux=True)(logits, labels)
        assert set(parts) == keys
        want = jnp.mean(losses.make_loss_fn(spec)(logits, labels))
        np.testing.assert_allclose(loss, want, rtol=1e-6)
        # The logged parts do not enter the gradient: it is the loss's alone.
        np.testing.assert_allclose(
            grad,
            jax.grad(lambda z: jnp.mean(losses.make_loss_fn(spec)(z, labels)))(logits),
            rtol=1e-5,
            atol=1e-7,
        )
        if "gsc_term" in keys:
            np.testing.assert_allclose(parts["gsc_term"], term, rtol=1e-5)
            np.testing.assert_allclose(
                parts["base_loss"] + spec.gsc_gamma * parts["gsc_term"], loss, rtol=1e-5
            )


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
    np.testing.assert_allclose(
        loss_fn(logits, jnp.array([0, -1, 2])), loss_fn(logits, jnp.array([0, 4, 2])), rtol=1e-6
    )
    grads = jax.grad(lambda z: loss_fn(z, jnp.array([0, 5, 2])).sum())(logits)
    assert np.isnan(loss_fn(logits, jnp.array([0, 5, 2]))[1])
    assert np.all(np.isnan(grads[1])) and np.all(np.isfinite(np.asarray(grads)[[0, 2]]))
