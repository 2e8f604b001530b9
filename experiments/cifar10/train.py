"""One CIFAR-10 run: recipe (optimiser, schedule, normalisation), data, label noise, training.

Recipes:
- alexnet (bearpaw/pytorch-classification, cifar.py with models/cifar/alexnet.py): SGD momentum 0.9, weight decay 5e-4 on all parameters (PyTorch-style coupled decay),
  batch 128, 164 epochs, lr x0.1 at the start of epochs 81 and 122 (scaled to --epochs as
  round(81/164 * E), round(122/164 * E)). Base lr 0.01: the reference model file says "without BN,
  the start learning rate should be 0.01", while its training command silently uses the 0.1 default;
  we follow the explicit advice (override with --learning_rate 0.1).
- convmixer (locuslab/convmixer-cifar10, train.py): AdamW (lr 0.01, weight decay 0.01), batch 512,
  25 epochs, per-iteration
  piecewise-linear lr 0 -> lr at 2E//5 -> lr/20 at 4E//5 -> 0 at E. Augmentation here is the same
  crop + flip as for AlexNet; the reference's RandAugment / ColorJitter / RandomErasing are not
  implemented.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.common import data, loop, losses
from experiments.cifar10 import models

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
RECIPES = {
    "alexnet": {"optimizer": "sgd", "learning_rate": 0.01, "weight_decay": 5e-4,
                "batch_size": 128, "epochs": 164, "std": (0.2023, 0.1994, 0.2010)},
    "convmixer": {"optimizer": "adamw", "learning_rate": 0.01, "weight_decay": 0.01,
                  "batch_size": 512, "epochs": 25, "std": (0.2471, 0.2435, 0.2616)},
}
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One CIFAR-10 training run; None fields take the model's recipe value.

    Attributes:
      model: 'alexnet' or 'convmixer'.
      loss: loss name and hyper-parameters.
      label_noise: symmetric noise rate in [0, 1) injected into the training labels.
      noise_seed: numpy seed of the noise (123 as in Wang et al.).
      epochs, batch_size, learning_rate: recipe overrides.
      eval_batch_size: test batch (padded + masked).
      seed: init / shuffle / augmentation seed.
      num_train_examples: use the first N training images (0 = all).
      num_test_examples: evaluate on the first N test images (0 = all; the loaders' test order
        mixes the classes), for quick smoke runs.
      bf16: bfloat16 compute.
      stop_after_steps: checkpoint and stop after N steps in this invocation (0 = off).
      model_overrides: extra model fields, e.g. {'dim': 16, 'depth': 1} for a tiny ConvMixer.
    """

    model: str = "alexnet"
    loss: losses.LossSpec = losses.LossSpec()
    label_noise: float = 0.0
    noise_seed: int = 123
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    eval_batch_size: int = 1000
    seed: int = 0
    num_train_examples: int = 0
    num_test_examples: int = 0
    bf16: bool = False
    stop_after_steps: int = 0
    progress: bool = True
    model_overrides: tuple = ()


def validate(config: RunConfig, num_classes: int = NUM_CLASSES) -> None:
    """Raises ValueError with a message saying what to change, before anything is trained."""
    if config.model not in models.MODELS:
        raise ValueError(f"unknown --model {config.model!r}; choose one of "
                         f"{', '.join(models.MODELS)}.")
    losses.validate_loss_spec(config.loss, num_classes)
    if not 0.0 <= config.label_noise < 1.0:
        raise ValueError(f"--label_noise must be in [0, 1), got {config.label_noise}.")
    if config.epochs is not None and config.epochs <= 0:
        raise ValueError(f"--epochs must be positive, got {config.epochs}.")
    if config.num_train_examples < 0:
        raise ValueError("--num_train_examples must be >= 0 (0 = all).")
    if config.num_test_examples < 0:
        raise ValueError("--num_test_examples must be >= 0 (0 = all).")


def resolved(config: RunConfig) -> dict:
    """The model's recipe with the config's overrides applied."""
    recipe = dict(RECIPES[config.model])
    for name in ("epochs", "batch_size", "learning_rate"):
        if getattr(config, name) is not None:
            recipe[name] = getattr(config, name)
    return recipe


def alexnet_milestones(epochs: int) -> tuple:
    """Epochs (0-based) at whose start the lr drops x0.1: (81, 122) of 164, scaled to `epochs`."""
    return tuple(round(m * epochs / 164) for m in (81, 122))


