"""Bad input fails before training with a message that says what to do."""

import re

import numpy as np
import pytest
from _experiments_util import load_config
from _experiments_util import run_module
from _experiments_util import synthetic_dataset
from _experiments_util import tiny_cifar_config
from _experiments_util import write_npz

from experiments.cifar10 import task
from experiments.common import loop
from experiments.common.data import DataError
from experiments.common.data import memory

pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"model__name": "vgg16"},
            "config.model.name must be one of alexnet, convmixer, got 'vgg16'",
        ),
        (
            {"loss__name": "mse"},
            "config.loss.name: unknown loss 'mse'; choose one of ce, entropy, focal, ls, ols",
        ),
        (
            {"loss__gsc__gamma": 0.1, "loss__gsc__top_c": 11},
            "config.loss.gsc.top_c must be in [1, num_classes=10], got 11",
        ),
        (
            {"loss__gsc__gamma": 0.1, "loss__gsc__top_c": 0},
            "config.loss.gsc.top_c must be in [1, num_classes=10], got 0",
        ),
        (
            {"loss__gsc__gamma": -0.05},
            "config.loss.gsc.gamma must be a finite number >= 0 (0 turns GSC off)",
        ),
        ({"loss__name": "mdca", "loss__mdca__beta": -1.0}, "config.loss.mdca: `beta` must be"),
        ({"data__label_noise": 1.0}, "config.data.label_noise must be in [0, 1), got 1.0"),
        ({"data__label_noise": -0.2}, "config.data.label_noise must be in [0, 1), got -0.2"),
        ({"epochs": 0}, "config.epochs must be a positive integer"),
        (
            {"data__num_train_examples": -1},
            "config.data.num_train_examples must be an integer >= 0",
        ),
        ({"data__num_eval_examples": -1}, "config.data.num_eval_examples must be an integer >= 0"),
        ({"optimizer__name": "rmsprop"}, "config.optimizer.name must be one of sgd, adam, adamw"),
        ({"evals": {}}, "config.evals is empty"),
        ({"plateau__factor": 0.5}, "config.plateau.metric 'val/top1' names no evaluator"),
        ({"task": "experiments.nope"}, "config.task 'experiments.nope' cannot be imported"),
    ],
)
def test_bad_config_raises_before_training(changes, message, tmp_path):
    config = tiny_cifar_config(write_npz(tmp_path), **changes)
    with pytest.raises(ValueError, match=re.escape(message)):
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # failed before anything was written or trained


def test_top_c_checked_against_the_dataset_classes(tmp_path):
    npz = write_npz(tmp_path, synthetic_dataset(num_classes=3))
    config = tiny_cifar_config(npz, loss__gsc__gamma=0.1, loss__gsc__top_c=4)
    with pytest.raises(ValueError, match=re.escape("num_classes=3")):
        loop.train_and_evaluate(config, str(tmp_path / "run"))


def test_missing_data_dir(tmp_path):
    config = load_config("cifar10", "convmixer", data__data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="does not exist. Extract the data first"):
        task.make_source(config)


@pytest.mark.parametrize(
    "layout, message",
    [
        ((), "has no 'train' folder"),
        (("train/cat",), "class folders without images"),
        (
            ("train/cat/a.png", "test/x.png"),
            "has no class folders; expected the image-folder layout",
        ),
        (
            ("train/cat/a.png", "test/dog/b.png"),
            r"differ from the training split's: missing \['cat'\], extra \['dog'\]",
        ),
    ],
)
def test_data_dir_without_image_folder_layout(tmp_path, layout, message):
    for rel in layout:
        path = tmp_path / rel
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
        else:
            path.mkdir(parents=True)
    with pytest.raises(DataError, match=message):
        memory.check_image_folder(str(tmp_path))


def test_no_network_and_no_data_dir(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(memory, "network_available", lambda *a, **k: False)
    config = load_config("cifar10", "convmixer", data__tfds_data_dir=str(tmp_path / "empty"))
    with pytest.raises(
        DataError,
        match="pass --config.data.data_dir DIR with the image-folder layout DIR/train/<class>",
    ):
        task.make_source(config)


@pytest.mark.slow
def test_cli_reports_bad_flags_without_traceback(tmp_path):
    proc = run_module(
        [
            "experiments.cifar10",
            "--workdir",
            str(tmp_path / "w"),
            "--config.data.data_dir",
            str(tmp_path / "missing"),
            "--config.loss.gsc.gamma",
            "0.1",
        ]
    )
    assert proc.returncode != 0
    assert "error: --config.data.data_dir" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_cli_reports_an_image_of_another_size_in_one_line(tmp_path):
    # Each kind of unreadable image raises DataError (tests/test_experiments_data.py); the CLI
    # turns any DataError of the loader into one line, before anything is trained.
    from PIL import Image  # pylint: disable=g-import-not-at-top

    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "d" / split / cls).mkdir(parents=True)
            Image.fromarray(np.full((6, 6, 3), 9, np.uint8)).save(
                tmp_path / "d" / split / cls / "0.png"
            )
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "d/train/b/0.png")
    proc = run_module(
        [
            "experiments.cifar10",
            "--workdir",
            str(tmp_path / "w"),
            "--config.data.data_dir",
            str(tmp_path / "d"),
        ]
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert re.fullmatch(
        r"error: the images in '.*/train' have different sizes: 6x6 \(a/0.png\), "
        r"4x4 \(b/0.png\); resize them to one size first.",
        proc.stderr.strip().splitlines()[-1],
    )
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_num_eval_examples_takes_the_first_test_images(tmp_path):
    dataset = synthetic_dataset()
    config = tiny_cifar_config(write_npz(tmp_path, dataset), data__num_eval_examples=3)
    subset, _ = memory.prepare(dataset, config.data)
    assert len(subset.test_labels) == 3
    assert (subset.test_images == dataset.test_images[:3]).all()
    assert len(subset.train_labels) == len(dataset.train_labels)
    source = task.make_source(config)  # the task applies it
    assert source.info()["num_test_examples"] == 3
