"""One FER2013 run: the recipe of Khairuddin & Chen (2021) on the shared training loop.

Recipe (arXiv 2105.03588; usef-kh/fer train.py, utils/hparams.py, data/fer2013.py): the VGG of
`models.VGG`; SGD with lr 0.01, momentum 0.9, Nesterov and weight decay 1e-4 (coupled, as in
torch.optim.SGD); batches of 64 faces; 300 epochs; ReduceLROnPlateau on the validation accuracy
(factor 0.75, patience 5); 40x40 TenCrop training, every crop a sample (640 crops a step), and
TenCrop evaluation, logits averaged over the ten crops (`augment`). The reference computes in
float16 under autocast; here float32 (or bfloat16 with --bf16). Pixels are x / 255.

Shortened runs change `epochs`, `train_crops` (1: one of the ten crops per face), `width` and
`hidden` (a narrower VGG); `departures` lists every change from the recipe, and summary.json
records it.
"""

import dataclasses
import functools
import os

import jax.numpy as jnp
import numpy as np
import optax

from experiments.common import data as common_data
from experiments.common import loop, losses
from experiments.fer2013 import augment, data, models

RECIPE = {"learning_rate": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 64,
          "epochs": 300, "plateau_factor": 0.75, "plateau_patience": 5, "crop": 40,
          "train_crops": augment.NUM_TEN_CROPS, "width": 64, "hidden": 4096, "dropout": 0.2}
NUM_CLASSES = len(data.EMOTIONS)
MIN_CROP = 16  # four 2x2 max-pools


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One FER2013 training run; None fields take the recipe's value.

    Attributes:
      loss: loss name and hyper-parameters.
      label_noise: symmetric noise rate in [0, 1) injected into the training labels.
      noise_seed: numpy seed of the noise.
      epochs, batch_size, learning_rate: recipe overrides (batch_size counts faces).
      train_crops: 10 (TenCrop, the recipe) or 1 (one of the ten crops per face and step).
      crop: crop side (40).
      width, hidden: VGG widths (64, 4096 in the recipe).
      val_usage: the usage that validates (data.VAL_USAGES); the other test usage tests.
      eval_batch_size: faces per evaluation batch (each evaluated as ten crops; padded + masked).
      seed: init / shuffle / augmentation / dropout seed.
      num_train_examples: use the first N training faces (0 = all).
      num_eval_examples: evaluate on the first N validation and test faces (0 = all).
      bf16: bfloat16 compute.
      stop_after_steps: checkpoint and stop after N steps in this invocation (0 = off).
      progress: show a progress bar.
    """

    loss: losses.LossSpec = losses.LossSpec()
    label_noise: float = 0.0
    noise_seed: int = 123
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    train_crops: int = RECIPE["train_crops"]
    crop: int = RECIPE["crop"]
    width: int = RECIPE["width"]
    hidden: int = RECIPE["hidden"]
    val_usage: str = data.DEFAULT_VAL_USAGE
    eval_batch_size: int = 64
    seed: int = 0
    num_train_examples: int = 0
    num_eval_examples: int = 0
    bf16: bool = False
    stop_after_steps: int = 0
    progress: bool = True


def validate(config: RunConfig, image_side: int | None = None) -> None:
    """Raises ValueError, saying what to change, before anything is loaded or trained.

    Args:
      config: the run.
      image_side: the faces' side once known (48 for FER2013): the crop must fit.
    """
    losses.validate_loss_spec(config.loss, NUM_CLASSES)
    data.check_val_usage(config.val_usage)
    if not 0.0 <= config.label_noise < 1.0:
        raise ValueError(f"--label_noise must be in [0, 1), got {config.label_noise}.")
    for name in ("epochs", "batch_size", "learning_rate"):
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name} must be positive, got {value}.")
    if config.train_crops not in (1, augment.NUM_TEN_CROPS):
        raise ValueError(f"--train_crops must be 1 or {augment.NUM_TEN_CROPS} (TenCrop), got "
                         f"{config.train_crops}.")
    if config.crop < MIN_CROP:
        raise ValueError(f"--crop must be >= {MIN_CROP} (the VGG pools four times), got "
                         f"{config.crop}.")
    if image_side is not None and config.crop > image_side:
        raise ValueError(f"--crop {config.crop} exceeds the {image_side}x{image_side} faces.")
    for name in ("width", "hidden", "eval_batch_size"):
        if getattr(config, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(config, name)}.")
    for name in ("num_train_examples", "num_eval_examples", "stop_after_steps"):
        if getattr(config, name) < 0:
            raise ValueError(f"--{name} must be >= 0 (0 = all / off), got "
                             f"{getattr(config, name)}.")


def resolved(config: RunConfig) -> dict:
    """The recipe with the config's overrides applied."""
    recipe = dict(RECIPE)
    for name in ("epochs", "batch_size", "learning_rate"):
        if getattr(config, name) is not None:
            recipe[name] = getattr(config, name)
    for name in ("train_crops", "crop", "width", "hidden"):
        recipe[name] = getattr(config, name)
    return recipe


