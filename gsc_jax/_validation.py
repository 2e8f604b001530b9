"""Trace-time argument checks shared by the losses and metrics.

Every check looks at shapes, dtypes and Python (static) values only, so it runs while a function
is traced under `jax.jit` and raises before any work starts. Values carried by tracers (a `gamma`
passed as a traced array, label ids) cannot be checked there and are documented instead.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from gsc_jax import _examples

ArrayLike = jax.typing.ArrayLike


def is_concrete(value) -> bool:
    """True when `value` is known at trace time (a Python number or a concrete array)."""
    return not isinstance(value, jax.core.Tracer)


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype losses compute in: float32 for 16-bit floats, else the input's own float dtype."""
    dtype = jnp.dtype(dtype)
    if dtype.itemsize < 4:
        return jnp.dtype(jnp.float32)
    return dtype


def check_float_array(name: str, array) -> jax.Array:
    """Returns `array` as a jax array; raises TypeError unless its dtype is floating point."""
    array = jnp.asarray(array)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array, got dtype {array.dtype}.")
    return array


def normalize_axis(axis, ndim: int, name: str = "axis") -> int:
    """Returns `axis` as a non-negative int; raises ValueError for tuples or out-of-range axes."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ValueError(f"`{name}` must be a single int class axis, got {axis!r}.")
    if not -ndim <= axis < ndim:
        raise ValueError(f"`{name}`={axis} is out of range for an array of rank {ndim}.")
    return int(axis) % ndim


def check_num_classes(logits: jax.Array, axis: int, name: str = "logits") -> int:
    """Returns the number of classes along `axis`; raises ValueError if it is below 2."""
    if logits.ndim == 0:
        raise ValueError(f"`{name}` must have a class axis, got a scalar.")
    num_classes = logits.shape[axis]
    if num_classes < 2:
        raise ValueError(
            f"`{name}` must have at least 2 classes along axis {axis}, got shape {logits.shape}."
        )
    return num_classes


def check_top_c(top_c, num_classes: int) -> int:
    """Returns `top_c` as int; raises ValueError unless 1 <= top_c <= num_classes."""
    if isinstance(top_c, bool) or not isinstance(top_c, numbers.Integral):
        raise ValueError(f"`top_c` must be an int in [1, {num_classes}], got {top_c!r}.")
    if not 1 <= top_c <= num_classes:
        raise ValueError(f"`top_c` must be in [1, number of classes = {num_classes}], got {top_c}.")
    return int(top_c)


def check_non_negative(name: str, value) -> None:
    """Raises ValueError if a concrete `value` is negative or not finite."""
    if value is None:
        raise ValueError(f"`{name}` is required and must be a number >= 0.")
    if is_concrete(value):
        values = np.asarray(value, dtype=np.float64)
        if values.size != 1:
            raise ValueError(f"`{name}` must be a scalar >= 0, got shape {values.shape}.")
        if not np.isfinite(values) or values < 0:
            raise ValueError(f"`{name}` must be a finite number >= 0, got {float(values)}.")


def check_in_unit_interval(name: str, value, *, closed_right: bool = True) -> None:
    """Raises ValueError unless a concrete `value` lies in [0, 1] (or [0, 1) if not closed_right)."""
    check_non_negative(name, value)
    if is_concrete(value):
        upper_ok = value <= 1 if closed_right else value < 1
        if not upper_ok:
            bound = "1]" if closed_right else "1)"
            raise ValueError(f"`{name}` must be in [0, {bound}, got {float(value)}.")


def check_class_mask(where: Optional[jax.Array], logits: jax.Array) -> Optional[jax.Array]:
    """Checks that a class mask has exactly the logits' shape and returns it as bool."""
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.shape != logits.shape:
        raise ValueError(
            f"`where` must be a boolean mask of the logits' shape {logits.shape}, got shape "
            f"{where.shape}."
        )
    if where.dtype != jnp.bool_:
        raise TypeError(f"`where` must be a boolean array, got dtype {where.dtype}.")
    return where


