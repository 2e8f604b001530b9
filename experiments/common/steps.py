"""Train state and the jitted train step (global arrays on a 'data' mesh).

The train step gathers its batch from the device-resident dataset with an epoch permutation, so a
run is a pure function of (seed, step): that makes resume exact and 1-vs-N devices equal.
"""

from typing import Any, Callable

import flax
import gsc_jax
import jax
import jax.numpy as jnp
import optax

from experiments.common import augment, losses, parallel


EPOCH_SUM_KEYS = ("loss", "base_loss", "gsc_term", "count")


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
        loss), 'base_loss' and 'gsc_term' (its parts, see `make_train_step`) and 'count' (steps).
      first_nonfinite_step: int32 [], the number of the first step (1-based) whose training loss
        was NaN or infinite; 0 while every loss has been finite.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ols: Any
    epoch_sums: Any
    first_nonfinite_step: jax.Array


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
        first_nonfinite_step=jnp.zeros((), jnp.int32),
    )


def epoch_permutation(key: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
    """int32 [N] shuffling order of epoch `epoch`, a pure function of (key, epoch)."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)


def apply_model(model, state: TrainState, params, x: jax.Array, train: bool, rngs=None):
    """Runs the model; returns (float32 logits [B, K], new batch_stats).

    `rngs` (e.g. {'dropout': key}) reaches the model in training only; models without random
    layers ignore it.
    """
    variables = {"params": params}
    rngs = rngs if train else None
    if not state.batch_stats:
        return (model.apply(variables, x, train=train, rngs=rngs).astype(jnp.float32),
                state.batch_stats)
    variables["batch_stats"] = state.batch_stats
    if not train:
        return model.apply(variables, x, train=False).astype(jnp.float32), state.batch_stats
    logits, new = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
    return logits.astype(jnp.float32), new["batch_stats"]


def model_input_shape(images, train_views: Callable | None = None,
                      eval_views: Callable | None = None) -> tuple:
    """(h, w, C) of one model input: an image of `images` [N, H, W, C], or one of its views."""
    image = jax.ShapeDtypeStruct((1, *images.shape[1:]), images.dtype)
    if eval_views is not None:
        return tuple(jax.eval_shape(eval_views, image).shape[2:])
    if train_views is not None:
        return tuple(jax.eval_shape(train_views, jax.random.key(0), image).shape[2:])
    return tuple(images.shape[1:])


def flatten_views(views: jax.Array) -> jax.Array:
    """[B, V, h, w, C] views -> [B * V, h, w, C] model inputs (the views of an image adjacent)."""
    return views.reshape(-1, *views.shape[2:])


def make_logits_fn(model, *, mean, std, compute_dtype, eval_views: Callable | None = None
                   ) -> Callable:
    """`logits_fn(state, images uint8 [B, H, W, C]) -> float32 logits [B, K]` in eval mode.

    With `eval_views(images) -> [B, V, h, w, C]` (e.g. TenCrop), every view is evaluated and the
    logits are averaged over the V views of each image.
    """

    def logits_fn(state: TrainState, images):
        if eval_views is None:
            x = augment.normalize(images, mean, std, compute_dtype)
            return apply_model(model, state, state.params, x, train=False)[0]
        views = eval_views(images)
        x = augment.normalize(flatten_views(views), mean, std, compute_dtype)
        logits = apply_model(model, state, state.params, x, train=False)[0]
        return jnp.mean(logits.reshape(views.shape[0], views.shape[1], -1), axis=1)

    return logits_fn


def make_batch_train_step(*, model, tx, loss_spec: losses.LossSpec, lr_fn: Callable,
                          steps_per_epoch: int, mean, std, compute_dtype,
                          dropout_key: jax.Array | None = None) -> Callable:
    """Builds `step(state, images u8 [B, H, W, C], labels [B]) -> (state, metrics)`: one batch.

    One optimisation step on a batch that is already drawn and augmented (by `make_train_step`
    from the device-resident dataset, or by a streaming input pipeline): normalisation, the batch
    mean of the per-example loss (`losses.make_objective`), the update, and for 'ols' the OLS
    accumulators (updated every step, finalised on the last step of each epoch,
    gsc_jax.ols_update / ols_finalize_epoch). `dropout_key` feeds the model's 'dropout' stream
    with fold_in(dropout_key, s) at step s.

    The loss's parts (batch means) are summed in `state.epoch_sums`: 'base_loss' (the loss without
    GSC) and 'gsc_term' (unscaled by gamma; 0 when GSC is off). The sums restart at each epoch's
    first step. `state.first_nonfinite_step` records the first step whose loss was not finite, so
    that the host can detect a diverged run by reading one scalar now and then.
    """
    objective_fn = losses.make_objective(loss_spec)

    def batch_step(state: TrainState, images, labels):
        i = state.step % steps_per_epoch
        x = augment.normalize(images, mean, std, compute_dtype)
        soft = state.ols.soft_labels if loss_spec.uses_ols else None
        rngs = None if dropout_key is None else {
            "dropout": jax.random.fold_in(dropout_key, state.step)}

        def objective(params):
            logits, batch_stats = apply_model(model, state, params, x, train=True, rngs=rngs)
            loss, parts = objective_fn(logits, labels, soft)
            return loss, (parts, logits, batch_stats)

        (loss, (parts, logits, batch_stats)), grads = jax.value_and_grad(
            objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        ols = state.ols
        if loss_spec.uses_ols:
            ols = gsc_jax.ols_update(ols, jax.lax.stop_gradient(logits), labels)
            last = i == steps_per_epoch - 1
            ols = jax.tree.map(lambda a, b: jnp.where(last, a, b),
                               gsc_jax.ols_finalize_epoch(ols), ols)
        step_values = {"loss": loss, "base_loss": parts["base_loss"],
                       "gsc_term": parts.get("gsc_term", jnp.zeros((), jnp.float32)),
                       "count": jnp.ones((), jnp.float32)}
        # jnp.where, not a product with 0: a NaN of the previous epoch must not carry over.
        sums = {k: jnp.where(i > 0, state.epoch_sums[k] + step_values[k], step_values[k])
                for k in EPOCH_SUM_KEYS}
        first_bad = jnp.where((state.first_nonfinite_step == 0) & ~jnp.isfinite(loss),
                              state.step + 1, state.first_nonfinite_step)
        new_state = state.replace(step=state.step + 1,
                                  params=optax.apply_updates(state.params, updates),
                                  batch_stats=batch_stats, opt_state=opt_state, ols=ols,
                                  epoch_sums=sums, first_nonfinite_step=first_bad)
        return new_state, {**parts, "learning_rate": lr_fn(state.step)}

    return batch_step


def make_train_step(*, model, tx, loss_spec: losses.LossSpec, lr_fn: Callable,
                    steps_per_epoch: int, batch_size: int, mesh, mean, std, use_augment: bool,
                    compute_dtype, aug_key: jax.Array, train_views: Callable | None = None,
                    dropout_key: jax.Array | None = None) -> Callable:
    """Builds `train_step(state, images [N,H,W,C] u8, labels [N], perm [N]) -> (state, metrics)`.

    Step s trains on perm[i*B:(i+1)*B] with i = s % steps_per_epoch (the last partial batch of an
    epoch is dropped), augmented with key fold_in(aug_key, s), then takes the step of
    `make_batch_train_step` (loss, update, OLS, epoch sums, divergence flag).

    `train_views(key, images) -> [B, V, h, w, C]`, when given, replaces `use_augment`'s crop and
    flip: each of the V views of an image is a training example with the image's label (B * V
    examples a step, e.g. TenCrop).
    """
    batch_step = make_batch_train_step(
        model=model, tx=tx, loss_spec=loss_spec, lr_fn=lr_fn, steps_per_epoch=steps_per_epoch,
        mean=mean, std=std, compute_dtype=compute_dtype, dropout_key=dropout_key)

    def train_step(state: TrainState, images_all, labels_all, perm):
        i = state.step % steps_per_epoch
        idx = jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
        idx = jax.lax.with_sharding_constraint(idx, parallel.batch_sharded(mesh))
        images, labels = images_all[idx], labels_all[idx]
        step_key = jax.random.fold_in(aug_key, state.step)
        if train_views is not None:
            views = train_views(step_key, images)
            labels = jnp.repeat(labels, views.shape[1])
            images = flatten_views(views)
        elif use_augment:
            images = augment.random_crop_flip(step_key, images)
        return batch_step(state, images, labels)

    return train_step


def epoch_means(sums: dict, loss_spec: losses.LossSpec) -> dict:
    """The epoch's mean training loss and its parts, from host `epoch_sums`, for metrics.jsonl.

    train_loss: the trained loss; train_base_loss: the loss without GSC (CE / entropy / focal /
    LS / OLS); train_gsc_term: the GSC term unscaled by gamma, only when GSC is on. So train_loss =
    train_base_loss + gamma * train_gsc_term (up to float rounding).
    """
    n = float(sums["count"])
    out = {"train_loss": float(sums["loss"]) / n, "train_base_loss": float(sums["base_loss"]) / n}
    if loss_spec.uses_gsc:
        out["train_gsc_term"] = float(sums["gsc_term"]) / n
    return out