def departures(config: RunConfig) -> list:
    """Every difference from the Khairuddin & Chen recipe, as 'name: ours (recipe value)'."""
    recipe = resolved(config)
    out = [f"{k}: {recipe[k]} (recipe {RECIPE[k]})" for k in RECIPE if recipe[k] != RECIPE[k]]
    if config.num_train_examples:
        out.append(f"num_train_examples: {config.num_train_examples} (recipe: all)")
    if config.num_eval_examples:
        out.append(f"num_eval_examples: {config.num_eval_examples} (recipe: all)")
    if config.label_noise:
        out.append(f"label_noise: {config.label_noise} (recipe: none)")
    out.append(f"precision: {'bfloat16' if config.bf16 else 'float32'} (recipe: float16 autocast)")
    return out


def make_tx_factory(recipe: dict):
    """`make_tx(steps_per_epoch) -> (tx, lr_fn)`: SGD + Nesterov with coupled weight decay.

    torch.optim.SGD(lr, momentum, nesterov=True, weight_decay) adds wd * params to the gradient
    before the momentum; optax.sgd's Nesterov update g + momentum * trace is PyTorch's. The
    plateau scale (the loop's reduce-on-plateau) multiplies the result.
    """

    def make_tx(steps_per_epoch: int):
        del steps_per_epoch
        lr = recipe["learning_rate"]
        tx = optax.chain(optax.add_decayed_weights(recipe["weight_decay"]),
                         optax.sgd(lr, momentum=recipe["momentum"], nesterov=True))
        return tx, optax.constant_schedule(lr)

    return make_tx


def prepare_dataset(splits: data.FerSplits, config: RunConfig) -> common_data.Dataset:
    """The loop's dataset: train / validation / test usages, subsets, training label noise."""
    fer = data.make_dataset(splits, config.val_usage)
    n_train = config.num_train_examples or None
    n_eval = config.num_eval_examples or None
    train_labels = fer.train_labels[:n_train]
    if config.label_noise > 0:
        train_labels = common_data.symmetric_label_noise(train_labels, config.label_noise,
                                                         NUM_CLASSES, seed=config.noise_seed)
    return common_data.Dataset(
        fer.train_images[:n_train], train_labels, fer.test_images[:n_eval],
        fer.test_labels[:n_eval], fer.class_names, source=splits.source,
        val_images=fer.val_images[:n_eval], val_labels=fer.val_labels[:n_eval])


def run(config: RunConfig, splits: data.FerSplits, workdir: str,
        run_info: dict | None = None) -> loop.RunResult:
    """Validates, then trains and evaluates one configuration in `workdir` (resuming)."""
    validate(config, splits.training[0].shape[1])
    recipe = resolved(config)
    ds = prepare_dataset(splits, config)
    model = models.VGG(num_classes=NUM_CLASSES, width=config.width, hidden=config.hidden,
                       dropout=recipe["dropout"],
                       dtype=jnp.bfloat16 if config.bf16 else jnp.float32)
    loop_config = loop.LoopConfig(
        loss=config.loss, epochs=recipe["epochs"], batch_size=recipe["batch_size"],
        eval_batch_size=config.eval_batch_size, seed=config.seed, mean=(0.0,), std=(1.0,),
        augment=False, bf16=config.bf16, stop_after_steps=config.stop_after_steps,
        progress=config.progress, plateau_factor=recipe["plateau_factor"],
        plateau_patience=recipe["plateau_patience"], per_class=True)
    # What a resume must match; the epochs are checked apart (more epochs extend a run).
    identity = {"model": "vgg", "recipe": {k: v for k, v in recipe.items() if k != "epochs"},
                "val_usage": config.val_usage}
    clean = splits.training[1][:len(ds.train_labels)]
    info = {"model": "vgg", "recipe": recipe, "departures": departures(config),
            "val_usage": config.val_usage, "test_usage": data.check_val_usage(config.val_usage),
            "label_noise": config.label_noise,
            "realised_noise_rate": float(np.mean(ds.train_labels != clean)),
            "num_train_examples": int(len(ds.train_labels)),
            "num_val_examples": int(len(ds.val_labels)),
            "num_test_examples": int(len(ds.test_labels)), **(run_info or {})}
    os.makedirs(workdir, exist_ok=True)
    return loop.train_and_evaluate(
        loop_config, model, make_tx_factory(recipe), ds, workdir, info, identity=identity,
        train_views=functools.partial(augment.train_views, crop=config.crop,
                                      num_crops=config.train_crops),
        eval_views=functools.partial(augment.eval_views, crop=config.crop))