def label_kind(labels: jax.Array, logits: jax.Array, axis: int) -> str:
    """Tells whether `labels` are integer ids ('int') or probability vectors ('soft').

    Integer ids have the logits' shape without `axis` and an integer dtype; probability vectors
    have the logits' shape and a floating dtype. Anything else raises ValueError/TypeError.
    """
    batch_shape = logits.shape[:axis] + logits.shape[axis + 1 :]
    if labels.shape == batch_shape:
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(
                f"`labels` of shape {labels.shape} are read as class ids and must be integers, "
                f"got dtype {labels.dtype}."
            )
        return "int"
    if labels.shape == logits.shape:
        if not jnp.issubdtype(labels.dtype, jnp.floating):
            raise TypeError(
                f"`labels` of shape {labels.shape} are read as probability vectors and must be "
                f"floating point, got dtype {labels.dtype}."
            )
        return "soft"
    raise ValueError(
        f"`labels` must be integer class ids of shape {batch_shape} or probability vectors of "
        f"shape {logits.shape} (logits shape {logits.shape}, class axis {axis}); got shape "
        f"{labels.shape}."
    )


def label_ids(
    labels: jax.Array, num_classes: int, where: Optional[jax.Array] = None
) -> tuple[jax.Array, jax.Array]:
    """Integer class ids under the library's one rule, as NumPy indexing reads them.

    Ids in ``[-num_classes, num_classes)`` are valid, negative ones counting from the end (``-1``
    is class ``num_classes - 1``). An id outside that range is invalid, and so is one naming a
    class that ``where`` masks out, unless ``where`` masks out the whole row (no class takes part;
    the losses give 0 there).

    Args:
      labels: ``[...]`` integer ids.
      num_classes: the number of classes ``n``.
      where: optional ``[..., n]`` boolean class mask.

    Returns:
      ``(ids, valid)``: ``[...]`` int32 ids in ``[0, n)`` (0 where invalid) and ``[...]`` bool.
    """
    labels = jnp.asarray(labels)
    unsigned = jnp.issubdtype(labels.dtype, jnp.unsignedinteger)
    if labels.dtype.itemsize < 4:  # room for labels + num_classes
        labels = labels.astype(jnp.uint32 if unsigned else jnp.int32)
    if not unsigned:
        labels = jnp.where(labels < 0, labels + num_classes, labels)
    valid = labels < num_classes if unsigned else (labels >= 0) & (labels < num_classes)
    ids = jnp.where(valid, labels, 0).astype(jnp.int32)
    if where is not None:
        named = jnp.take_along_axis(where, ids[..., None], axis=-1)[..., 0]
        valid = valid & (named | ~jnp.any(where, axis=-1))
    return ids, valid


@jax.custom_jvp
def poison_invalid_rows(logits: jax.Array, valid: jax.Array) -> jax.Array:
    """``logits`` in the rows where ``valid`` is True, NaN in the others; no derivative there.

    Every loss computed from the result is NaN in the invalid rows, so a mistake that reaches the
    loss unmasked is visible in its value; the derivative with respect to those rows is 0 (their
    tangent, and in reverse mode their cotangent, is set to 0). A row left out by
    ``jnp.where(mask, loss, 0)`` or ``loss * mask`` therefore adds exactly 0 to the gradient,
    although the loss's own backward pass holds NaN there. Valid rows are unchanged, bit for bit.

    Args:
      logits: ``[..., n]`` floats.
      valid: ``[...]`` booleans.
    """
    return logits * jnp.where(valid, 1.0, jnp.nan).astype(logits.dtype)[..., None]


@poison_invalid_rows.defjvp
def _poison_invalid_rows_jvp(primals, tangents):
    logits, valid = primals
    logits_tangent, _ = tangents
    zero = jnp.zeros((), logits_tangent.dtype)
    return poison_invalid_rows(logits, valid), jnp.where(valid[..., None], logits_tangent, zero)


def prepare_logits(
    logits: ArrayLike, axis: int, where: Optional[ArrayLike], *, upcast: bool = True
) -> tuple[jax.Array, Optional[jax.Array], int, int]:
    """Validates logits, class axis and mask; returns them in compute dtype with the axis moved last.

    Returns:
      ``(logits_last, where_last, axis, num_classes)`` with ``logits_last`` of shape
      ``[..., num_classes]`` in float32 (16-bit inputs) or the input's float dtype; with
      ``upcast=False`` in the input's dtype (the caller upcasts).
    """
    logits = check_float_array("logits", logits)
    if logits.ndim == 0:
        raise ValueError("`logits` must have a class axis, got a scalar.")
    axis = normalize_axis(axis, logits.ndim)
    num_classes = check_num_classes(logits, axis)
    where = check_class_mask(where, logits)
    logits_last = jnp.moveaxis(logits, axis, -1)
    if upcast:
        logits_last = logits_last.astype(compute_dtype(logits.dtype))
    where_last = None if where is None else jnp.moveaxis(where, axis, -1)
    return logits_last, where_last, axis, num_classes


