"""Train state, jitted train step and masked-sum evaluation (global arrays on a 'data' mesh).

The train step gathers its batch from the device-resident dataset with an epoch permutation, so a
run is a pure function of (seed, step): that makes resume exact and 1-vs-N devices equal.
"""

from typing import Any, Callable

import flax
import gsc_jax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from gsc_jax import metrics

from experiments.common import augment, losses, parallel


EPOCH_SUM_KEYS = ("loss", "count", "base_loss", "gsc_term", "parts_count")


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds.

    Attributes:
      step: int32 [] global step.
      params: model parameters.
      batch_stats: BatchNorm statistics ({} for models without BN).
      opt_state: optax state.
      ols: gsc_jax OnlineLabelSmoothingState for the 'ols' loss, else None.
      epoch_sums: float32 sums over the current epoch's steps (EPOCH_SUM_KEYS): 'loss' (the trained
        loss), 'base_loss' and 'gsc_term' (its parts, see `make_train_step`), 'count' (steps) and
        'parts_count' (steps whose parts were summed; less than 'count' only in an epoch resumed
        from a checkpoint written before the parts were logged).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ols: Any
    epoch_sums: Any


def init_state(model, tx, sample: jax.Array, key: jax.Array, num_classes: int,
               use_ols: bool) -> TrainState:
    """Initialises with `model.init(key, sample, train=False)`; sample is [1, H, W, C]."""
    variables = model.init(key, sample, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        ols=gsc_jax.ols_init(num_classes) if use_ols else None,
        epoch_sums={k: jnp.zeros((), jnp.float32) for k in EPOCH_SUM_KEYS},
    )


