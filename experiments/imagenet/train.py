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
import math
import os
import time

import flax
import gsc_jax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments.common import augment, checkpoint, evaluation, loop, losses, parallel, report
from experiments.common import steps
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


def make_train_step(*, model, tx, loss_spec: losses.LossSpec, lr_fn, steps_per_epoch: int,
                    mean, std, compute_dtype):
    """`train_step(state, batch {'image' u8 [B,S,S,3], 'label' [B]}) -> (state, metrics)`.

    The streaming counterpart of `steps.make_train_step` (same state, loss, OLS epoch update,
    epoch sums and divergence flag); the batch arrives augmented from the input pipeline.
    """
    objective_fn = losses.make_objective(loss_spec)

    def train_step(state: steps.TrainState, batch):
        i = state.step % steps_per_epoch
        x = augment.normalize(batch["image"], mean, std, compute_dtype)
        labels = batch["label"]
        soft = state.ols.soft_labels if loss_spec.uses_ols else None

        def objective(params):
            logits, batch_stats = steps.apply_model(model, state, params, x, train=True)
            loss, parts = objective_fn(logits, labels, soft)
            return loss, (parts, logits, batch_stats)

        (loss, (parts, logits, batch_stats)), grads = jax.value_and_grad(
            objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        ols = state.ols
        if loss_spec.uses_ols:
            ols = gsc_jax.ols_update(ols, jax.lax.stop_gradient(logits), labels)
            ols = jax.tree.map(lambda a, b: jnp.where(i == steps_per_epoch - 1, a, b),
                               gsc_jax.ols_finalize_epoch(ols), ols)
        values = {"loss": loss, "base_loss": parts["base_loss"],
                  "gsc_term": parts.get("gsc_term", jnp.zeros((), jnp.float32)),
                  "count": jnp.ones((), jnp.float32)}
        sums = {k: jnp.where(i > 0, state.epoch_sums[k] + values[k], values[k])
                for k in steps.EPOCH_SUM_KEYS}
        first_bad = jnp.where((state.first_nonfinite_step == 0) & ~jnp.isfinite(loss),
                              state.step + 1, state.first_nonfinite_step)
        return state.replace(step=state.step + 1,
                             params=optax.apply_updates(state.params, updates),
                             batch_stats=batch_stats, opt_state=opt_state, ols=ols,
                             epoch_sums=sums, first_nonfinite_step=first_bad), \
            {**parts, "learning_rate": lr_fn(state.step)}

    return train_step


def make_eval_step(model, *, mean, std, compute_dtype, num_classes: int):
    """`eval_step(sums, state, batch {'image','label','mask'}) -> sums` (evaluation.batch_sums)."""
    logits_fn = steps.make_logits_fn(model, mean=mean, std=std, compute_dtype=compute_dtype)

    def eval_step(sums, state, batch):
        logits = logits_fn(state, batch["image"])
        return evaluation.add(sums, evaluation.batch_sums(logits, batch["label"],
                                                          example_mask=batch["mask"]))

    return eval_step


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
    """Trains and evaluates (every epoch) one configuration in `workdir`, resuming from it.

    metrics.jsonl has one record per epoch (as the shared loop's, plus images_per_s: training
    images per second of the epoch, input pipeline included); summary.json the final metrics.
    """
    validate(config)
    source = source or pipeline.make_source(config.dataset, config.data_dir)
    validate(config, source.num_classes)
    recipe = resolved(config)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(recipe["batch_size"], mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh)
    stream = pipeline.StreamConfig(
        global_batch=recipe["batch_size"], eval_batch=config.eval_batch_size,
        image_size=config.image_size, seed=config.seed, train_crop=recipe["train_crop"],
        eval_crop=recipe["eval_crop"], lighting_std=recipe["lighting_std"],
        workers=config.workers)
    spe = pipeline.steps_per_epoch(source, stream)
    epochs, total = recipe["epochs"], recipe["epochs"] * spe
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    say = tqdm.write if is_main else (lambda message: None)
    manager = checkpoint.make_manager(workdir)
    identity = {"dataset": source.name, "num_classes": source.num_classes,
                "num_train": source.num_train, "num_eval": source.num_eval,
                "model": config.model, "width": config.width, "loss": config.loss.hyperparameters(),
                "recipe": {k: v for k, v in recipe.items() if k != "epochs"},
                "image_size": config.image_size, "seed": config.seed,
                "init_from": config.init_from}
    extended = checkpoint.check_run_config(workdir, identity, epochs,
                                           resuming=manager.latest_step() is not None,
                                           write=is_main)
    if extended:
        say(extended)

    dtype = jnp.bfloat16 if config.bf16 else jnp.float32
    model = models.create_model(config.model, source.num_classes, bf16=config.bf16,
                                width=config.width)
    tx, lr_fn = make_tx(recipe, spe)
    repl, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    sample = jnp.zeros((1, config.image_size, config.image_size, 3), dtype)
    init = jax.jit(lambda k: steps.init_state(model, tx, sample, k, source.num_classes,
                                              config.loss.uses_ols), out_shardings=repl)
    state = init(jax.random.key(config.seed))
    if manager.latest_step() is None and config.init_from:
        state = _load_backbone(state, config.init_from)
    state = checkpoint.restore_latest(manager, state)
    start = int(state.step)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    records = [r for r in report.read_jsonl(metrics_path) if r["step"] <= start]
    if is_main:
        report.write_jsonl(metrics_path, records)

    mean, std = pipeline.IMAGENET_MEAN, pipeline.IMAGENET_STD
    train_step = jax.jit(make_train_step(
        model=model, tx=tx, loss_spec=config.loss, lr_fn=lr_fn, steps_per_epoch=spe, mean=mean,
        std=std, compute_dtype=dtype), donate_argnums=0)
    eval_step = jax.jit(make_eval_step(model, mean=mean, std=std, compute_dtype=dtype,
                                       num_classes=source.num_classes), donate_argnums=0)
    zeros = jax.jit(lambda: evaluation.zeros(source.num_classes), out_shardings=repl)

    def evaluate(state) -> dict:
        sums = zeros()
        for batch in pipeline.prefetch_to_devices(pipeline.eval_batches(source, stream), sharded):
            sums = eval_step(sums, state, batch)
        return evaluation.finalize(jax.device_get(sums))

    base_summary = {"epochs": epochs, "steps": total, "loss": config.loss.label,
                    "model": config.model, "dataset": source.name,
                    "image_size": config.image_size, "recipe": recipe,
                    "num_devices": int(mesh.devices.size),
                    "num_processes": jax.process_count(), **(run_info or {})}

    def finish_early(state, status, message, **fields):
        summary = {"status": status, "message": message, "step": int(state.step),
                   **{k: None for k in loop.SUMMARY_METRICS}, **fields, **base_summary}
        if is_main:
            report.write_json(os.path.join(workdir, "summary.json"), summary)
        say(message)
        return loop.RunResult(state, summary, fields.get("interrupted_by"), status, message)

    def end_epoch(state, epoch: int, seconds: float, images_per_s: float) -> dict:
        eval_start = time.time()
        ev = evaluate(state)
        record = {"epoch": epoch, "step": epoch * spe,
                  **steps.epoch_means(jax.device_get(state.epoch_sums), config.loss),
                  "test_top1": ev["top1"], "test_top5": ev["top5"], "test_nll": ev["nll"],
                  "test_ece": ev["ece"], "test_count": ev["count"],
                  "learning_rate": float(lr_fn(epoch * spe - 1)), "epoch_time_s": seconds,
                  "images_per_s": images_per_s, "eval_time_s": time.time() - eval_start}
        records.append(record)
        if is_main:
            report.append_jsonl(metrics_path, record)
        say(f"epoch {epoch}/{epochs}: train_loss {record['train_loss']:.4f} "
            f"top1 {ev['top1']:.4f} top5 {ev['top5']:.4f} nll {ev['nll']:.4f} "
            f"ece {ev['ece']:.4f} lr {record['learning_rate']:.3g} ({seconds:.0f}s, "
            f"{images_per_s:.1f} img/s)")
        return ev

    ev = None
    step = start
    batches = pipeline.prefetch_to_devices(
        pipeline.train_batches(source, stream, start_step=start, num_steps=total), sharded)
    with checkpoint.StopOnSignal() as stop, tqdm(
            total=total, initial=start, disable=not (config.progress and is_main),
            desc=config.loss.label, unit="step", dynamic_ncols=True) as bar:
        say = bar.write if is_main else say
        t_epoch, first_of_epoch, t_window, window_start = time.time(), step, time.time(), step
        for batch in batches:
            state, m = train_step(state, batch)
            step += 1
            bar.update(1)
            epoch_done = step % spe == 0
            if step % loop.CHECK_EVERY == 0 or epoch_done:
                loss, lr, bad = jax.device_get(
                    (m["loss"], m["learning_rate"], state.first_nonfinite_step))
                if bad:
                    return finish_early(state, loop.DIVERGED, loop._divergence_message(
                        int(bad), spe, total, workdir), diverged_at_step=int(bad))
                now = time.time()
                rate = (step - window_start) * stream.global_batch / max(now - t_window, 1e-9)
                t_window, window_start = now, step
                bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{float(lr):.2g}",
                                img_s=f"{rate:.1f}")
            if epoch_done:
                seconds = time.time() - t_epoch
                rate = (step - first_of_epoch) * stream.global_batch / max(seconds, 1e-9)
                ev = end_epoch(state, step // spe, seconds, rate)
                checkpoint.save(manager, state)
                t_epoch, first_of_epoch = time.time(), step
                t_window, window_start = t_epoch, step
            limit_hit = config.stop_after_steps and step - start >= config.stop_after_steps
            signum = loop.agreed_stop_signal(stop, step)
            if (signum or limit_hit) and step < total:
                bad = int(jax.device_get(state.first_nonfinite_step))
                if bad:
                    return finish_early(state, loop.DIVERGED, loop._divergence_message(
                        bad, spe, total, workdir), diverged_at_step=bad)
                checkpoint.save(manager, state)
                manager.wait_until_finished()
                return finish_early(state, loop.STOPPED,
                                    f"Stopped at step {step}/{total}; checkpoint saved in "
                                    f"{workdir}. Run the same command again to resume.",
                                    interrupted_by=signum or 0)
    manager.wait_until_finished()
    if ev is None:
        ev = evaluate(state)
    accuracies = [r["test_top1"] for r in records
                  if r.get("test_top1") is not None and math.isfinite(r["test_top1"])]
    # The first epoch of an invocation includes compilation: the median skips it when it can.
    rates = [r["images_per_s"] for r in records if r.get("images_per_s")]
    rates = rates[1:] if len(rates) > 1 else rates
    summary = {"status": loop.COMPLETED, "test_accuracy": ev["top1"], "test_top5": ev["top5"],
               "test_ece": ev["ece"], "test_nll": ev["nll"],
               "best_test_accuracy": max(accuracies, default=ev["top1"]),
               "test_count": ev["count"], "test_nonfinite_examples": ev["nonfinite"],
               **base_summary,
               "train_time_s": float(sum(r["epoch_time_s"] for r in records)),
               "images_per_s": float(np.median(rates)) if rates else None,
               "reliability": ev["reliability"]}
    if is_main:
        report.write_json(os.path.join(workdir, "summary.json"), summary)
        report.plot_curves(records, os.path.join(workdir, "curves.png"), config.loss.label)
        report.plot_reliability(ev["reliability"], os.path.join(workdir, "reliability.png"),
                                config.loss.label, ece=ev["ece"])
    return loop.RunResult(state, summary)
