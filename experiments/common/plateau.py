"""Reduce-on-plateau learning-rate scaling, stepped once per epoch on a validation metric.

PyTorch's ReduceLROnPlateau (mode 'max', threshold 1e-4 'rel', cooldown 0) multiplies the learning
rate by `factor` once the metric has not improved for more than `patience` epochs. This is
optax.contrib.reduce_on_plateau fed the validation error 1 - accuracy once per epoch, with its
patience one larger (optax reduces after `patience` epochs without improvement, PyTorch after
`patience` + 1). optax counts an improvement when the error drops by more than 1e-4 of itself,
PyTorch when the accuracy rises by more than 1e-4 of itself: both margins are below 1e-4, so on a
validation set of fewer than 10,000 examples (accuracy steps of more than 1e-4) both count the
same epochs as improvements.

The scale multiplies the updates of the wrapped transformation in every step (for SGD that is the
learning rate: lr * scale); only `epoch_update` changes it.
"""

from typing import NamedTuple

import jax
import optax


class PlateauSpec(NamedTuple):
    """Hyper-parameters in PyTorch ReduceLROnPlateau's terms (factor 0.75, patience 5 in
    Khairuddin & Chen 2021)."""

    factor: float
    patience: int
    rtol: float = 1e-4


def _plateau(spec: PlateauSpec) -> optax.GradientTransformationExtraArgs:
    return optax.contrib.reduce_on_plateau(
        factor=spec.factor, patience=spec.patience + 1, rtol=spec.rtol
    )


def scale_by_plateau(
    tx: optax.GradientTransformation, spec: PlateauSpec
) -> optax.GradientTransformation:
    """`tx` followed by multiplication with the plateau scale; state (tx state, plateau state)."""
    plateau = _plateau(spec)

    def init(params):
        return tx.init(params), plateau.init(params)

    def update(updates, state, params=None):
        inner, plateau_state = state
        updates, inner = tx.update(updates, inner, params)
        scale = plateau_state.scale
        return jax.tree.map(lambda u: (scale * u).astype(u.dtype), updates), (inner, plateau_state)

    return optax.GradientTransformation(init, update)


def epoch_update(spec: PlateauSpec, opt_state, val_accuracy):
    """The `scale_by_plateau` opt_state after an epoch whose validation top-1 is `val_accuracy`."""
    inner, plateau_state = opt_state
    _, plateau_state = _plateau(spec).update({}, plateau_state, value=1.0 - val_accuracy)
    return inner, plateau_state


def current_scale(opt_state) -> jax.Array:
    """The learning-rate scale held in a `scale_by_plateau` opt_state."""
    return opt_state[1].scale
