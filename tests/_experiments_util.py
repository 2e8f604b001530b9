"""Helpers shared by the experiments tests: tiny synthetic datasets, configs, subprocess runs."""

import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from experiments.common import config as cfg
from experiments.common.data import memory
from experiments.face import verification

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "experiments")
# A ConvMixer small enough to compile in a few seconds; BN exercises the batch_stats path.
TINY_CONVMIXER = {"model.dim": 8, "model.depth": 1, "model.kernel_size": 3, "model.patch_size": 4}
QUIET = {"run.progress": False, "run.compilation_cache": ""}


def config_file(experiment: str, name: str) -> str:
    """experiments/<experiment>/configs/<name>.py"""
    return os.path.join(CONFIGS, experiment, "configs", f"{name}.py")


def load_config(experiment: str, name: str, **overrides):
    """A config file's config with dotted overrides given as keyword arguments with '__' for '.'
    (model__dim=8), plus `QUIET` (no progress bar, no persistent compilation cache)."""
    dotted = {**QUIET, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return cfg.load(config_file(experiment, name), dotted)[0]


def synthetic_dataset(
    n_train=64, n_test=24, size=16, num_classes=10, seed=0, n_val=0
) -> memory.Dataset:
    """Random uint8 images whose labels are learnable: class k brightens channel k % 3."""
    rng = np.random.RandomState(seed)

    def split(n):
        labels = (np.arange(n) % num_classes).astype(np.int32)
        rng.shuffle(labels)
        images = rng.randint(0, 128, (n, size, size, 3)).astype(np.uint8)
        images[np.arange(n), :, :, labels % 3] += (64 + 8 * labels).astype(np.uint8)[:, None, None]
        return images, labels

    train, test = split(n_train), split(n_test)
    val = split(n_val) if n_val else (None, None)
    return memory.Dataset(
        *train, *test, tuple(f"c{k}" for k in range(num_classes)), "synthetic", *val
    )


def write_npz(directory, dataset=None, name="data.npz") -> str:
    """Saves `dataset` (default `synthetic_dataset()`) as an arrays file; returns its path."""
    path = os.path.join(str(directory), name)
    memory.save_npz(path, dataset if dataset is not None else synthetic_dataset())
    return path


def tiny_cifar_config(npz: str, **overrides):
    """The ConvMixer config on `npz` with TINY_CONVMIXER: batch 16, 2 epochs, eval batch 8."""
    base = {
        "data__npz": npz,
        "epochs": 2,
        "batch_size": 16,
        "eval_batch_size": 8,
        **{k.replace(".", "__"): v for k, v in TINY_CONVMIXER.items()},
    }
    return load_config("cifar10", "convmixer", **{**base, **overrides})


def _env(extra=None):
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # gRPC on localhost
    env["PYTHONPATH"] = (
        REPO + os.pathsep + os.path.join(REPO, "tests") + os.pathsep + env.get("PYTHONPATH", "")
    )
    env.update(extra or {})
    return env


def run_python(code: str, env_extra=None, timeout=1800) -> subprocess.CompletedProcess:
    """Runs `python -c code` from the repo root (fresh JAX, so XLA_FLAGS can take effect). The
    timeout only catches a hang: a correct run on a loaded machine stays far below it."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=_env(env_extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_module(args, env_extra=None, timeout=1800) -> subprocess.CompletedProcess:
    """Runs `python -m <args>` from the repo root (no persistent compilation cache)."""
    return subprocess.run(
        [sys.executable, "-m", *args, "--config.run.compilation_cache="]
        if any(a.startswith("--workdir") for a in args)
        else [sys.executable, "-m", *args],
        cwd=REPO,
        env=_env(env_extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- generated faces: an identity folder and a verification set ---------------------------------

FACE_SIZE = 32
FACE_IDS = 6


def identity_images(rng, templates, k, n):
    """n noisy views of identity k: its template, shifted by up to 2 px, plus noise."""
    out = []
    for _ in range(n):
        dy, dx = rng.randint(-2, 3, 2)
        image = np.roll(templates[k], (dy, dx), axis=(0, 1)).astype(np.int16)
        image += rng.randint(-30, 31, image.shape)
        out.append(np.clip(image, 0, 255).astype(np.uint8))
    return out


def jpeg_bytes(pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def make_faces(root, num_ids=FACE_IDS, per_id=12, pairs_per_id=8, seed=0):
    """An identity folder ROOT/train/<id>/*.jpg and a verification .bin ROOT/val.bin of other
    images of the same identities (balanced same / different pairs). Each identity is a random
    smooth colour template."""
    rng = np.random.RandomState(seed)
    coarse = rng.randint(0, 256, (num_ids, 4, 4, 3)).astype(np.uint8)
    templates = [
        np.asarray(Image.fromarray(c).resize((FACE_SIZE, FACE_SIZE), Image.BILINEAR))
        for c in coarse
    ]
    for k in range(num_ids):
        folder = os.path.join(root, "train", f"id{k:03d}")
        os.makedirs(folder)
        for i, pixels in enumerate(identity_images(rng, templates, k, per_id)):
            with open(os.path.join(folder, f"{i:04d}.jpg"), "wb") as f:
                f.write(jpeg_bytes(pixels))
    held = [
        (jpeg_bytes(p), k)
        for k in range(num_ids)
        for p in identity_images(rng, templates, k, pairs_per_id)
    ]
    index, issame = verification.sample_pairs(
        np.array([k for _, k in held]), num_ids * pairs_per_id, seed=seed
    )
    encoded = [held[i][0] for pair in index for i in pair]
    verification.write_bin(os.path.join(root, "val.bin"), encoded, issame)
    # The same pairs in LFW's layout: lfw/<name>/<name>_0001.jpg and lfw/pairs.txt.
    names = [f"person{k}" for k in range(num_ids)]
    number = {}  # held-out image -> its 1-based number within its identity
    for i, (jpeg, k) in enumerate(held):
        number[i] = sum(1 for j in range(i) if held[j][1] == k) + 1
        os.makedirs(os.path.join(root, "lfw", names[k]), exist_ok=True)
        with open(
            os.path.join(root, "lfw", names[k], f"{names[k]}_{number[i]:04d}.jpg"), "wb"
        ) as f:
            f.write(jpeg)
    lines = [
        f"{names[held[a][1]]} {number[a]} {number[b]}"
        if same
        else f"{names[held[a][1]]} {number[a]} {names[held[b][1]]} {number[b]}"
        for (a, b), same in zip(index, issame)
    ]
    with open(os.path.join(root, "lfw", "pairs.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return os.path.join(root, "train"), os.path.join(root, "val.bin")


def tiny_digits_config(npz: str, **overrides):
    """The quickstart's task (SmallCNN, no augmentation, no BatchNorm) on `npz`, e.g.
    `synthetic_dataset(n_train=24, n_test=10, size=4)`: batch 8, 2 epochs, SGD (momentum 0.9)
    at lr 0.1, one plain classification evaluator on the test split. Compiles in a few seconds:
    for tests of the loop itself (resume, stops, divergence)."""
    base = {
        "data__npz": npz,
        "epochs": 2,
        "batch_size": 8,
        "eval_batch_size": 8,
        "optimizer__name": "sgd",
        "optimizer__learning_rate": 0.1,
        "evals": {"test": {"type": "classification", "split": "test"}},
    }
    return load_config("quickstart", "default", **{**base, **overrides})
