"""What a new user and a hostile file hit: a stop through a closed pipe, a stale best state, folder
listings, a truncated JPEG mid-stream, a config too large for memory, the help text, the TFDS
dependency, a too-short AlexNet run. Each test reproduces the problem of the earlier code."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from _experiments_util import REPO
from _experiments_util import _env
from _experiments_util import load_config
from _experiments_util import run_module
from _experiments_util import synthetic_dataset
from _experiments_util import tiny_cifar_config
from _experiments_util import write_npz

from experiments.common import loop
from experiments.common import steps
from experiments.common.data import DataError
from experiments.common.data import folders
from experiments.common.data import memory
from experiments.common.data import stream

pytestmark = pytest.mark.usefixtures("fast_compile")


# --- a stop through a pipe that Ctrl-C closed ---------------------------------------------------


@pytest.mark.slow
def test_sigint_after_the_output_pipe_closed_still_saves_the_checkpoint(tmp_path):
    """`... 2>&1 | tee log` then Ctrl-C: tee exits first, the next progress-bar write hits a
    closed pipe. The run must still save its checkpoint and say 'stopped' in summary.json."""
    npz = write_npz(tmp_path, synthetic_dataset(n_train=256, n_test=16))
    workdir = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "experiments.cifar10",
        f"--workdir={workdir}",
        "--config",
        os.path.join(REPO, "experiments/cifar10/configs/convmixer.py"),
        f"--config.data.npz={npz}",
        "--config.model.dim=8",
        "--config.model.depth=1",
        "--config.model.kernel_size=3",
        "--config.model.patch_size=4",
        "--config.batch_size=16",
        "--config.eval_batch_size=8",
        "--config.epochs=200",
        "--config.run.compilation_cache=",
    ]
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        env=_env({"PYTHONUNBUFFERED": "1"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        seen = b""
        while b"epoch 1/200" not in seen:  # training has started and printed through the pipe
            chunk = proc.stdout.read1(4096)
            assert chunk, f"the run ended early: {seen[-3000:]!r}"
            seen += chunk
        proc.stdout.close()  # the reader of the pipe (tee) is gone
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=1200)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 128 + signal.SIGINT
    summary = json.load(open(workdir / "summary.json"))
    assert summary["status"] == loop.STOPPED
    assert summary["evaluated_epoch"] >= 1 and "test/top1" in summary
    saved = [d for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
    assert max(map(int, saved)) == summary["step"] > 16


# --- a fresh start does not inherit an earlier run's best state -----------------------------------


def _best_config(npz, **overrides):
    return tiny_cifar_config(
        npz,
        **{"best__metric": "val/top1", **overrides},
        evals={
            "val": {"type": "classification", "split": "val"},
            "test": {"type": "classification", "split": "test"},
        },
    )


@pytest.mark.slow
def test_a_fresh_start_clears_the_best_state_of_an_earlier_run(tmp_path, capsys):
    npz = write_npz(tmp_path, synthetic_dataset(n_train=32, n_test=16, n_val=16))
    workdir = str(tmp_path / "run")
    first = loop.train_and_evaluate(_best_config(npz, optimizer__learning_rate=0.05), workdir)
    assert first.summary["best/epoch"] is not None
    import shutil  # pylint: disable=import-outside-toplevel

    shutil.rmtree(os.path.join(workdir, "checkpoints"))  # "delete checkpoints/ to start over"
    # The new run never improves on epoch 1 (lr 0): its best state is its own epoch 1.
    second = loop.train_and_evaluate(
        _best_config(npz, optimizer__learning_rate=1e-12, seed=1), workdir
    )
    assert "removed" in capsys.readouterr().out
    assert second.summary["best/epoch"] == 1
    records = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    np.testing.assert_allclose(second.summary["test/top1@best"], records[0]["test/top1"])
    np.testing.assert_allclose(second.summary["val/top1@best"], records[0]["val/top1"])


# --- folder listings take names literally --------------------------------------------------------


def _png(path, value=0, size=4):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def test_a_class_named_like_a_glob_pattern_keeps_its_own_images(tmp_path):
    root = tmp_path / "data[1]"  # a data_dir whose name is a glob pattern too
    for split in ("train", "test"):
        _png(str(root / split / "a1" / "x.png"), 10)
        _png(str(root / split / "a[1]" / "y.png"), 200)
        _png(str(root / split / "a[1]" / "z.png"), 210)
    listing = folders.list_classes(str(root / "train"), layout="DIR/<class>/<image>")
    assert {k: [os.path.basename(p) for p in v] for k, v in listing.items()} == {
        "a1": ["x.png"],
        "a[1]": ["y.png", "z.png"],
    }
    ds = memory.load_image_folder(str(root), write_cache=False)
    assert ds.class_names == ("a1", "a[1]")
    assert sorted(np.bincount(ds.train_labels).tolist()) == [1, 2]
    for label, image in zip(ds.train_labels, ds.train_images):
        assert (image.mean() > 100) == (label == 1)


def test_hidden_folders_and_plain_files_are_ignored_and_empty_classes_named(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            _png(str(root / split / name / "1.png"))
    _png(str(root / "train" / ".ipynb_checkpoints" / "1.png"))  # would be class 0, shift labels
    (root / "test" / ".DS_Store").write_bytes(b"\0")
    (root / "test" / "LOC_val_solution.csv").write_text("id,label\n")
    assert memory.check_image_folder(str(root)) == ("cat", "dog")
    catalogue = stream.folder_catalogue(str(root), eval_split="test")
    assert catalogue.class_names == ("cat", "dog") and catalogue.num_train == 2
    os.makedirs(root / "train" / "emu")
    os.makedirs(root / "test" / "emu")
    with pytest.raises(DataError, match="emu"):
        memory.check_image_folder(str(root))


# --- a truncated JPEG in a streamed folder --------------------------------------------------------


def _jpeg_folder(root, n=6):
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for k in range(2):
            for i in range(n):
                path = os.path.join(root, split, f"c{k}", f"{i}.JPEG")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                Image.fromarray(rng.randint(0, 255, (24, 24, 3)).astype(np.uint8)).save(path)
    return str(root)


@pytest.mark.slow
def test_a_truncated_jpeg_mid_stream_is_named_after_a_checkpoint(tmp_path, capsys):
    folder = _jpeg_folder(tmp_path / "folder")
    bad = os.path.join(folder, "train", "c1", "3.JPEG")
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) // 3])  # truncated: found only when decoded
    config = load_config(
        "imagenet",
        "pycls",
        data__data_dir=folder,
        model__name="resnet18",
        model__width=4,
        data__image_size=16,
        epochs=2,
        batch_size=4,
        eval_batch_size=4,
    )
    workdir = str(tmp_path / "run")
    failed = loop.train_and_evaluate(config, workdir)
    assert failed.status == loop.FAILED
    assert "3.JPEG" in failed.message and "cannot decode" in failed.message
    from experiments.common import cli  # pylint: disable=import-outside-toplevel

    assert cli.exit_code(failed) == 1
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["status"] == loop.FAILED
    saved = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
    assert saved == [summary["step"]]  # the state before the failed batch
    open(bad, "wb").write(data)  # replaced: the run goes on from its checkpoint
    fixed = loop.train_and_evaluate(config, workdir)
    assert fixed.status == loop.COMPLETED
    if summary["step"]:
        assert f"Resuming from step {summary['step']}" in capsys.readouterr().out


# --- a config too large for memory is refused before it runs --------------------------------------


def test_a_train_step_that_cannot_fit_is_refused_with_the_fields_to_lower(tmp_path, monkeypatch):
    npz = write_npz(tmp_path)
    monkeypatch.setattr(steps, "available_memory_bytes", lambda device: 1024)
    with pytest.raises(ValueError, match=r"batch_size \(now 16\)"):
        loop.train_and_evaluate(tiny_cifar_config(npz), str(tmp_path / "run"))
    assert (
        not os.path.exists(tmp_path / "run" / "metrics.jsonl")
        or not open(tmp_path / "run" / "metrics.jsonl").read()
    )


# --- the help text, the resume line, a stopped run's summary ----------------------------------------


@pytest.mark.slow
def test_help_lists_the_loss_and_gsc_fields_with_their_defaults():
    done = run_module(["experiments.cifar10", "--help"])
    assert done.returncode == 0, done.stderr
    for line in (
        "--config.loss.name='ce'",
        "--config.loss.gsc.gamma=0.0",
        "--config.loss.gsc.top_c=2",
        "--config.loss.focal.eta=2.0",
        "--config.loss.ls.alpha=0.1",
        "--config.run.stop_after_steps=0",
        "--config.run.multihost=False",
        "--config.epochs=164",
    ):
        assert line in done.stdout, line
    assert "GSC strength" in done.stdout  # the field's comment
    quick = run_module(["experiments.quickstart", "--help"])
    assert (
        quick.returncode == 0 and "% s" not in quick.stdout and "--config.epochs=20" in quick.stdout
    )


@pytest.mark.slow
def test_an_unknown_field_is_refused_with_the_closest_names():
    done = run_module(["experiments.cifar10", "--workdir=/nonexistent", "--config.loss.gama=1"])
    assert done.returncode != 0 and "has no such field" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_resuming_says_where_and_a_stopped_summary_reports_the_last_evaluated_epoch(tmp_path):
    npz = write_npz(tmp_path)
    workdir = str(tmp_path / "run")
    stopped = loop.train_and_evaluate(
        tiny_cifar_config(npz, epochs=3, run__stop_after_steps=6), workdir
    )
    assert stopped.status == loop.STOPPED
    assert stopped.summary["evaluated_epoch"] == 1  # 4 steps an epoch: epoch 1 was evaluated
    records = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    assert stopped.summary["test/top1"] == records[0]["test/top1"]
    done = run_module(
        [
            "experiments",
            "--config",
            os.path.join(REPO, "experiments/cifar10/configs/convmixer.py"),
            f"--workdir={workdir}",
            f"--config.data.npz={npz}",
            "--config.model.dim=8",
            "--config.model.depth=1",
            "--config.model.kernel_size=3",
            "--config.model.patch_size=4",
            "--config.epochs=3",
            "--config.batch_size=16",
            "--config.eval_batch_size=8",
            "--config.run.progress=False",
        ]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Resuming from step 6/12 (epoch 2)" in done.stdout


# --- a shortened AlexNet run says what to pass ------------------------------------------------------


def test_a_short_alexnet_run_at_the_recipe_lr_says_what_to_pass(capsys):
    from experiments.cifar10 import task  # pylint: disable=import-outside-toplevel

    task.validate(load_config("cifar10", "alexnet", data__num_train_examples=4096, epochs=4))
    assert "--config.optimizer.learning_rate=0.05" in capsys.readouterr().out
    task.validate(load_config("cifar10", "alexnet"))  # the full recipe: no note
    assert capsys.readouterr().out == ""


# --- TFDS's undeclared dependency is declared --------------------------------------------------------


def test_tfds_builder_module_finds_importlib_resources():
    """tensorflow-datasets imports importlib_resources lazily without declaring it; a fresh
    install then failed in download_and_prepare. The experiments extra declares it."""
    from tensorflow_datasets.core import dataset_builder  # pylint: disable=import-outside-toplevel

    assert dataset_builder.importlib_resources.abc.Traversable is not None
