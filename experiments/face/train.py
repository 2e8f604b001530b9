"""One face-recognition run: ArcFace / CosFace (+ GSC) on an identity folder, verification each epoch.

Recipe 'arcface_casia' (GSC paper Table 5 says "the same settings as ArcFace", trained on
CASIA-WebFace; ArcFace, Deng et al. 2019, Sec. 4.1, as its CASIA recipe is usually quoted, not
checked against the paper's text here): IR-ResNet-50, 112x112 aligned faces, normalised with mean
and std 0.5, random horizontal flip only, SGD momentum 0.9, weight decay 5e-4 (coupled, as
PyTorch's SGD), batch 512, lr 0.1 divided by 10 at 20K and 28K iterations, 32K iterations (about 34
epochs of CASIA's 0.49M images: the milestones are kept at 20/32 and 28/32 of the run when
--epochs changes). Scale s = 64; margin 0.5 (ArcFace) or 0.4 (CosFace), insightface arcface_torch.

Training runs on the shared loop (`loop.train_and_evaluate`: checkpoint / resume / stop on a
signal, data parallel over a 'data' mesh, multi-host) with the streamed input pipeline of the
ImageNet experiment. The cosine classifier's weights are split over the devices along the
identities when there is more than one (`models.CosineHead`, model parallel as partial FC). Each
epoch evaluates closed-set identification on the identity folder's held-out images
(`data.identity_source`) and verification on every given pair set (10-fold accuracy, TAR at FAR
1e-3: `verification`), written to metrics.jsonl, summary.json, verification.json and roc.png.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments.common import augment, loop, losses, parallel, report
from experiments.face import data, models, verification
from experiments.imagenet import pipeline

FACE_MEAN = (0.5, 0.5, 0.5)
FACE_STD = (0.5, 0.5, 0.5)
RECIPES = {
    "arcface_casia": {"learning_rate": 0.1, "weight_decay": 5e-4, "momentum": 0.9,
                      "batch_size": 512, "epochs": 34, "milestones": (20 / 32, 28 / 32)},
}
DEFAULT_RECIPE = "arcface_casia"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One run; None fields take the recipe's value.

    Attributes:
      data_dir: identity folder DIR/<identity>/*.jpg.
      model: one of models.MODELS.
      loss: base loss + margin ('arcface' / 'cosface') + GSC (`losses.LossSpec`).
      epochs, batch_size, learning_rate: recipe overrides.
      eval_batch_size: global batch of the held-out and verification evaluations.
      image_size: model input (112 for aligned faces; the images are resized to it).
      seed: init, shuffling and augmentation seed.
      bf16: bfloat16 compute (parameters, loss and metrics float32).
      width: backbone width w (64; smaller for tests and CPU runs).
      depths: blocks per stage, overriding the model name's (small CPU models).
      embedding_size: D (512).
      dropout: dropout before the embedding's dense layer (0 in insightface).
      holdout_every: every N-th image of an identity is held out (`data.identity_source`).
      val_sets: verification sets: .bin files or folders with pairs.txt.
      val_dir: a folder searched for the six Table 5 .bin files (lfw.bin, ...).
      num_folds: folds of the verification protocol (10).
      shard_head: split the classifier over the devices (None: when there is more than one).
      workers: parallel decode calls per host (0: tf.data autotune).
      stop_after_steps: checkpoint and stop after N steps in this invocation (0 = off).
      progress: tqdm progress bars.
    """

    data_dir: str | None = None
    model: str = "iresnet50"
    loss: losses.LossSpec = losses.LossSpec(margin="arcface")
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    eval_batch_size: int = 256
    image_size: int = 112
    seed: int = 0
    bf16: bool = False
    width: int = 64
    depths: tuple | None = None
    embedding_size: int = 512
    dropout: float = 0.0
    holdout_every: int = 50
    val_sets: tuple = ()
    val_dir: str | None = None
    num_folds: int = 10
    shard_head: bool | None = None
    workers: int = 0
    stop_after_steps: int = 0
    progress: bool = True


