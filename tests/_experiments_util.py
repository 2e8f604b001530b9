"""Helpers shared by the experiments tests: tiny synthetic datasets and configs, subprocess runs."""

import os
import subprocess
import sys

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from experiments.common import data, loop, losses
from experiments.cifar10 import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A ConvMixer small enough to compile in a few seconds; BN exercises the batch_stats path.
TINY_CONVMIXER = (("dim", 8), ("depth", 1), ("kernel_size", 3), ("patch_size", 4))


def synthetic_dataset(n_train=64, n_test=24, size=16, num_classes=10, seed=0) -> data.Dataset:
    """Random uint8 images whose labels are learnable: class k brightens channel k % 3."""
    rng = np.random.RandomState(seed)

    def split(n):
        labels = (np.arange(n) % num_classes).astype(np.int32)
        rng.shuffle(labels)
        images = rng.randint(0, 128, (n, size, size, 3)).astype(np.uint8)
        images[np.arange(n), :, :, labels % 3] += (64 + 8 * labels).astype(np.uint8)[:, None, None]
        return images, labels

    return data.Dataset(*split(n_train), *split(n_test), tuple(f"c{k}" for k in range(num_classes)))


def tiny_config(loss=losses.LossSpec(), **changes) -> train.RunConfig:
    """A RunConfig for the tiny ConvMixer: batch 16, 2 epochs, no progress bar."""
    base = dict(model="convmixer", loss=loss, epochs=2, batch_size=16, eval_batch_size=8,
                learning_rate=0.01, progress=False, model_overrides=TINY_CONVMIXER)
    base.update(changes)
    return train.RunConfig(**base)


class TinyNet(nn.Module):
    """Flattened pixels -> BatchNorm -> dense: compiles in a fraction of a second, and its
    batch_stats exercise the checkpointed BatchNorm state."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(self.num_classes)(x)


def tiny_loop_config(loss=losses.LossSpec(), **changes) -> loop.LoopConfig:
    """A LoopConfig for TinyNet on `synthetic_dataset(size=4)`: batch 8, 2 epochs, no progress."""
    base = dict(loss=loss, epochs=2, batch_size=8, eval_batch_size=8, seed=0,
                mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), progress=False)
    base.update(changes)
    return loop.LoopConfig(**base)


def sgd(lr_fn=lambda step: jnp.float32(0.1)):
    """`make_tx` for the loop: SGD with momentum on the schedule `lr_fn(step)`."""
    return lambda steps_per_epoch: (optax.sgd(lr_fn, momentum=0.9), lr_fn)


def run_python(code: str, env_extra=None, timeout=300) -> subprocess.CompletedProcess:
    """Runs `python -c code` from the repo root (fresh JAX, so XLA_FLAGS can take effect)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_module(args, timeout=300) -> subprocess.CompletedProcess:
    """Runs `python -m <args>` from the repo root."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
