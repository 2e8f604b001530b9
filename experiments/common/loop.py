"""The one training loop: `train_and_evaluate(config, workdir)` for every experiment.

It resumes from the workdir, trains with a progress bar, runs the evaluators the config declares
after every epoch, logs whatever they yield, checkpoints, and writes summary.json. It never names
a metric: the task supplies the data source and the model (`config.task`), the evaluators the
metrics (`evaluators`), the config everything else.

Workdir: checkpoints/ (and checkpoints_best/ with `config.best.metric`), config.json (the run's
identity, checked on resume), metrics.jsonl (one record per epoch: 'train/<part>' means of the
objective's parts, '<evaluator>/<metric>', learning_rate, epoch_time_s, images_per_s),
tensorboard/, summary.json, curves.png and the evaluators' figures.

Kept from the experiments' earlier loops: exact resume on any step (the data is a pure function
of (seed, step)), refusal of a changed config, on-device divergence detection (one scalar read
every CHECK_EVERY steps), multi-host agreement on a stop request, atomic JSON.
"""

import dataclasses
import os
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from experiments.common import checkpoint
from experiments.common import config as cfg
from experiments.common import console
from experiments.common import evaluators
from experiments.common import losses
from experiments.common import optim
from experiments.common import parallel
from experiments.common import plateau
from experiments.common import report
from experiments.common import rng
from experiments.common import steps
from experiments.common.data import DataError

COMPLETED, STOPPED, DIVERGED, FAILED = "completed", "stopped", "diverged", "failed"
STOP_SYNC_EVERY = 10  # steps between the processes' agreements on a stop request (multi-host)
CHECK_EVERY = 10  # steps between reads of the loss (progress bar) and the divergence flag


@dataclasses.dataclass
class RunResult:
    """What `train_and_evaluate` produced.

    Attributes:
      state: final (stopped, failed, or diverged) TrainState.
      summary: the summary.json contents.
      status: COMPLETED, STOPPED (resume with the same command), DIVERGED or FAILED (a data
        error mid-run, checkpoint saved).
      message: one line for the user when the run did not complete, else "".
      interrupted_by: signal number (received by any process of a multi-host run), 0 for
        `run.stop_after_steps`, None otherwise.
    """

    state: steps.TrainState
    summary: dict
    status: str = COMPLETED
    message: str = ""
    interrupted_by: int | None = None


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


@dataclasses.dataclass
class Run:
    """Everything built from the config before the first step (`setup`)."""

    config: object
    workdir: str
    task: object
    source: object
    model: object
    mesh: object
    spec: losses.LossSpec
    steps_per_epoch: int
    tx: object
    lr_fn: object
    evaluators: dict
    seeds: tuple
    population: int
    is_main: bool
    gammas: tuple = ()
    plateau_update: object = None

    @property
    def total(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    def label(self) -> str:
        return self.spec.label + (f" x {self.population} seeds" if self.population else "")


def setup(config, workdir: str, seeds=None, gammas=None) -> Run:
    """Validates the config and builds the source, model, optimiser and evaluators; raises
    ValueError (naming the field) or DataError before any training."""
    task = cfg.load_task(config)
    cfg.validate(config, evaluator_types=tuple(evaluators.TYPES))
    if hasattr(task, "validate"):
        task.validate(config)
    seeds = tuple(seeds) if seeds else ()
    gammas = tuple(float(g) for g in gammas) if gammas else ()
    if gammas and len(gammas) != len(seeds):
        raise ValueError(
            f"a population's gammas ({len(gammas)}) must pair with its seeds ({len(seeds)})."
        )
    if gammas and not (min(gammas) >= 0 and config.loss.gsc.gamma > 0):
        raise ValueError(
            "a population of GSC strengths needs gammas >= 0 and "
            "config.loss.gsc.gamma > 0 (the GSC term is part of the program)."
        )
    if seeds and (config.plateau.factor > 0 or config.best.metric):
        raise ValueError(
            "config.plateau and config.best follow one run's metric: a population "
            "(several seeds trained together) cannot use them."
        )
    source = task.make_source(config)
    cfg.validate(config, source.num_classes)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh, "config.batch_size")
    parallel.check_batch_size(config.eval_batch_size, mesh, "config.eval_batch_size")
    spe = source.steps_per_epoch(config.batch_size)
    model = task.make_model(config, source.num_classes, mesh)
    tx, lr_fn = optim.make(config, spe)
    spec = losses.LossSpec.from_config(config.loss)
    dtype = jnp.bfloat16 if config.bf16 else jnp.float32
    logits = steps.make_logits_fn(
        model, mean=config.data.mean, std=config.data.std, compute_dtype=dtype
    )
    if seeds:
        logits = jax.vmap(logits, in_axes=(0, None))
    context = evaluators.Context(
        config,
        source,
        model,
        logits,
        mesh,
        parallel.replicated(mesh),
        source.num_classes,
        config.num_bins,
        config.eval_batch_size,
        len(seeds),
        workdir,
    )
    return Run(
        config,
        workdir,
        task,
        source,
        model,
        mesh,
        spec,
        spe,
        tx,
        lr_fn,
        evaluators.build(config, context),
        seeds,
        len(seeds),
        jax.process_index() == 0,
        gammas=gammas,
    )