def make_tx_factory(model: str, recipe: dict):
    """Returns `make_tx(steps_per_epoch) -> (optax transformation, lr_fn)` for the recipe."""
    lr, wd, epochs = recipe["learning_rate"], recipe["weight_decay"], recipe["epochs"]

    def make_tx(steps_per_epoch: int):
        if model == "alexnet":
            lr_fn = optax.piecewise_constant_schedule(
                lr, {m * steps_per_epoch: 0.1 for m in alexnet_milestones(epochs) if m > 0})
            tx = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr_fn, momentum=0.9))
            return tx, lr_fn
        knots = jnp.array([0.0, epochs * 2 // 5, epochs * 4 // 5, epochs], jnp.float32)
        values = jnp.array([0.0, lr, lr / 20.0, 0.0], jnp.float32)
        lr_fn = lambda step: jnp.interp((step + 1) / steps_per_epoch, knots, values)  # noqa: E731
        return optax.adamw(lr_fn, weight_decay=wd), lr_fn

    return make_tx


def check_data_source(data_dir: str | None, tfds_data_dir: str | None) -> tuple:
    """Checks --data_dir (image-folder layout) or TFDS availability; returns the class names."""
    if data_dir:
        return data.check_image_folder(data_dir)
    data.check_tfds_available("cifar10", tfds_data_dir)
    return tuple(str(k) for k in range(NUM_CLASSES))


def load_dataset(data_dir: str | None, tfds_data_dir: str | None, cache_dir: str) -> data.Dataset:
    """CIFAR-10 from the image-folder `data_dir` (decoded once, cached) or from TFDS.

    In a multi-host run only process 0 writes the image-folder cache.
    """
    if data_dir:
        return data.load_image_folder(data_dir, data.cache_dir_for(data_dir, cache_dir),
                                      write_cache=jax.process_index() == 0)
    return data.load_tfds("cifar10", tfds_data_dir)


def prepare_data(dataset: data.Dataset, config: RunConfig) -> data.Dataset:
    """Takes the first N training / test images (if asked) and injects the run's label noise."""
    ds = dataset
    if config.num_train_examples:
        n = config.num_train_examples
        ds = ds._replace(train_images=ds.train_images[:n], train_labels=ds.train_labels[:n])
    if config.num_test_examples:
        n = config.num_test_examples
        ds = ds._replace(test_images=ds.test_images[:n], test_labels=ds.test_labels[:n])
    if config.label_noise > 0:
        ds = ds._replace(train_labels=data.symmetric_label_noise(
            ds.train_labels, config.label_noise, ds.num_classes, seed=config.noise_seed))
    return ds


def run(config: RunConfig, dataset: data.Dataset, workdir: str,
        run_info: dict | None = None) -> loop.RunResult:
    """Validates, then trains and evaluates one configuration in `workdir` (resuming).

    Raises:
      ValueError: a bad configuration.
      checkpoint.ConfigMismatchError: `workdir` holds a run with another configuration (another
        model, recipe, loss, data, label noise, subset, batch size or seed); `--epochs` may grow.
    """
    validate(config, dataset.num_classes)
    recipe = resolved(config)
    ds = prepare_data(dataset, config)
    model = models.create_model(config.model, ds.num_classes, config.bf16,
                                **dict(config.model_overrides))
    loop_config = loop.LoopConfig(
        loss=config.loss, epochs=recipe["epochs"], batch_size=recipe["batch_size"],
        eval_batch_size=config.eval_batch_size, seed=config.seed, mean=CIFAR_MEAN,
        std=recipe["std"], bf16=config.bf16, stop_after_steps=config.stop_after_steps,
        progress=config.progress)
    identity = {"model": config.model, "model_overrides": dict(config.model_overrides),
                "recipe": {k: v for k, v in recipe.items() if k != "epochs"},
                "label_noise": config.label_noise, "noise_seed": config.noise_seed,
                "num_train_examples": config.num_train_examples,
                "num_test_examples": config.num_test_examples}
    info = {"model": config.model, "label_noise": config.label_noise,
            "num_train_examples": int(len(ds.train_labels)),
            "num_test_examples": int(len(ds.test_labels)),
            "realised_noise_rate": float(np.mean(ds.train_labels != dataset.train_labels[
                :len(ds.train_labels)])),
            "recipe": {k: v for k, v in recipe.items() if k != "std"}, **(run_info or {})}
    os.makedirs(workdir, exist_ok=True)
    return loop.train_and_evaluate(loop_config, model, make_tx_factory(config.model, recipe), ds,
                                   workdir, info, identity)
