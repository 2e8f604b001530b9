"""One ImageNet-style run: recipe, model, streaming data, training and evaluation.

Recipes:
- 'pycls' (GSC paper Table 3, which follows Radosavovic et al. 2020, facebookresearch/pycls
  configs/dds_baselines/resnet/R-50-1x64d_dds_8gpu.yaml): SGD with Nesterov momentum 0.9, lr
  0.1 * batch / 128 (0.2 at batch 256), weight decay 5e-5 on every parameter (coupled, as
  PyTorch's SGD), a cosine schedule set once per epoch, lr(e) = lr * (1 + cos(pi e / E)) / 2, no
  warm-up, 100 epochs, batch 256, Inception crop + flip + PCA lighting 0.1, evaluation resize 256 /
  centre 224.
- 'ols_flowers' (GSC paper Table 4, which follows Zhang et al. 2021, zhangchbin/OnlineLabelSmoothing
  fine-grained/main.py and solver.py): SGD momentum 0.9, lr 0.01, weight decay 1e-4, batch 64,
  100 epochs, lr x0.1 at epochs 45 and 80 (scaled to --epochs), resize to 256x256 + random crop
  224 + flip, evaluation resize 256x256 / centre 224. The reference fine-tunes an ImageNet-trained
  ResNet-50: pass --init_from with the workdir of an ImageNet run of the same model (its
  classifier is replaced).
"""

import dataclasses
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.common import checkpoint, loop, losses, report, steps
from experiments.imagenet import models, pipeline

