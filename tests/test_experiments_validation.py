"""Bad input fails before training with a message that says what to do."""

import dataclasses
import re

import numpy as np
import pytest

from experiments.common import data, losses
from experiments.cifar10 import train

from _experiments_util import run_module, synthetic_dataset, tiny_config

L = losses.LossSpec


@pytest.mark.parametrize("changes, message", [
    ({"model": "vgg16"}, "unknown --model 'vgg16'; choose one of alexnet, convmixer"),
    ({"loss": L("mse")}, "unknown loss 'mse'; choose one of ce, entropy, focal, ls, ols"),
    ({"loss": L("ce", gsc_gamma=0.1, gsc_top_c=11)}, "gsc_top_c must be in [1, num_classes=10]"),
    ({"loss": L("ce", gsc_gamma=0.1, gsc_top_c=0)}, "gsc_top_c must be in [1, num_classes=10]"),
    ({"loss": L("ce", gsc_gamma=-0.05)}, "gsc_gamma must be >= 0 (0 turns GSC off)"),
    ({"label_noise": 1.0}, "--label_noise must be in [0, 1), got 1.0"),
    ({"label_noise": -0.2}, "--label_noise must be in [0, 1), got -0.2"),
    ({"epochs": 0}, "--epochs must be positive"),
    ({"num_train_examples": -1}, "--num_train_examples must be >= 0"),
    ({"num_test_examples": -1}, "--num_test_examples must be >= 0"),
])
def test_bad_config_raises_before_training(changes, message, tmp_path):
    config = dataclasses.replace(tiny_config(), **changes)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        train.validate(config)
    with pytest.raises(ValueError):
        train.run(config, synthetic_dataset(), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()  # failed before anything was trained


def test_top_c_checked_against_the_dataset_classes(tmp_path):
    config = tiny_config(L("ce", gsc_gamma=0.1, gsc_top_c=4))
    with pytest.raises(ValueError, match="num_classes=3"):
        train.run(config, synthetic_dataset(num_classes=3), str(tmp_path))


def test_missing_data_dir(tmp_path):
    with pytest.raises(data.DataError, match="does not exist. Extract the data first"):
        train.check_data_source(str(tmp_path / "nowhere"), None)


@pytest.mark.parametrize("layout, message", [
    ((), "has no 'train' folder"),
    (("train/cat",), "class folders without images"),
    (("train/cat/a.png", "test/x.png"), "has no class sub-folders"),
    (("train/cat/a.png", "test/dog/b.png"), "train and test class folders differ"),
])
def test_data_dir_without_image_folder_layout(tmp_path, layout, message):
    for rel in layout:
        path = tmp_path / rel
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
        else:
            path.mkdir(parents=True)
    with pytest.raises(data.DataError, match=message):
        data.check_image_folder(str(tmp_path))


def test_no_network_and_no_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "network_available", lambda *a, **k: False)
    with pytest.raises(data.DataError,
                       match="pass --data_dir DIR with the image-folder layout DIR/train/<class>"):
        train.check_data_source(None, str(tmp_path / "empty_tfds"))


def test_cli_reports_bad_flags_without_traceback(tmp_path):
    proc = run_module(["experiments.cifar10", "--workdir", str(tmp_path / "w"), "--data_dir",
                       str(tmp_path / "missing"), "--gsc_gamma", "0.1"])
    assert proc.returncode != 0
    assert "error: --data_dir" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()


def test_cli_reports_an_image_of_another_size_in_one_line(tmp_path):
    # Each kind of unreadable image raises DataError (tests/test_experiments_data.py); the CLI
    # turns any DataError of the loader into one line, before anything is trained.
    from PIL import Image  # pylint: disable=g-import-not-at-top
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "d" / split / cls).mkdir(parents=True)
            Image.fromarray(np.full((6, 6, 3), 9, np.uint8)).save(
                tmp_path / "d" / split / cls / "0.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "d/train/b/0.png")
    proc = run_module(["experiments.cifar10", "--workdir", str(tmp_path / "w"), "--data_dir",
                       str(tmp_path / "d")])
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert re.fullmatch(r"error: the images in '.*/train' have different sizes: 6x6 \(a/0.png\), "
                        r"4x4 \(b/0.png\); resize them to one size first.",
                        proc.stderr.strip().splitlines()[-1])
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_num_test_examples_takes_the_first_test_images():
    dataset = synthetic_dataset()
    config = dataclasses.replace(tiny_config(), num_test_examples=3)
    subset = train.prepare_data(dataset, config)
    assert len(subset.test_labels) == 3
    assert (subset.test_images == dataset.test_images[:3]).all()
    assert len(subset.train_labels) == len(dataset.train_labels)
