"""The harness loses nothing and fails loudly: stops on any step, divergence, changed configs."""

import json
import logging
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _experiments_util import synthetic_dataset
from _experiments_util import tiny_cifar_config
from _experiments_util import tiny_digits_config
from _experiments_util import write_npz

from experiments.common import checkpoint
from experiments.common import loop
from experiments.common import optim

WALL_CLOCK = ("epoch_time_s", "images_per_s")


pytestmark = [pytest.mark.usefixtures("fast_compile"), pytest.mark.slow]


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    # batch 8: 3 steps per epoch, 2 epochs
    return write_npz(
        tmp_path_factory.mktemp("data"), synthetic_dataset(n_train=24, n_test=10, size=4)
    )


def _run(workdir, config):
    return loop.train_and_evaluate(config, str(workdir))


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK} for line in f]


def _summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, npz):
    workdir = tmp_path_factory.mktemp("full")
    result = _run(workdir, tiny_digits_config(npz))
    assert result.status == loop.COMPLETED and int(result.state.step) == 6
    return workdir, result


def test_a_stop_on_any_step_resumes_to_the_uninterrupted_metrics(tmp_path, npz, uninterrupted):
    # One invocation per step, each stopping after it: the stops land on every step 1..5,
    # among them 3, the last step of epoch 1, whose evaluation must still be recorded.
    workdir, full = uninterrupted
    config = tiny_digits_config(npz, run__stop_after_steps=1)
    for step in range(1, 6):
        part = _run(tmp_path, config)
        assert (part.status, part.interrupted_by, int(part.state.step)) == (loop.STOPPED, 0, step)
        summary = _summary(tmp_path)
        assert summary["status"] == "stopped" and summary["step"] == step
        # A stopped run reports the last evaluated epoch, none before the first epoch ends.
        assert summary.get("evaluated_epoch") == (1 if step >= 3 else None)
        assert ("test/top1" in summary) == (step >= 3)
        assert [r["epoch"] for r in _records(tmp_path)] == [1] * (step >= 3)
    resumed = _run(tmp_path, config)
    assert resumed.status == loop.COMPLETED and _summary(tmp_path)["status"] == "completed"
    assert _records(tmp_path) == _records(workdir)
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sigterm_on_the_last_step_of_an_epoch_keeps_its_evaluation(
    tmp_path, monkeypatch, npz, uninterrupted, caplog
):
    agreed = loop.agreed_stop_signal

    def signal_at_step_3(stop, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # caught by the loop's StopOnSignal
        return agreed(stop, step)

    monkeypatch.setattr(loop, "agreed_stop_signal", signal_at_step_3)
    part = _run(tmp_path, tiny_digits_config(npz))
    monkeypatch.setattr(loop, "agreed_stop_signal", agreed)
    assert (part.status, part.interrupted_by, int(part.state.step)) == (
        loop.STOPPED,
        signal.SIGTERM,
        3,
    )
    assert [r["epoch"] for r in _records(tmp_path)] == [1]
    # A crash while appending that record would leave its line cut short: the resume drops the
    # torn line with a warning and evaluates the epoch again from the checkpoint.
    path = tmp_path / "metrics.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with caplog.at_level(logging.WARNING):
        resumed = _run(tmp_path, tiny_digits_config(npz))
    assert "metrics.jsonl:1: dropped an incomplete last line" in caplog.text
    assert resumed.status == loop.COMPLETED
    assert _records(tmp_path) == _records(uninterrupted[0])


def test_a_diverged_run_stops_and_says_so(tmp_path, monkeypatch, npz):
    # lr NaN from step index 3: the 4th update makes the parameters NaN, so the 5th step's loss
    # is the first that is not finite. The loop checks at the end of epoch 2 (step 6).
    lr_fn = lambda step: jnp.where(step >= 3, jnp.nan, 0.1)  # noqa: E731
    monkeypatch.setattr(
        optim, "make", lambda config, steps_per_epoch: (optax.sgd(lr_fn, momentum=0.9), lr_fn)
    )
    config = tiny_digits_config(npz, epochs=4)
    result = _run(tmp_path, config)
    assert result.status == loop.DIVERGED and int(result.state.step) == 6
    assert "the training loss was not finite at step 5/12 (epoch 2)" in result.message
    assert "\n" not in result.message
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # valid JSON
    summary = json.loads(text)
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == 5
    assert not [k for k in summary if k.startswith("test/")]  # nothing evaluated is reported
    assert [r["epoch"] for r in _records(tmp_path)] == [1]  # epoch 2 is not evaluated
    assert checkpoint.make_manager(str(tmp_path)).latest_step() == 3  # nor checkpointed
    again = _run(tmp_path, config)  # deterministic
    assert again.status == loop.DIVERGED and again.summary["diverged_at_step"] == 5


def test_cifar_resume_refuses_another_configuration_and_extends_epochs(tmp_path, capsys):
    npz = write_npz(tmp_path)  # 4 steps per epoch
    workdir = str(tmp_path / "run")
    done = loop.train_and_evaluate(tiny_cifar_config(npz, epochs=1), workdir)
    assert done.status == loop.COMPLETED
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["epochs"] == 1 and saved["run"]["config"]["loss"]["name"] == "ce"
    assert "epochs" not in saved["run"]["config"]  # resumable: may grow
    copy = write_npz(tmp_path, name="copy.npz")  # the same arrays in another file
    refusals = [
        (
            dict(loss__name="focal", loss__gsc__gamma=0.05, epochs=3),
            ["config.loss.name: 'ce' -> 'focal'", "config.loss.gsc.gamma: 0.0 -> 0.05"],
        ),
        (dict(batch_size=8), ["config.batch_size: 16 -> 8"]),
        (dict(seed=1), ["config.seed: 0 -> 1"]),
        (
            dict(data__label_noise=0.2),
            ["config.data.label_noise: 0.0 -> 0.2", "data.labels_sha256"],
        ),
        (
            dict(data__num_train_examples=32),
            ["config.data.num_train_examples: 0 -> 32", "data.num_train_examples: 64 -> 32"],
        ),
        (dict(model__dim=16), ["config.model.dim: 8 -> 16"]),
        (dict(optimizer__learning_rate=0.1), ["config.optimizer.learning_rate: 0.01 -> 0.1"]),
        (dict(data__npz=copy), ["config.data.npz", "data.source: 'npz:"]),
    ]
    for changes, differences in refusals:
        with pytest.raises(checkpoint.ConfigMismatchError) as error:
            loop.train_and_evaluate(tiny_cifar_config(npz, **{"epochs": 1, **changes}), workdir)
        message = str(error.value)
        assert "holds a run with another configuration" in message and "\n" not in message
        for difference in differences:
            assert difference in message, (difference, message)
    capsys.readouterr()
    longer = loop.train_and_evaluate(tiny_cifar_config(npz, epochs=2), workdir)
    assert longer.status == loop.COMPLETED and int(longer.state.step) == 8
    assert "from 1 to 2 epochs" in capsys.readouterr().out
    assert json.load(open(os.path.join(workdir, "config.json")))["epochs"] == 2
    assert [r["epoch"] for r in _records(workdir)] == [1, 2]
    with pytest.raises(checkpoint.ConfigMismatchError, match="--epochs 1 would shorten it"):
        loop.train_and_evaluate(tiny_cifar_config(npz, epochs=1), workdir)


def test_checkpoints_without_a_config_are_refused(tmp_path, npz):
    _run(tmp_path, tiny_digits_config(npz, epochs=1))
    os.remove(tmp_path / "config.json")
    with pytest.raises(checkpoint.ConfigMismatchError, match="holds checkpoints but no config"):
        _run(tmp_path, tiny_digits_config(npz, epochs=1))