def train_and_evaluate(config, workdir: str, *, seeds=None, gammas=None) -> RunResult:
    """Trains the run `config` describes in `workdir`, evaluating every epoch; resumes from it.

    Args:
      config: the run (`config.base_config()` extended by an experiment's config file).
      workdir: the run's directory (see the module docstring).
      seeds: several seeds to train together as a population (`jax.vmap`; data sources that
        hold their data in memory only); None trains `config.seed` alone.
      gammas: with `seeds`, each member's GSC strength (traced: one compiled program for all);
        None gives every member `config.loss.gsc.gamma`.

    Returns:
      A RunResult; its summary (also summary.json) has the final evaluation's scalars under
      '<evaluator>/<metric>' and their details, or, for a stopped run, those of the last
      evaluated epoch (marked by 'evaluated_epoch').

    Raises:
      ValueError / DataError: a bad config or unreadable data, before any training.
      checkpoint.ConfigMismatchError: workdir holds a run with another configuration.
    """
    run = setup(config, workdir, seeds, gammas)
    os.makedirs(workdir, exist_ok=True)
    log = Log(run)
    manager = checkpoint.make_manager(workdir)
    resuming = manager.latest_step() is not None
    identity = {
        "config": cfg.identity(config),
        "data": run.source.identity(),
        "seeds": list(run.seeds),
        "gammas": list(run.gammas),
    }
    if hasattr(run.task, "identity"):
        identity["task"] = run.task.identity(config, run.source, run.mesh)
    extended = checkpoint.check_run_config(
        workdir, identity, config.epochs, resuming=resuming, write=run.is_main
    )
    best = Best(run, resuming)
    state, train_step = initial_state(run, manager)
    start = int(np.max(jax.device_get(state.step)))
    log.resume(start, extended)
    step = start
    keys = member_inputs(run)
    if (
        0 < start <= run.total
        and start % run.steps_per_epoch == 0
        and not log.has_epoch(start // run.steps_per_epoch)
    ):
        # The checkpoint ends an epoch whose record is missing (its line was cut short by a
        # crash): the checkpoint holds that epoch's sums, so evaluate it now.
        state = end_epoch(
            run, log, best, state, start // run.steps_per_epoch, 0.0, None, update_plateau=False
        )
    batches = run.source.train_batches(
        batch_size=config.batch_size,
        start_step=start,
        num_steps=run.total,
        mesh=run.mesh,
        seed=run.seeds or config.seed,
    )
    with (
        checkpoint.StopOnSignal() as stop,
        tqdm(
            total=run.total,
            initial=start,
            disable=not (config.run.progress and run.is_main),
            desc=run.label(),
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
        ) as bar,
    ):
        log.bar = bar
        t0, step0 = time.time(), step
        while step < run.total:
            try:
                batch = next(batches)
            except DataError as error:
                checkpoint.save(manager, state)
                manager.wait_until_finished()
                return log.finish(
                    state,
                    FAILED,
                    f"{error} The checkpoint of step {step} is "
                    f"saved in {workdir}; run the same command to resume.",
                )
            state, metrics = train_step(state, batch, *keys)
            step += 1
            bar.update(1)
            epoch_done = step % run.steps_per_epoch == 0
            if step % CHECK_EVERY == 0 or epoch_done:
                loss, lr, bad, finished = jax.device_get(
                    (
                        metrics["loss"],
                        metrics["learning_rate"],
                        state.first_nonfinite_step,
                        state.finished_at_step,
                    )
                )
                if not run.population and bad:  # a population's diverged members go on (NaN)
                    manager.wait_until_finished()  # the last good epoch's checkpoint
                    return log.diverged(state, int(bad))
                if np.all(finished):  # the task's stopping rule held (every member's)
                    log.say(
                        f"Finished early: the task's stopping rule held after step "
                        f"{int(np.max(finished))}/{run.total}."
                    )
                    state = end_epoch(
                        run,
                        log,
                        best,
                        state,
                        -(-step // run.steps_per_epoch),
                        time.time() - t0,
                        None,
                    )
                    checkpoint.save(manager, state)
                    break
                rate = (step - step0) * config.batch_size / max(time.time() - t0, 1e-9)
                bar.set_postfix(
                    loss=f"{np.nanmean(loss):.4f}", lr=f"{np.mean(lr):.2g}", img_s=f"{rate:.1f}"
                )
            if epoch_done:
                seconds = time.time() - t0
                state = end_epoch(
                    run,
                    log,
                    best,
                    state,
                    step // run.steps_per_epoch,
                    seconds,
                    (step - step0) * config.batch_size / max(seconds, 1e-9),
                )
                checkpoint.save(manager, state)
                t0, step0 = time.time(), step
            limit = config.run.stop_after_steps and step - start >= config.run.stop_after_steps
            signum = agreed_stop_signal(stop, step)
            if (signum or limit) and step < run.total:
                bad = jax.device_get(state.first_nonfinite_step)
                if not run.population and bad:  # never checkpoint a diverged state
                    manager.wait_until_finished()
                    return log.diverged(state, int(bad))
                checkpoint.save(manager, state)
                manager.wait_until_finished()
                return log.finish(
                    state,
                    STOPPED,
                    f"Stopped at step {step}/{run.total}; "
                    f"checkpoint saved in {workdir}. Run the same command again "
                    "to resume.",
                    interrupted_by=signum or 0,
                )
    manager.wait_until_finished()
    return log.complete(state, best)


def initial_state(run: Run, manager):
    """(the fresh or restored TrainState, the train step); sets `run.plateau_update`."""
    config = run.config
    dtype = jnp.bfloat16 if config.bf16 else jnp.float32
    sample = jnp.zeros((1, *run.source.input_shape), dtype)
    task_state = run.task.init_task_state(config) if hasattr(run.task, "init_task_state") else None

    def init(key):
        return steps.init_state(
            run.model,
            run.tx,
            sample,
            key,
            run.source.num_classes,
            run.spec,
            task_state,
        )

    init_keys = (
        jnp.stack([rng.keys(s)["init"] for s in run.seeds])
        if run.seeds
        else rng.keys(config.seed)["init"]
    )
    if run.seeds:
        init = jax.vmap(init)
    repl = parallel.replicated(run.mesh)
    shardings = repl
    if hasattr(run.task, "state_sharding"):
        shardings = run.task.state_sharding(config, run.mesh, jax.eval_shape(init, init_keys))
    state = jax.jit(init, out_shardings=shardings)(init_keys)
    if manager.latest_step() is None and hasattr(run.task, "prepare_state"):
        state = run.task.prepare_state(config, state)
    state = checkpoint.restore_latest(manager, state)
    step = steps.make_train_step(
        model=run.model,
        tx=run.tx,
        loss_spec=run.spec,
        lr_fn=run.lr_fn,
        steps_per_epoch=run.steps_per_epoch,
        mean=config.data.mean,
        std=config.data.std,
        compute_dtype=dtype,
        task=run.task,
    )
    if run.seeds:
        step = jax.vmap(step)
    run.plateau_update = jax.jit(
        lambda st, value: st.replace(
            opt_state=plateau.epoch_update(optim.plateau_spec(config), st.opt_state, value)
        ),
        out_shardings=shardings,
        donate_argnums=0,
    )
    train_step = steps.MemoryCheckedStep(
        jax.jit(step, out_shardings=(shardings, repl), donate_argnums=0), config
    )
    return state, train_step


def member_inputs(run: Run) -> tuple:
    """(the 'dropout' key, the GSC strength) of the run, or [P] of each for a population."""
    gamma = run.config.loss.gsc.gamma
    if run.seeds:
        gammas = run.gammas or (gamma,) * len(run.seeds)
        return (
            jnp.stack([rng.keys(s)["dropout"] for s in run.seeds]),
            jnp.asarray(gammas, jnp.float32),
        )
    return rng.keys(run.config.seed)["dropout"], jnp.float32(gamma)


class Best:
    """The best epoch by `config.best.metric` (maximised), kept in WORKDIR/checkpoints_best.

    A fresh start clears a checkpoints_best/ left by an earlier run in the same workdir, so that
    the best state reported is always this run's.
    """

    def __init__(self, run: Run, resuming: bool):
        self.metric = run.config.best.metric
        self.manager = None
        if not self.metric:
            return
        path = os.path.join(run.workdir, "checkpoints_best")
        if not resuming and os.path.isdir(path) and run.is_main:
            shutil.rmtree(path)
            console.say(f"Starting a new run: removed {path} of an earlier run.")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("checkpoints_best cleared")
        self.manager = checkpoint.make_manager(run.workdir, max_to_keep=1, name="checkpoints_best")

    def update(self, state, records: list) -> None:
        """Saves `state` when the last record's metric beats every earlier record's."""
        if not self.metric:
            return
        value = records[-1].get(self.metric)
        earlier = [r[self.metric] for r in records[:-1] if r.get(self.metric) is not None]
        if value is not None and np.isfinite(value) and value > max(earlier, default=-np.inf):
            checkpoint.save(self.manager, state)


def evaluate(run: Run, state) -> tuple:
    """({'<evaluator>/<metric>': scalar}, {evaluator: (scalars, details)}) of every evaluator."""
    results = {name: ev.run(state) for name, ev in run.evaluators.items()}
    scalars = {f"{name}/{k}": v for name, (s, _) in results.items() for k, v in s.items()}
    return scalars, results


def end_epoch(
    run: Run,
    log,
    best: Best,
    state,
    epoch: int,
    seconds: float,
    images_per_s,
    update_plateau: bool = True,
):
    """Evaluates, logs the epoch's record, steps the plateau scale, keeps the best state."""
    scalars, results = evaluate(run, state)
    spec = optim.plateau_spec(run.config)
    scale = float(plateau.current_scale(state.opt_state)) if spec else 1.0
    record = {
        "epoch": epoch,
        "step": epoch * run.steps_per_epoch,
        **steps.epoch_means(jax.device_get(state.epoch_sums)),
        **scalars,
        "learning_rate": float(run.lr_fn(epoch * run.steps_per_epoch - 1)) * scale,
        "epoch_time_s": seconds,
        "images_per_s": images_per_s,
    }
    log.epoch(record, results)
    if spec and update_plateau:
        state = run.plateau_update(state, record[run.config.plateau.metric])
    best.update(state, log.records)
    return state


class Log:
    """metrics.jsonl, TensorBoard, the console line, summary.json and the figures (process 0)."""

    def __init__(self, run: Run):
        self.run = run
        self.path = os.path.join(run.workdir, "metrics.jsonl")
        self.records, self.latest = [], {}
        self.bar = None
        self.scalars = (
            report.TensorBoardScalars(os.path.join(run.workdir, "tensorboard"))
            if run.is_main
            else None
        )

    def say(self, message: str) -> None:
        if self.run.is_main:
            if self.bar is not None:
                self.bar.write(message, file=sys.stdout)
            else:
                console.say(message)

    def resume(self, start: int, extended: str | None) -> None:
        """Keeps the records up to the checkpoint's step and says where the run starts."""
        self.records = [r for r in report.read_jsonl(self.path) if r["step"] <= start]
        if self.run.is_main:
            report.write_jsonl(self.path, self.records)
        if extended:
            self.say(extended)
        if start:
            self.say(
                f"Resuming from step {start}/{self.run.total} (epoch "
                f"{start // self.run.steps_per_epoch + 1}) in {self.run.workdir}."
            )

    def has_epoch(self, epoch: int) -> bool:
        return any(r["epoch"] == epoch for r in self.records)

    def epoch(self, record: dict, results: dict) -> None:
        self.records.append(record)
        self.latest = results
        if self.run.is_main:
            report.append_jsonl(self.path, record)
            self.scalars.write(record)
        shown = " ".join(
            f"{k} {np.mean(v):.4f}"
            for k, v in record.items()
            if "/" in k
            and v is not None
            and np.size(v)
            and (k.startswith("train/loss") or k.endswith(("/top1", "/ece", "/nll", "accuracy")))
        )
        self.say(
            f"epoch {record['epoch']}/{self.run.config.epochs}: {shown} "
            f"lr {record['learning_rate']:.3g} ({record['epoch_time_s']:.0f}s)"
        )

    def base_summary(self, state) -> dict:
        run = self.run
        info = run.source.info()
        if hasattr(run.task, "info"):
            info.update(run.task.info(run.config))
        out = {
            "step": int(np.max(jax.device_get(state.step))),
            "epochs": run.config.epochs,
            "steps": run.total,
            "loss": run.spec.label,
            "hyperparameters": run.spec.hyperparameters(),
            "seeds": list(run.seeds),
            "gammas": list(run.gammas),
            "num_devices": int(run.mesh.devices.size),
            "config": run.config.to_dict(),
            **info,
        }
        if run.population:  # diverged members (first non-finite step, 0 = none) went on as NaN
            out["diverged_at_step"] = np.asarray(
                jax.device_get(state.first_nonfinite_step)
            ).tolist()
        return out

    def finish(self, state, status: str, message: str, **fields) -> RunResult:
        """A summary for a run that did not complete: the last evaluated epoch's metrics."""
        summary = {"status": status, "message": message, **fields, **self.base_summary(state)}
        if status == STOPPED and self.records:
            last = self.records[-1]
            summary.update(
                evaluated_epoch=last["epoch"], **{k: v for k, v in last.items() if "/" in k}
            )
        if self.run.is_main:
            report.write_json(os.path.join(self.run.workdir, "summary.json"), summary)
        if status != DIVERGED:  # a diverged run's message is for the caller to report
            self.say(message)
        return RunResult(state, summary, status, message, fields.get("interrupted_by"))

    def diverged(self, state, bad_step: int) -> RunResult:
        spe, total = self.run.steps_per_epoch, self.run.total
        return self.finish(
            state,
            DIVERGED,
            (
                f"training diverged: the training loss was not finite at step {bad_step}/{total} "
                f"(epoch {(bad_step - 1) // spe + 1}); stopped without evaluating, "
                f"{os.path.join(self.run.workdir, 'summary.json')} has status 'diverged'. Lower the "
                "learning rate or the loss's strength."
            ),
            diverged_at_step=bad_step,
        )

    def complete(self, state, best: Best) -> RunResult:
        """The completed run's summary.json and figures."""
        run = self.run
        results = self.latest or evaluate(run, state)[1]  # evaluated now if resumed when done
        summary = {
            "status": COMPLETED,
            **self.base_summary(state),
            "train_time_s": float(sum(r["epoch_time_s"] for r in self.records)),
        }
        for name, (scalars, details) in results.items():
            summary.update({f"{name}/{k}": v for k, v in scalars.items()})
            summary.update({f"{name}/{k}": v for k, v in details.items()})
        if best.metric:
            summary.update(best_summary(run, best, state, self.records))
        if run.is_main:
            report.write_json(os.path.join(run.workdir, "summary.json"), summary)
            report.plot_curves(self.records, os.path.join(run.workdir, "curves.png"), run.label())
            for name, (scalars, details) in results.items():
                run.evaluators[name].write(scalars, details, run.workdir, run.label())
        return RunResult(state, summary)


def best_summary(run: Run, best: Best, state, records: list) -> dict:
    """The best state's epoch and value, and every evaluator's scalars on it ('<key>@best')."""
    best.manager.wait_until_finished()
    step = best.manager.latest_step()
    if step is None:  # no epoch had a finite value
        return {"best/epoch": None, "best/value": None}
    epoch = step // run.steps_per_epoch
    scalars, _ = evaluate(run, checkpoint.restore_latest(best.manager, state))
    value = next((r[best.metric] for r in records if r["epoch"] == epoch), None)
    return {
        "best/epoch": epoch,
        "best/value": value,
        **{f"{k}@best": v for k, v in scalars.items()},
    }
