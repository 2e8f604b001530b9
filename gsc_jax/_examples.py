"""Per-example rules shared by the metrics, temperature scaling and the OLS statistics.

Class ids: for ``n`` classes an integer label ``y`` is valid when ``-n <= y < n``; a negative id
counts from the end, as in NumPy indexing (``-1`` is class ``n - 1``). A label outside ``[-n, n)``
is never a correct prediction.

Example masks: ``example_mask`` is a boolean array of exactly the labels' shape (one entry per
example); False marks an example (padding) that takes no part.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def as_labels(labels: ArrayLike) -> Array:
    """Returns ``labels`` as a jax array without turning an invalid id into a valid one.

    Without 64-bit types in jax, ``jnp.asarray`` wraps 64-bit NumPy integers to int32 (``2**32 + 3``
    would become 3); such arrays are clipped to the int32 range first, which keeps every id outside
    ``[-n, n)`` outside it.
    """
    if (
        isinstance(labels, (np.ndarray, np.generic))
        and labels.dtype.kind in "iu"
        and labels.dtype.itemsize == 8
        and not jax.config.jax_enable_x64
    ):
        int32 = np.iinfo(np.int32)
        if labels.dtype.kind == "u":
            labels = np.minimum(labels, int32.max)
        else:
            labels = np.clip(labels, int32.min, int32.max)
        labels = labels.astype(np.int32)
    return jnp.asarray(labels)


def class_ids(labels: Array, num_classes: int) -> tuple[Array, Array]:
    """Resolves integer labels against ``num_classes``.

    Args:
      labels: integer array of any shape.
      num_classes: ``n``, the number of classes.

    Returns:
      ``(ids, valid)``: int32 ids in ``[0, n)`` (negative labels counted from the end, invalid
      labels replaced by 0 so that they can index safely) and a boolean array, True where the label
      lies in ``[-n, n)``; both of the labels' shape.
    """
    signed = jnp.issubdtype(labels.dtype, jnp.signedinteger)
    if labels.dtype.itemsize < 4 or (signed and labels.dtype.itemsize == 4):
        labels = labels.astype(jnp.int32)
        signed = True
    if signed:
        valid = (labels >= -num_classes) & (labels < num_classes)
        ids = jnp.where(labels < 0, labels + num_classes, labels)
    else:
        valid = labels < num_classes
        ids = labels
    return jnp.where(valid, ids, 0).astype(jnp.int32), valid


def check_example_mask(
    example_mask: Optional[ArrayLike], batch_shape: tuple[int, ...]
) -> Optional[Array]:
    """Checks that an example mask is boolean with exactly the labels' shape; returns it or None."""
    if example_mask is None:
        return None
    example_mask = jnp.asarray(example_mask)
    if example_mask.shape != tuple(batch_shape):
        raise ValueError(
            "`example_mask` must be a boolean mask with one entry per example, of the labels' "
            f"shape {tuple(batch_shape)}; got shape {example_mask.shape}."
        )
    if example_mask.dtype != jnp.bool_:
        raise TypeError(f"`example_mask` must be a boolean array, got dtype {example_mask.dtype}.")
    return example_mask


def harmless_rows(
    example_mask: Optional[Array], logits: Array, labels: Array, label_kind: str
) -> tuple[Array, Array]:
    """Class-axis-last ``logits [..., n]`` and labels with the rows left out made harmless.

    Rows where ``example_mask`` is False (padding: any logits, any label) get logits 0 and label 0
    (integer ids) or an all-zero target (probability vectors), so whatever a loss computes there is
    finite and, once `zero_rows` discards it, adds exactly 0 to the value and the gradient.
    """
    if example_mask is None:
        return logits, labels
    keep = example_mask[..., None]
    logits = jnp.where(keep, logits, jnp.zeros((), logits.dtype))
    if label_kind == "int":
        labels = jnp.where(example_mask, labels, jnp.zeros((), labels.dtype))
    else:
        labels = jnp.where(keep, labels, jnp.zeros((), labels.dtype))
    return logits, labels


def zero_rows(values: Array, example_mask: Optional[Array]) -> Array:
    """``values [...]`` with 0 where ``example_mask`` is False (unchanged without a mask)."""
    if example_mask is None:
        return values
    return jnp.where(example_mask, values, jnp.zeros((), values.dtype))
