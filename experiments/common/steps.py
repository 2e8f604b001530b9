"""The train state and the jitted train step of the shared loop (global arrays on a 'data' mesh).

The step takes a batch from the run's data source (`data.Source`: already gathered and augmented,
a pure function of (seed, step)), so resume is exact and 1-vs-N devices train alike. A population
run vmaps the same step over several seeds (`population_step`).
"""

import os
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

import gsc_jax
from experiments.common import augment
from experiments.common import losses


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds.

    Attributes:
      step: int32 [] global step.
      params: model parameters.
      batch_stats: BatchNorm statistics ({} for models without BN).
      opt_state: optax state.
      ols: gsc_jax OnlineLabelSmoothingState for the 'ols' loss, else None.
      epoch_sums: float32 sums over the current epoch's steps of every scalar the objective
        logs (`losses.make_objective`: 'loss', 'base_loss', with GSC 'gsc_term', 'gsc_weighted',
        'gsc_grad_ratio') and 'count' (steps).
      first_nonfinite_step: int32 [], the number of the first step (1-based) whose training loss
        was NaN or infinite; 0 while every loss has been finite.
      task_state: the task's own state (`Task.init_task_state`, e.g. a per-step history), or
        None.
      finished_at_step: int32 [], the step (1-based) after which the task's stopping rule
        (`Task.finished`) held; 0 while it has not. From then on the step leaves the state as it
        is, and the loop ends the run at its next check.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ols: Any
    epoch_sums: Any
    first_nonfinite_step: jax.Array
    task_state: Any = None
    finished_at_step: Any = None


def logged_parts(spec: losses.LossSpec, num_classes: int) -> tuple:
    """The names of the scalars `losses.make_objective(spec)` logs."""
    logits = jax.ShapeDtypeStruct((2, num_classes), jnp.float32)
    labels = jax.ShapeDtypeStruct((2,), jnp.int32)
    soft = jax.ShapeDtypeStruct((num_classes, num_classes), jnp.float32) if spec.uses_ols else None
    _, parts = jax.eval_shape(losses.make_objective(spec), logits, labels, soft)
    return tuple(parts)


def init_state(
    model,
    tx,
    sample: jax.Array,
    key: jax.Array,
    num_classes: int,
    spec: losses.LossSpec,
    task_state=None,
) -> TrainState:
    """Initialises with `model.init(key, sample, train=False)`; sample is [1, ...] one input."""
    variables = model.init(key, sample, train=False)
    params = variables["params"]
    keys = (*logged_parts(spec, num_classes), "count")
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        ols=gsc_jax.ols_init(num_classes) if spec.uses_ols else None,
        epoch_sums={k: jnp.zeros((), jnp.float32) for k in keys},
        first_nonfinite_step=jnp.zeros((), jnp.int32),
        task_state=task_state,
        finished_at_step=jnp.zeros((), jnp.int32),
    )


def apply_model(model, state: TrainState, params, x: jax.Array, train: bool, rngs=None):
    """Runs the model; returns (float32 logits [B, K], new batch_stats).

    `rngs` (e.g. {'dropout': key}) reaches the model in training only; models without random
    layers ignore it. Models whose normalisation always uses the batch's statistics (no running
    averages) are evaluated with their batch_stats mutable and the update dropped.
    """
    variables = {"params": params}
    rngs = rngs if train else None
    if not state.batch_stats:
        return (
            model.apply(variables, x, train=train, rngs=rngs).astype(jnp.float32),
            state.batch_stats,
        )
    variables["batch_stats"] = state.batch_stats
    logits, new = model.apply(variables, x, train=train, mutable=["batch_stats"], rngs=rngs)
    return logits.astype(jnp.float32), (new["batch_stats"] if train else state.batch_stats)


def make_logits_fn(model, *, mean, std, compute_dtype) -> Callable:
    """`logits_fn(state, images uint8 [B, ...]) -> float32 logits [B, K]` in eval mode."""

    def logits_fn(state: TrainState, images):
        x = augment.normalize(images, mean, std, compute_dtype)
        return apply_model(model, state, state.params, x, train=False)[0]

    return logits_fn


