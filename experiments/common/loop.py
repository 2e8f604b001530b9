"""The generic epoch loop: resume, train with a progress bar, evaluate, log, checkpoint, report."""

import dataclasses
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from experiments.common import checkpoint, losses, parallel, report, steps
from experiments.common.data import Dataset


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
    num_bins: int = 15
    stop_after_steps: int = 0
    progress: bool = True


@dataclasses.dataclass
class RunResult:
    """What a call to `train_and_evaluate` produced.

    Attributes:
      state: final (or interrupted) TrainState.
      summary: the summary.json contents ({} when interrupted).
      interrupted_by: signal number (received by any process of a multi-host run), 0 for
        `stop_after_steps`, None when training completed.
    """

    state: steps.TrainState
    summary: dict
    interrupted_by: int | None = None


STOP_SYNC_EVERY = 10  # steps between the processes' agreements on a stop request (multi-host)


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


def epoch_loss_parts(sums: dict, use_gsc: bool) -> dict:
    """The epoch means of the training loss's parts, for metrics.jsonl.

    train_base_loss: the loss without GSC (CE / entropy / focal / LS / OLS); train_gsc_term: the GSC
    term unscaled by gamma, present only when gamma > 0. So train_loss = train_base_loss + gamma *
    train_gsc_term (up to float rounding), and train_base_loss = train_loss when gamma = 0. Both
    are omitted for an epoch resumed from a checkpoint that did not sum them (older harness).
    """
    n = float(sums["count"])
    if n == 0 or float(sums["parts_count"]) != n:
        return {}
    parts = {"train_base_loss": float(sums["base_loss"]) / n}
    if use_gsc:
        parts["train_gsc_term"] = float(sums["gsc_term"]) / n
    return parts


