"""Helpers shared by the experiments tests: tiny synthetic datasets, configs, subprocess runs."""

import os
import subprocess
import sys

import numpy as np

from experiments.common import config as cfg
from experiments.common.data import memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "experiments")
# A ConvMixer small enough to compile in a few seconds; BN exercises the batch_stats path.
TINY_CONVMIXER = {"model.dim": 8, "model.depth": 1, "model.kernel_size": 3,
                  "model.patch_size": 4}
QUIET = {"run.progress": False, "run.compilation_cache": ""}


def config_file(experiment: str, name: str) -> str:
    """experiments/<experiment>/configs/<name>.py"""
    return os.path.join(CONFIGS, experiment, "configs", f"{name}.py")


def load_config(experiment: str, name: str, **overrides):
    """A config file's config with dotted overrides given as keyword arguments with '__' for '.'
    (model__dim=8), plus `QUIET` (no progress bar, no persistent compilation cache)."""
    dotted = {**QUIET, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return cfg.load(config_file(experiment, name), dotted)[0]


def synthetic_dataset(n_train=64, n_test=24, size=16, num_classes=10, seed=0,
                      n_val=0) -> memory.Dataset:
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
    return memory.Dataset(*train, *test, tuple(f"c{k}" for k in range(num_classes)), "synthetic",
                          *val)


def write_npz(directory, dataset=None, name="data.npz") -> str:
    """Saves `dataset` (default `synthetic_dataset()`) as an arrays file; returns its path."""
    path = os.path.join(str(directory), name)
    memory.save_npz(path, dataset if dataset is not None else synthetic_dataset())
    return path


def tiny_cifar_config(npz: str, **overrides):
    """The ConvMixer config on `npz` with TINY_CONVMIXER: batch 16, 2 epochs, eval batch 8."""
    base = {"data__npz": npz, "epochs": 2, "batch_size": 16, "eval_batch_size": 8,
            **{k.replace(".", "__"): v for k, v in TINY_CONVMIXER.items()}}
    return load_config("cifar10", "convmixer", **{**base, **overrides})


def _env(extra=None):
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # gRPC on localhost
    env["PYTHONPATH"] = REPO + os.pathsep + os.path.join(REPO, "tests") + os.pathsep + \
        env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def run_python(code: str, env_extra=None, timeout=1800) -> subprocess.CompletedProcess:
    """Runs `python -c code` from the repo root (fresh JAX, so XLA_FLAGS can take effect). The
    timeout only catches a hang: a correct run on a loaded machine stays far below it."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(env_extra),
                          capture_output=True, text=True, timeout=timeout)


def run_module(args, env_extra=None, timeout=1800) -> subprocess.CompletedProcess:
    """Runs `python -m <args>` from the repo root (no persistent compilation cache)."""
    return subprocess.run([sys.executable, "-m", *args, "--config.run.compilation_cache="]
                          if any(a.startswith("--workdir") for a in args) else
                          [sys.executable, "-m", *args], cwd=REPO, env=_env(env_extra),
                          capture_output=True, text=True, timeout=timeout)