def prepare_labels(
    labels: ArrayLike, logits_shape: tuple[int, ...], axis: int
) -> tuple[jax.Array, str]:
    """Validates labels against the original logits' shape; returns them class-axis-last and their kind.

    Returns:
      ``(labels, kind)``: integer ids of shape ``[...]`` (kind 'int') or probability vectors of shape
      ``[..., num_classes]`` (kind 'soft').
    """
    labels = jnp.asarray(labels)
    kind = label_kind(labels, jax.ShapeDtypeStruct(logits_shape, jnp.float32), axis)
    if kind == "soft":
        labels = jnp.moveaxis(labels, axis, -1)
    return labels, kind


def label_targets(labels: jax.Array, kind: str, num_classes: int, dtype) -> jax.Array:
    """Probability-vector targets ``[..., num_classes]`` from ids or probability vectors."""
    if kind == "int":
        return jax.nn.one_hot(labels, num_classes, dtype=dtype)
    return labels.astype(dtype)


def prepare_classification(logits, labels, axis: int, where, example_mask=None) -> tuple:
    """Validates and moves everything class-axis-last; returns logits, mask, targets, labels, kind
    and the example mask.

    Integer labels follow the rule of `cross_entropy` (`label_ids`): the returned ids
    are in ``[0, num_classes)`` and the logits of rows with an invalid label are NaN, with no
    derivative (`poison_invalid_rows`). Rows left out by ``example_mask`` get harmless
    inputs (`_examples.harmless_rows`); the caller zeroes their values with `_examples.zero_rows`.
    """
    logits_shape = jnp.shape(logits)
    logits_last, where_last, axis, num_classes = prepare_logits(logits, axis, where)
    labels_last, kind = prepare_labels(labels, logits_shape, axis)
    example_mask = _examples.check_example_mask(example_mask, logits_last.shape[:-1])
    logits_last, labels_last = _examples.harmless_rows(example_mask, logits_last, labels_last, kind)
    if kind == "int":
        labels_last, valid = label_ids(labels_last, num_classes, where_last)
        logits_last = poison_invalid_rows(logits_last, valid)
    targets = label_targets(labels_last, kind, num_classes, logits_last.dtype)
    return logits_last, where_last, targets, labels_last, kind, example_mask


def distribution_tolerance(dtype) -> float:
    """How far from 1 a row of probabilities of this dtype may sum: ``max(0.01, 8 eps)``."""
    return max(0.01, 8 * float(jnp.finfo(dtype).eps))


def distribution_rows(probs: jax.Array) -> jax.Array:
    """``[...]`` True where a row of ``probs [..., K]`` is a distribution: entries in ``[0, 1]``
    summing to 1 within `distribution_tolerance` (False for a row with a NaN)."""
    tolerance = distribution_tolerance(probs.dtype)
    return jnp.all((probs >= 0) & (probs <= 1), axis=-1) & (
        jnp.abs(jnp.sum(probs, axis=-1) - 1) <= tolerance
    )


def warn_if_probabilities(name: str, logits, function: str) -> None:
    """Warns when concrete ``logits [..., K]`` look like probabilities: every row a distribution.

    A function that takes logits reads probabilities silently as scores (the NLL of probabilities
    is that of a much flatter softmax). Traced values cannot be checked; nothing happens then.
    """
    if not is_concrete(logits) or jnp.size(logits) == 0:
        return
    if bool(jnp.all(distribution_rows(jnp.asarray(logits, jnp.float32)))):
        warnings.warn(
            f"`{name}` of `{function}` look like probabilities (every row is a distribution); "
            f"`{function}` takes logits (unnormalised scores): pass the logits, or log-probabilities "
            "such as jnp.log(probs).",
            UserWarning,
            stacklevel=3,
        )


def warn_if_not_probabilities(name: str, probs, function: str) -> None:
    """Warns when concrete ``probs [..., K]`` hold rows that are not distributions (NaN results).

    Logits passed where probabilities are expected show this way. Traced values cannot be checked;
    the functions give NaN for such rows (or count them as invalid) in any case.
    """
    if not is_concrete(probs) or jnp.size(probs) == 0:
        return
    bad = int(jnp.sum(~distribution_rows(jnp.asarray(probs))))
    if bad:
        warnings.warn(
            f"`{name}` of `{function}` holds {bad} row(s) that are not probability distributions "
            "(entries in [0, 1] summing to 1); their results are NaN. If these are logits, pass "
            "jax.nn.softmax(logits).",
            UserWarning,
            stacklevel=3,
        )