def make_train_step(
    *,
    model,
    tx,
    loss_spec: losses.LossSpec,
    lr_fn: Callable,
    steps_per_epoch: int,
    mean,
    std,
    compute_dtype,
    task=None,
) -> Callable:
    """Builds `step(state, batch, dropout_key, gamma=None) -> (state, metrics)`: one step.

    On a batch {'image': uint8 [B, ...], 'label': int32 [B]} that the data source has drawn and
    augmented: normalisation, the batch mean of the per-example loss (`losses.make_objective`),
    the update, and for 'ols' the OLS accumulators (updated every step, finalised on the last
    step of each epoch, gsc_jax.ols_update / ols_finalize_epoch). The model's 'dropout' stream
    gets fold_in(dropout_key, s) at step s. `gamma` (traced) replaces the spec's GSC strength, so
    that the members of a population may train different strengths in one program.

    The objective's logged parts are summed in `state.epoch_sums` (restarting at each epoch's
    first step), and `state.first_nonfinite_step` records the first step whose loss was not
    finite, so that the host detects a diverged run by reading one scalar now and then.

    A task may train against targets it derives from the logits (`task.targets(logits, batch)`,
    self-labelling), keep a state of its own (`task.update_task_state(task_state, logits, batch,
    step)`) and end training early (`task.finished(task_state)`: after the step where it first
    holds the state stays as it is).
    """
    objective_fn = losses.make_objective(loss_spec)
    targets = getattr(task, "targets", lambda logits, batch: batch["label"])
    update_task_state = getattr(task, "update_task_state", None)
    finished = getattr(task, "finished", None)

    def step(state: TrainState, batch: dict, dropout_key: jax.Array, gamma=None):
        images, labels = batch["image"], batch["label"]
        i = state.step % steps_per_epoch
        x = augment.normalize(images, mean, std, compute_dtype)
        soft = state.ols.soft_labels if loss_spec.uses_ols else None
        rngs = {"dropout": jax.random.fold_in(dropout_key, state.step)}

        def objective(params):
            logits, batch_stats = apply_model(model, state, params, x, train=True, rngs=rngs)
            loss, parts = objective_fn(
                logits, targets(jax.lax.stop_gradient(logits), batch), soft, gamma
            )
            return loss, (parts, logits, batch_stats)

        (loss, (parts, logits, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        ols = state.ols
        if loss_spec.uses_ols:
            ols = gsc_jax.ols_update(ols, jax.lax.stop_gradient(logits), labels)
            last = i == steps_per_epoch - 1
            ols = jax.tree.map(
                lambda a, b: jnp.where(last, a, b), gsc_jax.ols_finalize_epoch(ols), ols
            )
        step_values = {**parts, "count": jnp.ones((), jnp.float32)}
        # jnp.where, not a product with 0: a NaN of the previous epoch must not carry over.
        sums = {
            k: jnp.where(i > 0, state.epoch_sums[k] + step_values[k], step_values[k])
            for k in state.epoch_sums
        }
        first_bad = jnp.where(
            (state.first_nonfinite_step == 0) & ~jnp.isfinite(loss),
            state.step + 1,
            state.first_nonfinite_step,
        )
        task_state, finished_at = state.task_state, state.finished_at_step
        if update_task_state is not None:
            task_state = update_task_state(
                task_state, jax.lax.stop_gradient(logits), batch, state.step
            )
        if finished is not None:
            finished_at = jnp.where(
                (finished_at == 0) & finished(task_state), state.step + 1, finished_at
            )
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
            ols=ols,
            epoch_sums=sums,
            first_nonfinite_step=first_bad,
            task_state=task_state,
            finished_at_step=finished_at,
        )
        if finished is not None:  # a finished run's state stays as it was, step aside
            new_state = jax.tree.map(
                lambda new, old: jnp.where(state.finished_at_step > 0, old, new),
                new_state.replace(step=state.step + 1),
                state.replace(step=state.step + 1),
            )
        return new_state, {"loss": loss, "learning_rate": lr_fn(state.step)}

    return step


def epoch_means(sums: dict) -> dict:
    """'train/<part>' means of the epoch from host `epoch_sums` (per member in a population)."""
    count = sums["count"]
    out = {}
    for key, total in sums.items():
        if key != "count":
            value = jnp.asarray(total) / count
            out[f"train/{key}"] = value.tolist()
    return out


def available_memory_bytes(device) -> int | None:
    """Memory one device can use: the accelerator's limit, or the host's available RAM shared by
    its CPU devices; None when unknown."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        try:
            pages = os.sysconf("SC_AVPHYS_PAGES")
            return int(pages * os.sysconf("SC_PAGE_SIZE")) // max(jax.local_device_count(), 1)
        except (ValueError, OSError):
            return None
    return None


class MemoryCheckedStep:
    """A jitted train step compiled on its first call, refused when it cannot fit in memory.

    XLA's memory analysis of the compiled step (arguments, outputs and temporaries, per device)
    is compared with what a device has (`available_memory_bytes`); a step that needs more raises
    ValueError naming the fields to lower, instead of dying in an allocation mid-step.
    """

    def __init__(self, jitted: Callable, config):
        self._jitted, self._config, self._compiled = jitted, config, None

    def __call__(self, *args):
        if self._compiled is None:
            self._compiled = self._jitted.lower(*args).compile()
            check_memory(self._compiled, self._config)
        return self._compiled(*args)


def check_memory(compiled, config) -> None:
    """Raises ValueError when `compiled` needs more memory per device than a device has."""
    try:
        analysis = compiled.memory_analysis()
    except (NotImplementedError, AttributeError, RuntimeError):
        return
    if analysis is None:
        return
    needed = (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )
    available = available_memory_bytes(jax.local_devices()[0])
    if available is not None and needed > available:
        raise ValueError(
            f"this config needs about {needed / 2**30:.1f} GiB per device for one train step "
            f"(XLA's memory analysis), more than the {available / 2**30:.1f} GiB a device has: "
            f"lower config.batch_size (now {config.batch_size}), or the model's or the input's "
            "size (config.model.*, config.data.image_size), or use more devices."
        )