def train_and_evaluate(config: LoopConfig, model, make_tx: Callable, dataset: Dataset,
                       workdir: str, run_info: dict | None = None) -> RunResult:
    """Trains `model` on `dataset`, evaluating and checkpointing every epoch; resumes from workdir.

    Args:
      config: the run's hyper-parameters.
      model: a Flax Linen module called as `model(x [B,H,W,C], train=bool) -> logits [B, K]`.
      make_tx: `make_tx(steps_per_epoch) -> (optax transformation, lr_fn(step))`.
      dataset: in-memory data (labels possibly noisy already).
      workdir: holds checkpoints/, metrics.jsonl, summary.json, curves.png, reliability.png.
        metrics.jsonl has one record per epoch: epoch, step, train_loss, train_base_loss,
        train_gsc_term (only when gamma > 0; see `epoch_loss_parts`), test_top1, test_top5,
        test_nll, test_ece, learning_rate, epoch_time_s.
      run_info: extra fields copied into summary.json (model name, data source, ...).

    Returns:
      A RunResult; its `summary` has test_accuracy, test_ece, test_nll (fractions).
    """
    losses.validate_loss_spec(config.loss, dataset.num_classes)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh)
    n_train = len(dataset.train_labels)
    steps_per_epoch = n_train // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {n_train} training images.")
    os.makedirs(workdir, exist_ok=True)
    dtype = jnp.bfloat16 if config.bf16 else jnp.float32
    tx, lr_fn = make_tx(steps_per_epoch)
    key = jax.random.key(config.seed)
    init_key, shuffle_key, aug_key = (jax.random.fold_in(key, i) for i in range(3))
    repl = parallel.replicated(mesh)

    sample = jnp.zeros((1, *dataset.train_images.shape[1:]), dtype)
    init = jax.jit(lambda k: steps.init_state(model, tx, sample, k, dataset.num_classes,
                                              config.loss.name == "ols"), out_shardings=repl)
    state = init(init_key)
    manager = checkpoint.make_manager(workdir)
    state = checkpoint.restore_latest(manager, state)
    start = int(state.step)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    is_main = jax.process_index() == 0
    records = [r for r in report.read_jsonl(metrics_path) if r["step"] <= start]
    if is_main:
        report.write_jsonl(metrics_path, records)

    train_x = parallel.put_replicated(dataset.train_images, mesh)
    train_y = parallel.put_replicated(dataset.train_labels, mesh)
    test = steps.pad_to_multiple(dataset.test_images, dataset.test_labels, config.eval_batch_size)
    test_x, test_y, test_m = (parallel.put_replicated(a, mesh) for a in test)
    n_eval_batches = len(test[1]) // config.eval_batch_size

    train_step = jax.jit(steps.make_train_step(
        model=model, tx=tx, loss_spec=config.loss, lr_fn=lr_fn, steps_per_epoch=steps_per_epoch,
        batch_size=config.batch_size, mesh=mesh, mean=config.mean, std=config.std,
        use_augment=config.augment, compute_dtype=dtype, aug_key=aug_key), donate_argnums=0)
    eval_step = jax.jit(steps.make_eval_step(
        model=model, batch_size=config.eval_batch_size, mesh=mesh, mean=config.mean,
        std=config.std, compute_dtype=dtype, num_bins=config.num_bins))
    permute = jax.jit(steps.epoch_permutation, static_argnums=2, out_shardings=repl)

    def evaluate(st):
        sums = None
        for i in range(n_eval_batches):
            out = eval_step(st, test_x, test_y, test_m, i)
            sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        return steps.summarize_eval(jax.device_get(sums))

    total = config.epochs * steps_per_epoch
    step = start
    ev = None
    with checkpoint.StopOnSignal() as stop, tqdm(
            total=total, initial=start, disable=not (config.progress and is_main),
            desc=config.loss.label, unit="step", dynamic_ncols=True) as bar:
        log = bar.write if is_main else (lambda message: None)  # process 0 speaks for all
        while step < total:
            epoch = step // steps_per_epoch
            perm = permute(shuffle_key, epoch, n_train)
            t0 = time.time()
            for _ in range(step % steps_per_epoch, steps_per_epoch):
                state, m = train_step(state, train_x, train_y, perm)
                step += 1
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{float(m['loss']):.4f}",
                                    lr=f"{float(m['learning_rate']):.2g}")
                limit_hit = config.stop_after_steps and step - start >= config.stop_after_steps
                signum = agreed_stop_signal(stop, step)
                if (signum or limit_hit) and step < total:
                    checkpoint.save(manager, state)
                    manager.wait_until_finished()
                    log(f"Stopped at step {step}/{total}; checkpoint saved in {workdir}. "
                        "Run the same command again to resume.")
                    return RunResult(state, {}, signum or 0)
            ev = evaluate(state)
            sums = jax.device_get(state.epoch_sums)
            record = {"epoch": epoch + 1, "step": step,
                      "train_loss": float(sums["loss"] / max(sums["count"], 1.0)),
                      **epoch_loss_parts(sums, config.loss.gsc_gamma > 0),
                      "test_top1": ev["top1"], "test_top5": ev["top5"], "test_nll": ev["nll"],
                      "test_ece": ev["ece"], "learning_rate": float(lr_fn(step - 1)),
                      "epoch_time_s": time.time() - t0}
            records.append(record)
            if is_main:
                report.append_jsonl(metrics_path, record)
            log(f"epoch {epoch + 1}/{config.epochs}: train_loss {record['train_loss']:.4f} "
                f"top1 {ev['top1']:.4f} top5 {ev['top5']:.4f} nll {ev['nll']:.4f} "
                f"ece {ev['ece']:.4f} lr {record['learning_rate']:.3g} "
                f"({record['epoch_time_s']:.0f}s)")
            checkpoint.save(manager, state)
    manager.wait_until_finished()
    if ev is None:  # resumed an already finished run
        ev = evaluate(state)
    summary = {
        "test_accuracy": ev["top1"], "test_top5": ev["top5"], "test_ece": ev["ece"],
        "test_nll": ev["nll"],
        "best_test_accuracy": max((r["test_top1"] for r in records), default=ev["top1"]),
        "epochs": config.epochs, "steps": total, "loss": config.loss.label,
        "config": dataclasses.asdict(config), "num_devices": int(mesh.devices.size),
        "train_time_s": float(sum(r["epoch_time_s"] for r in records)),
        "reliability": ev["reliability"], **(run_info or {}),
    }
    if is_main:
        report.write_json(os.path.join(workdir, "summary.json"), summary)
        report.plot_curves(records, os.path.join(workdir, "curves.png"), config.loss.label)
        report.plot_reliability(ev["reliability"], os.path.join(workdir, "reliability.png"),
                                config.loss.label, ece=ev["ece"])
    return RunResult(state, summary)