def validate(config: RunConfig, num_classes: int | None = None) -> None:
    """Raises ValueError naming the flag and what is allowed, before any work."""
    if not config.data_dir:
        raise ValueError("--data_dir is required: an identity folder DIR/<identity>/*.jpg.")
    if config.model not in models.MODELS:
        raise ValueError(f"unknown --model {config.model!r}; choose one of "
                         f"{', '.join(models.MODELS)}.")
    if config.loss.margin not in ("arcface", "cosface"):
        raise ValueError(f"--margin must be arcface or cosface, got {config.loss.margin!r}.")
    for name in ("epochs", "batch_size", "learning_rate"):
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name} must be positive, got {value}.")
    for name in ("eval_batch_size", "width", "embedding_size"):
        if getattr(config, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(config, name)}.")
    if config.image_size < 16 or config.image_size % 16:
        raise ValueError(f"--image_size must be a positive multiple of 16 (four stride-2 stages),"
                         f" got {config.image_size}.")
    if config.depths is not None and (len(config.depths) != 4 or min(config.depths) < 1):
        raise ValueError(f"depths must be four positive block counts, got {config.depths}.")
    if not 0 <= config.dropout < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {config.dropout}.")
    if config.num_folds < 2:
        raise ValueError(f"--num_folds must be at least 2, got {config.num_folds}.")
    if num_classes is not None:
        losses.validate_loss_spec(config.loss, num_classes)


def resolved(config: RunConfig) -> dict:
    """The recipe with the config's overrides."""
    recipe = dict(RECIPES[DEFAULT_RECIPE], name=DEFAULT_RECIPE)
    for key in ("epochs", "batch_size", "learning_rate"):
        if getattr(config, key) is not None:
            recipe[key] = getattr(config, key)
    return recipe


def make_tx(recipe: dict, steps_per_epoch: int):
    """(optax SGD with coupled weight decay, lr_fn(step)): lr x0.1 at the recipe's milestones
    (fractions of the run's steps)."""
    total = recipe["epochs"] * steps_per_epoch
    boundaries = {round(f * total): 0.1 for f in recipe["milestones"] if round(f * total) > 0}
    lr_fn = optax.piecewise_constant_schedule(recipe["learning_rate"], boundaries)
    tx = optax.chain(optax.add_decayed_weights(recipe["weight_decay"]),
                     optax.sgd(lr_fn, momentum=recipe["momentum"]))
    return tx, lr_fn


def class_sharding(config: RunConfig, mesh) -> NamedSharding | None:
    """The classifier's sharding along the identities, or None for a replicated classifier."""
    shard = config.shard_head if config.shard_head is not None else mesh.devices.size > 1
    return NamedSharding(mesh, P(None, "data")) if shard else None


def head_state_sharding(head_sharding: NamedSharding | None, num_padded: int):
    """`state_sharding(mesh, abstract_state)` for the loop: leaves under a 'head' / 'kernel' path
    of shape [D, K'] (the classifier and its optimiser statistics) split along the classes,
    everything else replicated."""

    def state_sharding(mesh, abstract_state):
        replicated = parallel.replicated(mesh)

        def place(path, leaf):
            keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
            is_head = ("head" in keys and keys[-1] == "kernel" and leaf.ndim == 2
                       and leaf.shape[-1] == num_padded)
            return head_sharding if head_sharding is not None and is_head else replicated

        return jax.tree_util.tree_map_with_path(place, abstract_state)

    return state_sharding