RECIPES = {
    "pycls": {"learning_rate_per_128": 0.1, "weight_decay": 5e-5, "nesterov": True,
              "batch_size": 256, "epochs": 100, "schedule": "cosine_per_epoch",
              "train_crop": "inception", "eval_crop": "short_side", "lighting_std": 0.1},
    "ols_flowers": {"learning_rate": 0.01, "weight_decay": 1e-4, "nesterov": False,
                    "batch_size": 64, "epochs": 100, "schedule": "steps_45_80",
                    "train_crop": "resize_random", "eval_crop": "square", "lighting_std": 0.0},
}
DEFAULT_RECIPE = {"imagenet2012": "pycls", "folder": "pycls", "oxford_flowers102": "ols_flowers"}
DATASETS = ("imagenet2012", "oxford_flowers102", "folder")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One run; None fields take the recipe's value.

    Attributes:
      dataset: one of DATASETS.
      data_dir: image-folder root (folder) or TFDS data directory.
      model: one of models.MODELS.
      loss: loss name and hyper-parameters.
      recipe: one of RECIPES (default: by dataset, DEFAULT_RECIPE).
      epochs, batch_size, learning_rate: recipe overrides.
      eval_batch_size: global evaluation batch (padded and masked).
      image_size: train crop / evaluation size (224 in the recipes; smaller for CPU runs).
      seed: init, shuffling and augmentation seed.
      bf16: bfloat16 compute (parameters, loss and metrics float32).
      width: ResNet base width (64; smaller only for tests).
      init_from: workdir of a finished run of the same model whose weights (all but the
        classifier) initialise this one.
      workers: parallel decode calls per host (0: tf.data.AUTOTUNE).
      stop_after_steps: checkpoint and stop after N steps in this invocation (0 = off).
      progress: tqdm progress bar.
    """

    dataset: str = "folder"
    data_dir: str | None = None
    model: str = "resnet50"
    loss: losses.LossSpec = losses.LossSpec()
    recipe: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    eval_batch_size: int = 250
    image_size: int = 224
    seed: int = 0
    bf16: bool = False
    width: int = 64
    init_from: str | None = None
    workers: int = 0
    stop_after_steps: int = 0
    progress: bool = True


def validate(config: RunConfig, num_classes: int | None = None) -> None:
    """Raises ValueError naming the flag and what is allowed, before any work."""
    if config.dataset not in DATASETS:
        raise ValueError(f"unknown --dataset {config.dataset!r}; choose one of "
                         f"{', '.join(DATASETS)}.")
    if config.dataset == "folder" and not config.data_dir:
        raise ValueError("--dataset folder needs --data_dir DIR (DIR/train/<class>/*, "
                         "DIR/val/<class>/*).")
    if config.model not in models.MODELS:
        raise ValueError(f"unknown --model {config.model!r}; choose one of "
                         f"{', '.join(models.MODELS)}.")
    if config.recipe is not None and config.recipe not in RECIPES:
        raise ValueError(f"unknown --recipe {config.recipe!r}; choose one of "
                         f"{', '.join(RECIPES)}.")
    for name in ("epochs", "batch_size", "learning_rate"):
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name} must be positive, got {value}.")
    if config.eval_batch_size <= 0:
        raise ValueError(f"--eval_batch_size must be positive, got {config.eval_batch_size}.")
    if config.image_size < 8:
        raise ValueError(f"--image_size must be at least 8, got {config.image_size}.")
    if config.width <= 0:
        raise ValueError(f"width must be positive, got {config.width}.")
    if num_classes is not None:
        losses.validate_loss_spec(config.loss, num_classes)


def resolved(config: RunConfig) -> dict:
    """The recipe with the config's overrides; 'learning_rate' is set (scaled by batch/128 for
    pycls unless given)."""
    name = config.recipe or DEFAULT_RECIPE[config.dataset]
    recipe = dict(RECIPES[name], name=name)
    for key in ("epochs", "batch_size"):
        if getattr(config, key) is not None:
            recipe[key] = getattr(config, key)
    if config.learning_rate is not None:
        recipe["learning_rate"] = config.learning_rate
    elif "learning_rate_per_128" in recipe:
        recipe["learning_rate"] = recipe["learning_rate_per_128"] * recipe["batch_size"] / 128
    recipe.pop("learning_rate_per_128", None)
    return recipe


def make_tx(recipe: dict, steps_per_epoch: int):
    """(optax SGD with coupled weight decay, lr_fn(step)) of the recipe."""
    lr, epochs = recipe["learning_rate"], recipe["epochs"]
    if recipe["schedule"] == "cosine_per_epoch":
        def lr_fn(step):
            epoch = jnp.floor_divide(step, steps_per_epoch).astype(jnp.float32)
            return lr * 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / epochs))
    else:
        milestones = [round(m * epochs / 100) for m in (45, 80)]
        lr_fn = optax.piecewise_constant_schedule(
            lr, {m * steps_per_epoch: 0.1 for m in milestones if m > 0})
    tx = optax.chain(optax.add_decayed_weights(recipe["weight_decay"]),
                     optax.sgd(lr_fn, momentum=0.9, nesterov=recipe["nesterov"]))
    return tx, lr_fn


def _load_backbone(state: steps.TrainState, workdir: str) -> steps.TrainState:
    """`state` with params and batch_stats (all but the classifier 'head') from workdir's latest
    checkpoint of the same architecture."""
    manager = checkpoint.make_manager(workdir)
    step = manager.latest_step()
    if step is None:
        raise ValueError(f"--init_from {workdir!r} holds no checkpoint.")
    restored = manager.restore(step, args=checkpoint.ocp.args.StandardRestore())
    flat = flax.traverse_util.flatten_dict
    for field in ("params", "batch_stats"):
        mine, theirs = flat(getattr(state, field)), flat(restored[field])
        for key in mine:
            if key[0] != "head":
                if key not in theirs or np.shape(theirs[key]) != mine[key].shape:
                    raise ValueError(f"--init_from {workdir!r}: {'/'.join(key)} is missing or "
                                     "has another shape; use a run of the same --model.")
                mine[key] = jax.device_put(jnp.asarray(theirs[key], mine[key].dtype),
                                           mine[key].sharding)
        state = state.replace(**{field: flax.traverse_util.unflatten_dict(mine)})
    return state


def run(config: RunConfig, workdir: str, source: pipeline.Source | None = None,
        run_info: dict | None = None) -> loop.RunResult:
    """Trains and evaluates (every epoch) one configuration in `workdir` on the shared loop
    (`loop.train_and_evaluate` with a streamed dataset), resuming from it.

    metrics.jsonl has one record per epoch (with images_per_s: training images per second,
    input pipeline included); summary.json the final metrics.
    """
    validate(config)
    source = source or pipeline.make_source(config.dataset, config.data_dir)
    validate(config, source.num_classes)
    recipe = resolved(config)
    stream = pipeline.ImageStream(source, pipeline.StreamConfig(
        global_batch=recipe["batch_size"], eval_batch=config.eval_batch_size,
        image_size=config.image_size, seed=config.seed, train_crop=recipe["train_crop"],
        eval_crop=recipe["eval_crop"], lighting_std=recipe["lighting_std"],
        workers=config.workers))
    model = models.create_model(config.model, source.num_classes, bf16=config.bf16,
                                width=config.width)
    loop_config = loop.LoopConfig(
        loss=config.loss, epochs=recipe["epochs"], batch_size=recipe["batch_size"],
        eval_batch_size=config.eval_batch_size, seed=config.seed,
        mean=pipeline.IMAGENET_MEAN, std=pipeline.IMAGENET_STD, augment=False, bf16=config.bf16,
        stop_after_steps=config.stop_after_steps, progress=config.progress)
    identity = {"model": config.model, "width": config.width,
                "recipe": {k: v for k, v in recipe.items() if k != "epochs"},
                "init_from": config.init_from}
    info = {"model": config.model, "dataset": source.name, "image_size": config.image_size,
            "recipe": recipe, "num_train_examples": source.num_train,
            "num_test_examples": source.num_eval, "num_processes": jax.process_count(),
            **(run_info or {})}
    prepare = ((lambda state: _load_backbone(state, config.init_from))
               if config.init_from else None)
    os.makedirs(workdir, exist_ok=True)
    result = loop.train_and_evaluate(loop_config, model, lambda spe: make_tx(recipe, spe),
                                     stream, workdir, info, identity, prepare_state=prepare)
    if result.status == loop.COMPLETED:
        rates = [r["images_per_s"] for r in report.read_jsonl(
            os.path.join(workdir, "metrics.jsonl")) if r.get("images_per_s")]
        # The first epoch of an invocation includes compilation: the median skips it.
        rates = rates[1:] if len(rates) > 1 else rates
        result.summary["images_per_s"] = float(np.median(rates)) if rates else None
        if jax.process_index() == 0:
            report.write_json(os.path.join(workdir, "summary.json"), result.summary)
    return result