def epoch_permutation(key: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
    """int32 [N] shuffling order of epoch `epoch`, a pure function of (key, epoch)."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)


def apply_model(model, state: TrainState, params, x: jax.Array, train: bool):
    """Runs the model; returns (float32 logits [B, K], new batch_stats)."""
    variables = {"params": params}
    if not state.batch_stats:
        return model.apply(variables, x, train=train).astype(jnp.float32), state.batch_stats
    variables["batch_stats"] = state.batch_stats
    if not train:
        return model.apply(variables, x, train=False).astype(jnp.float32), state.batch_stats
    logits, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return logits.astype(jnp.float32), new["batch_stats"]


def make_train_step(*, model, tx, loss_spec: losses.LossSpec, lr_fn: Callable,
                    steps_per_epoch: int, batch_size: int, mesh, mean, std, use_augment: bool,
                    compute_dtype, aug_key: jax.Array) -> Callable:
    """Builds `train_step(state, images [N,H,W,C] u8, labels [N], perm [N]) -> (state, metrics)`.

    Step s trains on perm[i*B:(i+1)*B] with i = s % steps_per_epoch (the last partial batch of an
    epoch is dropped), augmented with key fold_in(aug_key, s). The batch mean of the per-example
    loss is minimised. For 'ols', the OLS accumulators are updated every step and finalised on the
    last step of each epoch (gsc_jax.ols_update / ols_finalize_epoch).

    The loss's parts are logged too (batch means, summed in `state.epoch_sums`): 'base_loss' (the
    loss without GSC) and, when gamma > 0, 'gsc_term' (unscaled by gamma), computed from the
    logits under stop_gradient by `losses.make_loss_parts_fn`: the gradient and the trained loss
    are unchanged. With gamma = 0 the base loss is the trained loss itself (nothing is recomputed)
    and 'gsc_term' stays 0 in the sums and absent from the metrics.
    """
    loss_fn = losses.make_loss_fn(loss_spec)
    parts_fn = losses.make_loss_parts_fn(loss_spec)
    use_gsc = loss_spec.gsc_gamma > 0
    use_ols = loss_spec.name == "ols"

    def train_step(state: TrainState, images_all, labels_all, perm):
        i = state.step % steps_per_epoch
        idx = jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
        idx = jax.lax.with_sharding_constraint(idx, parallel.batch_sharded(mesh))
        images, labels = images_all[idx], labels_all[idx]
        if use_augment:
            images = augment.random_crop_flip(jax.random.fold_in(aug_key, state.step), images)
        x = augment.normalize(images, mean, std, compute_dtype)
        soft = state.ols.soft_labels if use_ols else None

        def objective(params):
            logits, batch_stats = apply_model(model, state, params, x, train=True)
            return jnp.mean(loss_fn(logits, labels, soft)), (logits, batch_stats)

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params)
        if use_gsc:
            parts = jax.tree.map(jnp.mean, parts_fn(jax.lax.stop_gradient(logits), labels, soft))
        else:
            parts = {"base_loss": loss}
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        ols = state.ols
        if use_ols:
            ols = gsc_jax.ols_update(ols, jax.lax.stop_gradient(logits), labels)
            last = i == steps_per_epoch - 1
            ols = jax.tree.map(lambda a, b: jnp.where(last, a, b),
                               gsc_jax.ols_finalize_epoch(ols), ols)
        keep = (i > 0).astype(jnp.float32)
        step_values = {"loss": loss, "count": 1.0, "base_loss": parts["base_loss"],
                       "gsc_term": parts.get("gsc_term", 0.0), "parts_count": 1.0}
        sums = {k: state.epoch_sums[k] * keep + step_values[k] for k in EPOCH_SUM_KEYS}
        new_state = state.replace(step=state.step + 1,
                                  params=optax.apply_updates(state.params, updates),
                                  batch_stats=batch_stats, opt_state=opt_state, ols=ols,
                                  epoch_sums=sums)
        return new_state, {"loss": loss, **parts, "learning_rate": lr_fn(state.step)}

    return train_step


def pad_to_multiple(images: np.ndarray, labels: np.ndarray, multiple: int):
    """Zero-pads [M, ...] arrays to a multiple of `multiple`; returns (images, labels, mask)."""
    m = len(labels)
    extra = (-m) % multiple
    mask = np.concatenate([np.ones(m, bool), np.zeros(extra, bool)])
    images = np.concatenate([images, np.zeros((extra, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(extra, labels.dtype)])
    return images, labels, mask


def make_eval_step(*, model, batch_size: int, mesh, mean, std, compute_dtype,
                   num_bins: int = 15) -> Callable:
    """Builds `eval_step(state, images, labels, mask, i) -> sums` for the i-th batch of B examples.

    Returns masked sums (so a padded last batch is weighted correctly): correct1, correct5, nll,
    count, and `calib`, a gsc_jax.metrics.calibration_stats accumulator.
    """

    def eval_step(state, images_all, labels_all, mask_all, i):
        sl = lambda a: jax.lax.with_sharding_constraint(  # noqa: E731
            jax.lax.dynamic_slice_in_dim(a, i * batch_size, batch_size),
            parallel.batch_sharded(mesh))
        images, labels, mask = sl(images_all), sl(labels_all), sl(mask_all)
        logits, _ = apply_model(model, state, state.params,
                                augment.normalize(images, mean, std, compute_dtype), train=False)
        w = mask.astype(jnp.float32)
        k5 = min(5, logits.shape[-1])
        return {
            "correct1": jnp.sum(metrics.top_k_accuracy(logits, labels, k=1) * w),
            "correct5": jnp.sum(metrics.top_k_accuracy(logits, labels, k=k5) * w),
            "nll": jnp.sum(metrics.negative_log_likelihood(logits, labels) * w),
            "count": jnp.sum(w),
            "calib": metrics.calibration_stats(jax.nn.softmax(logits), labels,
                                               num_bins=num_bins, where=mask),
        }

    return eval_step


def summarize_eval(sums: dict) -> dict:
    """Turns accumulated eval sums into fractions: top1, top5, nll, ece (+ the reliability data)."""
    n = float(sums["count"])
    return {
        "top1": float(sums["correct1"]) / n,
        "top5": float(sums["correct5"]) / n,
        "nll": float(sums["nll"]) / n,
        "ece": float(metrics.expected_calibration_error_from_stats(sums["calib"])),
        "reliability": {k: np.asarray(v).tolist()
                        for k, v in metrics.reliability_diagram(sums["calib"]).items()},
    }