def make_verifier(model: models.FaceModel, sets: list, config: RunConfig, mesh,
                  workdir: str):
    """`verify(state) -> {f'{set}_accuracy', f'{set}_accuracy_std', f'{set}_tar_at_far'}` over
    `sets` (VerificationSet); also writes verification.json and roc.png (process 0)."""
    batch = config.eval_batch_size
    batch_sharded, replicated = parallel.batch_sharded(mesh), parallel.replicated(mesh)
    dtype = jnp.bfloat16 if config.bf16 else jnp.float32

    @jax.jit
    def embed(state, images):
        x = augment.normalize(images, FACE_MEAN, FACE_STD, dtype)
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        out = model.apply(variables, x, train=False, method=models.FaceModel.embed)
        return jax.lax.with_sharding_constraint(out, replicated)

    def verify(state) -> dict:
        def embed_fn(images):
            global_images = jax.make_array_from_callback(
                images.shape, batch_sharded, lambda index: images[index])
            return np.asarray(jax.device_get(embed(state, global_images)))

        results, out = {}, {}
        for vset in sets:
            embeddings = verification.embed_pairs(embed_fn, vset.images, batch_size=batch)
            results[vset.name] = verification.evaluate(embeddings, vset.issame,
                                                       num_folds=config.num_folds)
            r = results[vset.name]
            out.update({f"{vset.name}_accuracy": float(r["accuracy"]),
                        f"{vset.name}_accuracy_std": float(r["accuracy_std"]),
                        f"{vset.name}_tar_at_far": float(r["tar"])})
        if jax.process_index() == 0 and results:
            report.write_json(os.path.join(workdir, "verification.json"), results)
            verification.plot_roc(results, os.path.join(workdir, "roc.png"),
                                  title=config.loss.label)
        return out

    return verify


def run(config: RunConfig, workdir: str, source: pipeline.Source | None = None,
        sets: list | None = None, run_info: dict | None = None) -> loop.RunResult:
    """Trains and evaluates one configuration in `workdir` on the shared loop, resuming from it.

    Args:
      config: the run.
      workdir: output directory.
      source: the identity folder (default: `data.identity_source(config.data_dir)`).
      sets: loaded verification sets (default: those `config.val_sets` / `config.val_dir` name).
      run_info: extra fields for summary.json.
    """
    validate(config)
    source = source or data.identity_source(config.data_dir, holdout_every=config.holdout_every)
    validate(config, source.num_classes)
    if sets is None:
        found = data.find_verification_sets(config.val_sets, config.val_dir)
        sets = [data.load_verification_set(n, p, config.image_size) for n, p in found.items()]
    recipe = resolved(config)
    stream = pipeline.ImageStream(source, pipeline.StreamConfig(
        global_batch=recipe["batch_size"], eval_batch=config.eval_batch_size,
        image_size=config.image_size, seed=config.seed, train_crop="resize",
        eval_crop="resize", workers=config.workers))
    mesh = parallel.make_mesh()
    head_sharding = class_sharding(config, mesh)
    model = models.create_model(
        config.model, source.num_classes, width=config.width,
        embedding_size=config.embedding_size, dropout=config.dropout,
        scale=config.loss.margin_scale, bf16=config.bf16, class_sharding=head_sharding,
        depths=config.depths)
    num_padded = models.padded_num_classes(source.num_classes, head_sharding)
    loop_config = loop.LoopConfig(
        loss=config.loss, epochs=recipe["epochs"], batch_size=recipe["batch_size"],
        eval_batch_size=config.eval_batch_size, seed=config.seed, mean=FACE_MEAN, std=FACE_STD,
        augment=False, bf16=config.bf16, stop_after_steps=config.stop_after_steps,
        progress=config.progress)
    identity = {"model": config.model, "width": config.width, "depths": model.depths,
                "embedding_size": config.embedding_size, "dropout": config.dropout,
                "recipe": {k: v for k, v in recipe.items() if k != "epochs"},
                "classifier_columns": num_padded}
    info = {"model": config.model, "dataset": source.name, "image_size": config.image_size,
            "recipe": recipe, "num_identities": source.num_classes,
            "num_train_examples": source.num_train, "num_test_examples": source.num_eval,
            "verification_sets": {s.name: int(len(s.issame)) for s in sets},
            "head_sharded": head_sharding is not None, "num_processes": jax.process_count(),
            **(run_info or {})}
    os.makedirs(workdir, exist_ok=True)
    return loop.train_and_evaluate(
        loop_config, model, lambda spe: make_tx(recipe, spe), stream, workdir, info, identity,
        state_sharding=head_state_sharding(head_sharding, num_padded),
        extra_evaluation=make_verifier(model, sets, config, mesh, workdir) if sets else None)
