"""The generic epoch loop: resume, train with a progress bar, evaluate, log, checkpoint, report."""

import dataclasses
import hashlib
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from experiments.common import (checkpoint, evaluation, losses, parallel, plateau, report,
                                steps, streaming)
from experiments.common.data import Dataset

# summary.json "status" values.
COMPLETED, STOPPED, DIVERGED = "completed", "stopped", "diverged"
# The final test metrics in summary.json; null unless the run completed.
SUMMARY_METRICS = ("test_accuracy", "test_top5", "test_ece", "test_nll", "best_test_accuracy")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Hyper-parameters of one training run (everything `train_and_evaluate` uses).

    Attributes:
      loss: the loss and its hyper-parameters.
      epochs: number of epochs.
      batch_size: global train batch (split across devices; last partial batch dropped).
      eval_batch_size: global eval batch (the test set is padded and masked).
      seed: seeds init, shuffling and augmentation.
      mean, std: per-channel normalisation of x / 255.
      augment: 4-px zero-pad random crop + horizontal flip on the training batches.
      bf16: bfloat16 compute in the model (parameters, loss and metrics stay float32).
      num_bins: ECE / reliability bins.
      stop_after_steps: if > 0, checkpoint and return after this many steps in this invocation
        (for time-sliced schedulers; the next invocation resumes).
      progress: show a tqdm progress bar.
      plateau_factor: if > 0, reduce-on-plateau on the validation top-1 (needs a validation split;
        `plateau` module): the updates are scaled by plateau_factor after more than
        plateau_patience epochs without improvement. 0 turns it off.
      plateau_patience: epochs without improvement that are tolerated (PyTorch's patience).
      per_class: report per-class accuracy and the confusion matrix of the evaluation splits
        (summary.json, confusion.png).
    """

    loss: losses.LossSpec
    epochs: int
    batch_size: int
    eval_batch_size: int
    seed: int
    mean: tuple
    std: tuple
    augment: bool = True
    bf16: bool = False
    num_bins: int = evaluation.NUM_BINS
    stop_after_steps: int = 0
    progress: bool = True
    plateau_factor: float = 0.0
    plateau_patience: int = 5
    per_class: bool = False


@dataclasses.dataclass
class RunResult:
    """What a call to `train_and_evaluate` produced.

    Attributes:
      state: final (stopped, or diverged) TrainState.
      summary: the summary.json contents.
      interrupted_by: signal number (received by any process of a multi-host run), 0 for
        `stop_after_steps`, None otherwise.
      status: COMPLETED, STOPPED (resume with the same command) or DIVERGED.
      message: one line for the user when the run did not complete, else "".
    """

    state: steps.TrainState
    summary: dict
    interrupted_by: int | None = None
    status: str = COMPLETED
    message: str = ""


STOP_SYNC_EVERY = 10  # steps between the processes' agreements on a stop request (multi-host)
CHECK_EVERY = 10  # steps between reads of the loss (progress bar) and the divergence flag


def agreed_stop_signal(stop: checkpoint.StopOnSignal, step: int) -> int | None:
    """The signal to stop on after `step`, the same on every process; None to go on.

    In a single process this is just `stop.signum`. In a multi-host run a signal may reach only
    some processes, or reach them at different steps, while every train step and checkpoint save
    is collective: so every STOP_SYNC_EVERY steps the processes all-gather their requests and all
    stop if any got a signal (the largest signal number is reported).
    """
    if jax.process_count() == 1:
        return stop.signum
    if step % STOP_SYNC_EVERY:
        return None
    signums = multihost_utils.process_allgather(np.int32(stop.signum or 0))
    return int(np.max(signums)) or None


def run_identity(config: LoopConfig, dataset: Dataset, extra: dict | None = None) -> dict:
    """What must not change when a run is resumed: the loss and its hyper-parameters, the batch
    size, the seed, the preprocessing, the data (source, sizes, shapes, a digest of the train and
    test labels, so that label noise and subsets count), plus the caller's `extra` (model, recipe,
    ...)."""
    if isinstance(dataset, streaming.StreamingDataset):
        return {"loss": config.loss.hyperparameters(), "batch_size": config.batch_size,
                "seed": config.seed, "mean": list(config.mean), "std": list(config.std),
                "data": dataset.identity(), **(extra or {})}
    labels = hashlib.sha256()
    val = (dataset.val_labels,) if dataset.has_validation else ()
    for split in (dataset.train_labels, dataset.test_labels, *val):
        labels.update(np.ascontiguousarray(split, np.int64).tobytes())
    optional = {}
    if dataset.has_validation:
        optional["num_val_examples"] = int(len(dataset.val_labels))
    if config.plateau_factor > 0:
        optional["plateau"] = [config.plateau_factor, config.plateau_patience]
    return {**optional,
        "loss": config.loss.hyperparameters(), "batch_size": config.batch_size,
        "seed": config.seed, "mean": list(config.mean), "std": list(config.std),
        "augment": config.augment,
        "data": {"source": dataset.source, "num_classes": dataset.num_classes,
                 "image_shape": list(dataset.train_images.shape[1:]),
                 "num_train_examples": int(len(dataset.train_labels)),
                 "num_test_examples": int(len(dataset.test_labels)),
                 "labels_sha256": labels.hexdigest()[:16]},
        **(extra or {}),
    }


def _divergence_message(step: int, steps_per_epoch: int, total: int, workdir: str) -> str:
    return (f"training diverged: the training loss was not finite at step {step}/{total} (epoch "
            f"{(step - 1) // steps_per_epoch + 1}); stopped without evaluating, "
            f"{os.path.join(workdir, 'summary.json')} has status 'diverged'. Lower the learning "
            "rate or the loss's strength.")


def train_and_evaluate(config: LoopConfig, model, make_tx: Callable, dataset: Dataset,
                       workdir: str, run_info: dict | None = None,
                       identity: dict | None = None, *, train_views: Callable | None = None,
                       eval_views: Callable | None = None,
                       prepare_state: Callable | None = None,
                       state_sharding: Callable | None = None,
                       extra_evaluation: Callable | None = None) -> RunResult:
    """Trains `model` on `dataset`, evaluating and checkpointing every epoch; resumes from workdir.

    Args:
      config: the run's hyper-parameters.
      model: a Flax Linen module called as `model(x [B,H,W,C], train=bool) -> logits [B, K]`.
      make_tx: `make_tx(steps_per_epoch) -> (optax transformation, lr_fn(step))`.
      dataset: in-memory data (labels possibly noisy already), or a
        `streaming.StreamingDataset` whose batches arrive augmented (config.augment,
        train_views and eval_views do not apply) and whose evaluation is streamed.
      workdir: holds checkpoints/, config.json, metrics.jsonl, summary.json, curves.png,
        reliability.png. metrics.jsonl has one record per epoch: epoch, step, train_loss,
        train_base_loss, train_gsc_term (only when GSC is on; see `steps.epoch_means`),
        test_top1, test_top5, test_nll, test_ece, learning_rate, epoch_time_s, images_per_s
        (training images per second of the epoch's steps in this invocation).
      run_info: extra fields copied into summary.json (model name, data source, ...).
      identity: extra fields of the run's configuration that a resume must match (model, recipe,
        ...), saved in config.json with `run_identity`'s.
      train_views: `train_views(key, images) -> [B, V, h, w, C]`: V training examples per image
        in place of config.augment's crop and flip (`steps.make_train_step`).
      eval_views: `eval_views(images) -> [B, V, h, w, C]`: evaluation averages the logits over
        the V views of each image (e.g. TenCrop; `steps.make_logits_fn`).
      prepare_state: `prepare_state(state) -> state` applied to a fresh run's initial state (e.g.
        pretrained weights); a resumed run restores its checkpoint instead.
      state_sharding: `state_sharding(mesh, abstract_state) -> shardings` (a pytree of
        NamedShardings shaped like the state) places parts of the state across the devices
        (e.g. a class-sharded classifier, model parallel); default: everything replicated.
      extra_evaluation: `extra_evaluation(state) -> {name: float}`, run after each epoch's test
        evaluation (e.g. face verification); its values join the epoch's record (metrics.jsonl,
        TensorBoard, the printed line) and, from the final state, summary.json.

    With a validation split (`dataset.val_images`), every epoch's record also has val_top1,
    val_top5, val_nll and val_ece; the state with the best validation top-1 so far is kept in
    WORKDIR/checkpoints_best, and the summary adds val_accuracy (final), best_val_accuracy,
    best_val_epoch and the test metrics of the best-validation state (test_accuracy_at_best_val,
    test_ece_at_best_val, test_nll_at_best_val).

    Returns:
      A RunResult. Its `summary` (also in summary.json) has "status": "completed" with
      test_accuracy, test_top5, test_ece, test_nll and best_test_accuracy (fractions); "stopped"
      (resume with the same command) or "diverged" (with "diverged_at_step") with those metrics
      null. A stop on any step, also the last of an epoch, leaves metrics.jsonl as an
      uninterrupted run would have it at that point.

    Raises:
      checkpoint.ConfigMismatchError: workdir holds a run with another configuration.
    """
    losses.validate_loss_spec(config.loss, dataset.num_classes)
    if config.plateau_factor > 0:
        if not dataset.has_validation:
            raise ValueError("plateau_factor > 0 reduces the learning rate on the validation "
                             "accuracy: the dataset needs a validation split (val_images).")
        if not 0 < config.plateau_factor < 1 or config.plateau_patience < 0:
            raise ValueError(f"need 0 < plateau_factor < 1 and plateau_patience >= 0, got "
                             f"{config.plateau_factor} and {config.plateau_patience}.")
    stream = isinstance(dataset, streaming.StreamingDataset)
    if stream and (train_views is not None or eval_views is not None):
        raise ValueError("a streamed dataset brings its own augmentation: train_views and "
                         "eval_views apply to in-memory datasets only.")
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh)
    n_train = 0 if stream else len(dataset.train_labels)
    steps_per_epoch = (dataset.steps_per_epoch(config.batch_size) if stream
                       else n_train // config.batch_size)
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {n_train} training images.")
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    say = tqdm.write if is_main else (lambda message: None)  # process 0 speaks for all
    manager = checkpoint.make_manager(workdir)
    extended = checkpoint.check_run_config(
        workdir, run_identity(config, dataset, identity), config.epochs,
        resuming=manager.latest_step() is not None, write=is_main)
    if extended:
        say(extended)

    dtype = jnp.bfloat16 if config.bf16 else jnp.float32
    tx, lr_fn = make_tx(steps_per_epoch)
    plateau_spec = None
    if config.plateau_factor > 0:
        plateau_spec = plateau.PlateauSpec(config.plateau_factor, config.plateau_patience)
        tx = plateau.scale_by_plateau(tx, plateau_spec)
    key = jax.random.key(config.seed)
    init_key, shuffle_key, aug_key, dropout_key = (jax.random.fold_in(key, i) for i in range(4))
    repl = parallel.replicated(mesh)
    sample = jnp.zeros((1, *(dataset.image_shape if stream else steps.model_input_shape(
        dataset.train_images, train_views, eval_views))), dtype)
    init_fn = lambda k: steps.init_state(model, tx, sample, k,  # noqa: E731
                                         dataset.num_classes, config.loss.uses_ols)
    shardings = (repl if state_sharding is None
                 else state_sharding(mesh, jax.eval_shape(init_fn, init_key)))
    init = jax.jit(init_fn, out_shardings=shardings)
    state = init(init_key)
    if prepare_state is not None and manager.latest_step() is None:
        state = prepare_state(state)
    state = checkpoint.restore_latest(manager, state)
    start = int(state.step)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    records = [r for r in report.read_jsonl(metrics_path) if r["step"] <= start]
    if is_main:
        report.write_jsonl(metrics_path, records)
    scalars = report.TensorBoardScalars(os.path.join(workdir, "tensorboard")) if is_main else None

    if not stream:
        train_x = parallel.put_replicated(dataset.train_images, mesh)
        train_y = parallel.put_replicated(dataset.train_labels, mesh)
        test = evaluation.pad_to_multiple(dataset.test_images, dataset.test_labels,
                                          config.eval_batch_size)
        test_x, test_y, test_m = (parallel.put_replicated(a, mesh) for a in test)
    if dataset.has_validation:
        val = evaluation.pad_to_multiple(dataset.val_images, dataset.val_labels,
                                         config.eval_batch_size)
        val_x, val_y, val_m = (parallel.put_replicated(a, mesh) for a in val)

    train_step = jax.jit(steps.make_train_step(
        model=model, tx=tx, loss_spec=config.loss, lr_fn=lr_fn, steps_per_epoch=steps_per_epoch,
        batch_size=config.batch_size, mesh=mesh, mean=config.mean, std=config.std,
        use_augment=config.augment, compute_dtype=dtype, aug_key=aug_key,
        train_views=train_views, dropout_key=dropout_key),
        out_shardings=(shardings, repl), donate_argnums=0)
    evaluator = evaluation.make_evaluator(
        steps.make_logits_fn(model, mean=config.mean, std=config.std, compute_dtype=dtype,
                             eval_views=eval_views),
        batch_size=config.eval_batch_size, num_classes=dataset.num_classes,
        num_bins=config.num_bins, replicated=repl, batch_sharded=parallel.batch_sharded(mesh),
        confusion=config.per_class)
    permute = jax.jit(steps.epoch_permutation, static_argnums=2, out_shardings=repl)
    evaluate = lambda st: evaluator(st, test_x, test_y, test_m)  # noqa: E731
    if stream:
        train_step = jax.jit(steps.make_batch_train_step(
            model=model, tx=tx, loss_spec=config.loss, lr_fn=lr_fn,
            steps_per_epoch=steps_per_epoch, mean=config.mean, std=config.std,
            compute_dtype=dtype, dropout_key=dropout_key),
            out_shardings=(shardings, repl), donate_argnums=0)
        evaluate = streaming.make_evaluator(
            steps.make_logits_fn(model, mean=config.mean, std=config.std, compute_dtype=dtype),
            dataset, batch_size=config.eval_batch_size, num_bins=config.num_bins,
            replicated=repl, batch_sharded=parallel.batch_sharded(mesh),
            confusion=config.per_class)
    evaluate_val = lambda st: evaluator(st, val_x, val_y, val_m)  # noqa: E731
    best_manager = (checkpoint.make_manager(workdir, max_to_keep=1, name="checkpoints_best")
                    if dataset.has_validation else None)
    plateau_update = jax.jit(lambda st, accuracy: st.replace(opt_state=plateau.epoch_update(
        plateau_spec, st.opt_state, accuracy)), out_shardings=shardings, donate_argnums=0)
    lr_scale = lambda st: (float(plateau.current_scale(st.opt_state))  # noqa: E731
                           if plateau_spec else 1.0)
    latest_val, latest_extra = {}, {}

    total = config.epochs * steps_per_epoch
    base_summary = {"epochs": config.epochs, "steps": total, "loss": config.loss.label,
                    "config": dataclasses.asdict(config), "num_devices": int(mesh.devices.size),
                    **(run_info or {})}

    def finish_early(state, status, message, **fields) -> RunResult:
        """Writes a summary.json whose metrics are null and whose status says why."""
        manager.wait_until_finished()  # the last epoch's checkpoint, saved asynchronously
        if best_manager is not None:
            best_manager.wait_until_finished()
        summary = {"status": status, "message": message, "step": int(state.step),
                   **{k: None for k in SUMMARY_METRICS}, **fields, **base_summary}
        if is_main:
            report.write_json(os.path.join(workdir, "summary.json"), summary)
        if status == STOPPED:  # a diverged run's message is for the caller to report
            say(message)
        return RunResult(state, summary, fields.get("interrupted_by"), status, message)

    def diverged(state, bad_step: int) -> RunResult:
        return finish_early(state, DIVERGED, _divergence_message(
            bad_step, steps_per_epoch, total, workdir), diverged_at_step=bad_step)

    def end_epoch(state, epoch: int, seconds: float, images_per_s: float | None = None) -> dict:
        """Evaluates, and appends the epoch's record to metrics.jsonl (process 0)."""
        ev = evaluate(state)
        val_fields = {}
        if dataset.has_validation:
            latest_val.update(evaluate_val(state))
            val_fields = {f"val_{k}": latest_val[k] for k in ("top1", "top5", "nll", "ece")}
        extra = extra_evaluation(state) if extra_evaluation is not None else {}
        latest_extra.update(extra)
        record = {"epoch": epoch, "step": epoch * steps_per_epoch,
                  **steps.epoch_means(jax.device_get(state.epoch_sums), config.loss),
                  "test_top1": ev["top1"], "test_top5": ev["top5"], "test_nll": ev["nll"],
                  "test_ece": ev["ece"], **val_fields, **extra,
                  "learning_rate": float(lr_fn(epoch * steps_per_epoch - 1)) * lr_scale(state),
                  "epoch_time_s": seconds, "images_per_s": images_per_s}
        records.append(record)
        if is_main:
            report.append_jsonl(metrics_path, record)
            scalars.write(record)
        val_text = f"val_top1 {val_fields['val_top1']:.4f} " if val_fields else ""
        val_text += "".join(f"{k} {v:.4f} " for k, v in extra.items())
        say(f"epoch {epoch}/{config.epochs}: train_loss {record['train_loss']:.4f} "
            f"top1 {ev['top1']:.4f} top5 {ev['top5']:.4f} nll {ev['nll']:.4f} "
            f"ece {ev['ece']:.4f} {val_text}lr {record['learning_rate']:.3g} ({seconds:.0f}s)")
        return ev

    def after_validation(state, update_plateau: bool = True):
        """Steps the plateau scale on the epoch's validation top-1; keeps the best state."""
        if not dataset.has_validation:
            return state
        accuracy = records[-1]["val_top1"]
        if plateau_spec and update_plateau:
            state = plateau_update(state, accuracy)
        earlier = [r["val_top1"] for r in records[:-1] if r.get("val_top1") is not None]
        if accuracy is not None and accuracy > max(earlier, default=-1.0):
            checkpoint.save(best_manager, state)
        return state

    ev = None
    if 0 < start <= total and start % steps_per_epoch == 0 and not any(
            r["epoch"] == start // steps_per_epoch for r in records):
        # The checkpoint ends an epoch whose record is missing (its line was cut short by a
        # crash): the checkpoint holds that epoch's sums, so evaluate it now.
        ev = end_epoch(state, start // steps_per_epoch, 0.0)
        state = after_validation(state, update_plateau=False)  # saved after the update

    step = start
    batches = dataset.train_batches(batch_size=config.batch_size, start_step=start,
                                    num_steps=total, sharding=parallel.batch_sharded(mesh)
                                    ) if stream else None
    with checkpoint.StopOnSignal() as stop, tqdm(
            total=total, initial=start, disable=not (config.progress and is_main),
            desc=config.loss.label, unit="step", dynamic_ncols=True) as bar:
        say = bar.write if is_main else say
        while step < total:
            epoch = step // steps_per_epoch
            perm = None if stream else permute(shuffle_key, epoch, n_train)
            t0, step0 = time.time(), step
            for _ in range(step % steps_per_epoch, steps_per_epoch):
                if stream:
                    batch = next(batches)
                    state, m = train_step(state, batch["image"], batch["label"])
                else:
                    state, m = train_step(state, train_x, train_y, perm)
                step += 1
                bar.update(1)
                epoch_done = step % steps_per_epoch == 0
                if step % CHECK_EVERY == 0 or epoch_done:
                    loss, lr, bad = jax.device_get(
                        (m["loss"], m["learning_rate"], state.first_nonfinite_step))
                    if bad:
                        return diverged(state, int(bad))
                    rate = (step - step0) * config.batch_size / max(time.time() - t0, 1e-9)
                    bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{float(lr):.2g}",
                                    img_s=f"{rate:.1f}")
                if epoch_done:
                    seconds = time.time() - t0
                    ev = end_epoch(state, epoch + 1, seconds,
                                   (step - step0) * config.batch_size / max(seconds, 1e-9))
                    state = after_validation(state)
                    checkpoint.save(manager, state)
                limit_hit = config.stop_after_steps and step - start >= config.stop_after_steps
                signum = agreed_stop_signal(stop, step)
                if (signum or limit_hit) and step < total:
                    bad = int(jax.device_get(state.first_nonfinite_step))
                    if bad:  # never checkpoint a diverged state
                        return diverged(state, bad)
                    checkpoint.save(manager, state)
                    return finish_early(
                        state, STOPPED,
                        f"Stopped at step {step}/{total}; checkpoint saved in {workdir}. "
                        "Run the same command again to resume.",
                        interrupted_by=signum or 0)
    manager.wait_until_finished()
    if ev is None:  # resumed an already finished run
        ev = evaluate(state)
        if extra_evaluation is not None:
            latest_extra.update(extra_evaluation(state))
        if dataset.has_validation:
            latest_val.update(evaluate_val(state))
    accuracies = [r["test_top1"] for r in records
                  if r.get("test_top1") is not None and np.isfinite(r["test_top1"])]
    summary = {
        "status": COMPLETED,
        "test_accuracy": ev["top1"], "test_top5": ev["top5"], "test_ece": ev["ece"],
        "test_nll": ev["nll"], "test_aurc": ev["aurc"],
        "best_test_accuracy": max(accuracies, default=ev["top1"]),
        "test_nonfinite_examples": ev["nonfinite"],
        **base_summary,
        "train_time_s": float(sum(r["epoch_time_s"] for r in records)),
        "reliability": ev["reliability"], "risk_coverage": ev["risk_coverage"],
        **latest_extra,
    }
    if config.per_class:
        summary.update(test_per_class_accuracy=ev["per_class_accuracy"],
                       test_confusion=ev["confusion"])
    if dataset.has_validation:
        summary.update(_best_validation_summary(best_manager, state, evaluate, records,
                                                steps_per_epoch, config.per_class))
        summary.update(val_accuracy=latest_val["top1"], val_nll=latest_val["nll"],
                       val_ece=latest_val["ece"])
        if config.per_class:
            summary["val_per_class_accuracy"] = latest_val["per_class_accuracy"]
    if is_main:
        report.write_json(os.path.join(workdir, "summary.json"), summary)
        report.plot_curves(records, os.path.join(workdir, "curves.png"), config.loss.label)
        report.plot_reliability(ev["reliability"], os.path.join(workdir, "reliability.png"),
                                config.loss.label, ece=ev["ece"])
        report.plot_risk_coverage(ev["risk_coverage"], os.path.join(workdir, "risk_coverage.png"),
                                  f"{config.loss.label}: test")
        if config.per_class:
            report.plot_confusion(ev["confusion"], dataset.class_names,
                                  os.path.join(workdir, "confusion.png"),
                                  f"{config.loss.label}: test, final model (% of each label)")
    return RunResult(state, summary)


def _best_validation_summary(best_manager, state, evaluate: Callable, records: list,
                             steps_per_epoch: int, per_class: bool) -> dict:
    """The best-validation state's epoch, validation top-1 and test metrics, for summary.json."""
    best_manager.wait_until_finished()
    step = best_manager.latest_step()
    if step is None:  # no epoch had a finite validation accuracy
        return {"best_val_accuracy": None, "best_val_epoch": None,
                "test_accuracy_at_best_val": None}
    epoch = step // steps_per_epoch
    best = checkpoint.restore_latest(best_manager, state)
    ev = evaluate(best)
    accuracy = next((r["val_top1"] for r in records if r["epoch"] == epoch), None)
    out = {"best_val_accuracy": accuracy, "best_val_epoch": epoch,
           "test_accuracy_at_best_val": ev["top1"], "test_ece_at_best_val": ev["ece"],
           "test_nll_at_best_val": ev["nll"]}
    if per_class:
        out.update(test_per_class_accuracy_at_best_val=ev["per_class_accuracy"],
                   test_confusion_at_best_val=ev["confusion"])
    return out
