"""The optimiser and learning-rate schedule of a config (`config.optimizer`, `config.schedule`).

Optimisers (optax): 'sgd' (momentum, optional Nesterov) and 'adam' take `weight_decay` as
PyTorch's coupled L2 term (`optax.add_decayed_weights` before the update, as torch.optim.SGD and
Adam add wd * params to the gradient); 'adamw' decouples it (Loshchilov & Hutter 2019,
`optax.adamw`). `reference_batch` > 0 scales the learning rate linearly with the batch (Goyal et
al. 2017: lr = learning_rate * batch_size / reference_batch).

Schedules, lr(step) with E epochs of S steps:
- 'constant';
- 'multistep': lr times `factor` at each milestone, a fraction f of the run placed at epoch
  round(f * E) (`round_to='epoch'`, e.g. AlexNet's epochs 81 and 122 of 164) or at step
  round(f * E * S) (`round_to='step'`, ArcFace's iterations 20K and 28K of 32K); with
  `schedule.step_every` = N > 0 (a field only the configs that use it declare) the milestones
  are every N epochs instead, N, 2N, ... < E (a step decay: lr 0.01 / 10 every 20 epochs);
- 'cosine_per_epoch': lr (1 + cos(pi e / E)) / 2 with e the current epoch (pycls);
- 'onecycle_linear': piecewise linear in the fractional epoch t = (step + 1) / S through
  (0, 0), (2E // 5, lr), (4E // 5, lr / 20), (E, 0) (locuslab/convmixer-cifar10 train.py).
With `config.plateau.factor` > 0 the updates are also scaled by reduce-on-plateau (`plateau`).
"""

from typing import Callable

import jax.numpy as jnp
import optax

from experiments.common import plateau


def learning_rate(config) -> float:
    """The base learning rate after the batch-size rule (`reference_batch`)."""
    lr = config.optimizer.learning_rate
    if config.optimizer.reference_batch:
        lr = lr * config.batch_size / config.optimizer.reference_batch
    return lr


def make_schedule(config, steps_per_epoch: int) -> Callable:
    """`lr_fn(step)` of `config.schedule` over `config.epochs` epochs of `steps_per_epoch`."""
    s, lr, epochs = config.schedule, learning_rate(config), config.epochs
    if s.name == "constant":
        return optax.constant_schedule(lr)
    if s.name == "multistep":
        if s.get("step_every", 0):
            every = s.step_every
            steps = [e * steps_per_epoch for e in range(every, epochs, every)]
        elif s.round_to == "epoch":
            steps = [round(f * epochs) * steps_per_epoch for f in s.milestones]
        else:
            steps = [round(f * epochs * steps_per_epoch) for f in s.milestones]
        boundaries = {}
        for step in steps:
            if step > 0:
                boundaries[step] = boundaries.get(step, 1.0) * s.factor
        return optax.piecewise_constant_schedule(lr, boundaries)
    if s.name == "cosine_per_epoch":

        def lr_fn(step):
            epoch = jnp.floor_divide(step, steps_per_epoch).astype(jnp.float32)
            return lr * 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / epochs))

        return lr_fn
    if s.name == "onecycle_linear":
        knots = jnp.array([0.0, epochs * 2 // 5, epochs * 4 // 5, epochs], jnp.float32)
        values = jnp.array([0.0, lr, lr / 20.0, 0.0], jnp.float32)
        return lambda step: jnp.interp((step + 1) / steps_per_epoch, knots, values)
    raise ValueError(f"config.schedule.name: unknown schedule {s.name!r}.")


def make(config, steps_per_epoch: int):
    """(optax transformation, lr_fn(step)) of the config, with reduce-on-plateau if asked."""
    o = config.optimizer
    lr_fn = make_schedule(config, steps_per_epoch)
    if o.name == "sgd":
        tx = optax.sgd(lr_fn, momentum=o.momentum or None, nesterov=o.nesterov)
    elif o.name == "adam":
        tx = optax.adam(lr_fn, b1=o.momentum)
    else:
        tx = optax.adamw(lr_fn, b1=o.momentum, weight_decay=o.weight_decay)
    if o.weight_decay and o.name != "adamw":
        tx = optax.chain(optax.add_decayed_weights(o.weight_decay), tx)
    if config.plateau.factor > 0:
        tx = plateau.scale_by_plateau(tx, plateau_spec(config))
    return tx, lr_fn


def plateau_spec(config) -> plateau.PlateauSpec | None:
    """The reduce-on-plateau settings, or None when it is off."""
    if config.plateau.factor <= 0:
        return None
    return plateau.PlateauSpec(config.plateau.factor, config.plateau.patience)
