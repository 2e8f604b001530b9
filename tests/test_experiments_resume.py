"""The harness loses nothing and fails loudly: stops on any step, divergence, changed configs."""

import json
import logging
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.common import checkpoint, loop, losses
from experiments.cifar10 import train

from _experiments_util import (TinyNet, sgd, synthetic_dataset, tiny_config,
                               tiny_loop_config)

L = losses.LossSpec
WALL_CLOCK = ("epoch_time_s", "images_per_s")


pytestmark = pytest.mark.usefixtures("fast_compile")


def _dataset():
    return synthetic_dataset(n_train=24, n_test=10, size=4)  # batch 8: 3 steps per epoch


def _run(workdir, config=None, make_tx=None, dataset=None):
    return loop.train_and_evaluate(config or tiny_loop_config(), TinyNet(), make_tx or sgd(),
                                   dataset or _dataset(), str(workdir))


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK} for line in f]


def _summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    result = _run(workdir)
    assert result.status == loop.COMPLETED and int(result.state.step) == 6
    return workdir, result


def test_a_stop_on_any_step_resumes_to_the_uninterrupted_metrics(tmp_path, uninterrupted):
    # One invocation per step, each stopping after it: the stops land on every step 1..5,
    # among them 3, the last step of epoch 1, whose evaluation must still be recorded.
    workdir, full = uninterrupted
    config = tiny_loop_config(stop_after_steps=1)
    for step in range(1, 6):
        part = _run(tmp_path, config)
        assert (part.status, part.interrupted_by, int(part.state.step)) == (loop.STOPPED, 0, step)
        summary = _summary(tmp_path)
        assert summary["status"] == "stopped" and summary["step"] == step
        assert summary["test_accuracy"] is None
        assert [r["epoch"] for r in _records(tmp_path)] == [1] * (step >= 3)
    resumed = _run(tmp_path, config)
    assert resumed.status == loop.COMPLETED and _summary(tmp_path)["status"] == "completed"
    assert _records(tmp_path) == _records(workdir)
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sigterm_on_the_last_step_of_an_epoch_keeps_its_evaluation(tmp_path, monkeypatch,
                                                                    uninterrupted, caplog):
    agreed = loop.agreed_stop_signal

    def signal_at_step_3(stop, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # caught by the loop's StopOnSignal
        return agreed(stop, step)

    monkeypatch.setattr(loop, "agreed_stop_signal", signal_at_step_3)
    part = _run(tmp_path)
    monkeypatch.setattr(loop, "agreed_stop_signal", agreed)
    assert (part.status, part.interrupted_by, int(part.state.step)) == (
        loop.STOPPED, signal.SIGTERM, 3)
    assert [r["epoch"] for r in _records(tmp_path)] == [1]
    # A crash while appending that record would leave its line cut short: the resume drops the
    # torn line with a warning and evaluates the epoch again from the checkpoint.
    path = tmp_path / "metrics.jsonl"
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    with caplog.at_level(logging.WARNING):
        resumed = _run(tmp_path)
    assert "metrics.jsonl:1: dropped an incomplete last line" in caplog.text
    assert resumed.status == loop.COMPLETED
    assert _records(tmp_path) == _records(uninterrupted[0])


def test_a_diverged_run_stops_and_says_so(tmp_path):
    # lr NaN from step index 3: the 4th update makes the parameters NaN, so the 5th step's loss
    # is the first that is not finite. The loop checks at the end of epoch 2 (step 6).
    lr_fn = lambda step: jnp.where(step >= 3, jnp.nan, 0.1)  # noqa: E731
    result = _run(tmp_path, tiny_loop_config(epochs=4), make_tx=sgd(lr_fn))
    assert result.status == loop.DIVERGED and int(result.state.step) == 6
    assert "the training loss was not finite at step 5/12 (epoch 2)" in result.message
    assert "\n" not in result.message
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # valid JSON
    summary = json.loads(text)
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == 5
    for key in ("test_accuracy", "test_top5", "test_nll", "test_ece", "best_test_accuracy"):
        assert summary[key] is None, key
    assert [r["epoch"] for r in _records(tmp_path)] == [1]  # epoch 2 is not evaluated
    assert checkpoint.make_manager(str(tmp_path)).latest_step() == 3  # nor checkpointed
    again = _run(tmp_path, tiny_loop_config(epochs=4), make_tx=sgd(lr_fn))  # deterministic
    assert again.status == loop.DIVERGED and again.summary["diverged_at_step"] == 5


def test_cifar_resume_refuses_another_configuration_and_extends_epochs(tmp_path, capsys):
    ds = synthetic_dataset()  # 4 steps per epoch
    done = train.run(tiny_config(L("ce"), epochs=1), ds, str(tmp_path))
    assert done.status == loop.COMPLETED
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["run"]["loss"] == {"name": "ce"}
    refusals = [
        (dict(loss=L("focal", gsc_gamma=0.05), epochs=3),
         ["loss.name: 'ce' -> 'focal'", "loss.gsc_gamma: '(unset)' -> 0.05"]),
        (dict(batch_size=8), ["batch_size: 16 -> 8", "recipe.batch_size: 16 -> 8"]),
        (dict(seed=1), ["seed: 0 -> 1"]),
        (dict(label_noise=0.2), ["label_noise: 0.0 -> 0.2", "data.labels_sha256"]),
        (dict(num_train_examples=32), ["num_train_examples: 0 -> 32"]),
        (dict(model_overrides=(("dim", 16), ("depth", 1))), ["model_overrides.dim: 8 -> 16"]),
        (dict(learning_rate=0.1), ["recipe.learning_rate: 0.01 -> 0.1"]),
    ]
    other_source = ds._replace(source="/data/cifar10_copy")  # another --data_dir or dataset
    refusals.append(({}, ["data.source: '' -> '/data/cifar10_copy'"]))
    for n, (changes, differences) in enumerate(refusals):
        with pytest.raises(checkpoint.ConfigMismatchError) as error:
            train.run(tiny_config(**{"loss": L("ce"), "epochs": 1, **changes}),
                      other_source if n == len(refusals) - 1 else ds, str(tmp_path))
        message = str(error.value)
        assert "holds a run with another configuration" in message and "\n" not in message
        for difference in differences:
            assert difference in message, (difference, message)
    capsys.readouterr()
    longer = train.run(tiny_config(L("ce"), epochs=2), ds, str(tmp_path))
    assert longer.status == loop.COMPLETED and int(longer.state.step) == 8
    assert "from 1 to 2 epochs" in capsys.readouterr().out
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 2
    assert [r["epoch"] for r in _records(tmp_path)] == [1, 2]
    with pytest.raises(checkpoint.ConfigMismatchError, match="--epochs 1 would shorten it"):
        train.run(tiny_config(L("ce"), epochs=1), ds, str(tmp_path))


def test_checkpoints_without_a_config_are_refused(tmp_path):
    _run(tmp_path, tiny_loop_config(epochs=1))
    os.remove(tmp_path / "config.json")
    with pytest.raises(checkpoint.ConfigMismatchError, match="holds checkpoints but no config"):
        _run(tmp_path, tiny_loop_config(epochs=1))
