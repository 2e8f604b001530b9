r"""Train-time calibration losses from the literature, each composable with `gsc_jax.with_gsc`.

Per-example losses (values in optax's conventions, like `gsc_jax.focal_loss`):

- `adaptive_focal_loss`: FLSD-53, focal loss whose focusing parameter depends on the example's
  probability of its label (Mukhoti et al. 2020);
- `margin_label_smoothing_loss`: MbLS, cross-entropy plus a hinge on the logit distances larger
  than a margin (Liu et al. 2022).

Batch-level losses, whose penalty couples the examples of a batch:

- `mdca_loss`: MDCA, cross-entropy plus the multi-class difference between mean confidence and
  class frequency (Hebbalaguppe et al. 2022);
- `mmce_loss`: MMCE, cross-entropy plus the kernel calibration error of Kumar et al. (2018),
  unweighted or weighted;
- `dca_loss`: DCA, cross-entropy plus the difference between mean confidence and accuracy
  (Liang et al. 2020).

The batch-level losses follow one convention. The batch is every example along the axes other
than the class axis (``[B, K]``, or ``[B, H, W, K]`` pixels for segmentation). The penalty is
computed over the examples that take part (``example_mask`` True, a valid label, at least one class
in ``where``) and added to each of them:

.. math::
    \ell_i = \mathrm{CE}_i + \beta\, P(\text{batch}), \qquad
    \frac{1}{N} \sum_{i \text{ taking part}} \ell_i = \overline{\mathrm{CE}} + \beta\, P

so that the mean over the examples taking part is exactly the paper's objective, and so is the
gradient of that mean. Examples with ``example_mask`` False give 0 and a zero gradient row; use
``loss.sum() / example_mask.sum()`` (``loss.mean()`` without a mask). The values must be averaged
over the batch they were computed on: not summed (the penalty would count ``N`` times), not sliced
(a slice's mean lacks part of the penalty's gradient). Under `jax.jit` with globally sharded arrays
(data parallelism) the batch is the global batch automatically; under `jax.pmap` or
`jax.shard_map` each device's shard is a batch of its own. `gsc_jax.with_gsc` passes
``example_mask`` on to these losses and zeroes the GSC term of the masked rows too, so a masked
example gives 0 and a zero gradient row in the combined loss as well.

Poly-1 (Leng et al. 2022) is `optax.losses.poly_loss_cross_entropy`, which takes probability-vector
labels; with integer ids it composes with the GSC term as

.. code-block:: python

    poly1 = lambda z, y, **kw: optax.losses.poly_loss_cross_entropy(
        z, jax.nn.one_hot(y, z.shape[-1]), epsilon=2.0, **kw)
    loss = gsc_jax.with_gsc(poly1, gamma=0.02, top_c=2)(logits, labels).mean()

(``**kw`` passes ``axis``/``where`` on; for a class axis other than the last, one-hot along it.)
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from gsc_jax import _examples
from gsc_jax import _softmax
from gsc_jax import _validation

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _check_positive(name: str, value) -> None:
    """Raises ValueError unless a concrete `value` is a finite number > 0."""
    _validation.check_non_negative(name, value)
    if _validation.is_concrete(value) and not float(value) > 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {float(value)}.")


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a Python bool, got {value!r}.")
    return value


def adaptive_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    threshold: float = 0.2,
    eta_below: float = 5.0,
    eta_above: float = 3.0,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    example_mask: Optional[ArrayLike] = None,
) -> Array:
    r"""Computes the sample-dependent focal loss FLSD-53 (Mukhoti et al. 2020) per example.

    .. math::
        \mathrm{FL}(z, y) = -(1 - S_y)^{\eta(S_y)} \log S_y, \qquad
        \eta(p) = \begin{cases} 5 & p < 0.2 \\ 3 & p \ge 0.2 \end{cases}, \qquad
        S = \mathrm{softmax}(z)

    :math:`\eta` is chosen from the probability with no gradient through the choice (the reference
    reads it with ``.item()``); the gradient flows through :math:`(1 - S_y)^\eta` and
    :math:`\log S_y` as in `gsc_jax.focal_loss`. The reference
    (``Losses/focal_loss_adaptive_gamma.py`` in github.com/torrvision/focal_calibration) uses 5
    below 0.2, 3 in ``[0.2, 0.5)`` and its ``gamma`` argument, 3 for FLSD-53, from 0.5 on: two
    tiers, the defaults here. For probability-vector labels the focusing parameter is chosen per
    class, :math:`-\sum_i y_i (1 - S_i)^{\eta(S_i)} \log S_i`, which is the formula above for
    one-hot labels.

    Args:
      logits: ``[..., num_classes]`` scores (16-bit floats are computed in float32).
      labels: integer ids ``[...]`` (the rule of `gsc_jax.cross_entropy`) or probability vectors
        ``[..., num_classes]``.
      threshold: probability below which ``eta_below`` applies, in ``[0, 1]``; default 0.2.
      eta_below: focusing parameter where :math:`S_y <` ``threshold``, ``>= 0``; default 5.
      eta_above: focusing parameter where :math:`S_y \ge` ``threshold``, ``>= 0``; default 3.
      axis: the class axis.
      where: optional boolean class mask of the logits' shape.
      example_mask: optional ``[...]`` boolean mask; False examples (padding) give 0 and a zero
        gradient row, whatever their logits and label.

    Returns:
      ``[...]`` per-example loss.

    References:
      Mukhoti et al., `Calibrating Deep Neural Networks using Focal Loss
      <https://arxiv.org/abs/2002.09437>`_, NeurIPS 2020.
    """
    _validation.check_in_unit_interval("threshold", threshold)
    _validation.check_non_negative("eta_below", eta_below)
    _validation.check_non_negative("eta_above", eta_above)
    logits, where, targets, _, _, example_mask = _validation.prepare_classification(
        logits, labels, axis, where, example_mask
    )
    log_probs, probs = _softmax.masked_log_softmax(logits, where)
    one_minus_probs = jnp.maximum(-jnp.expm1(log_probs), 0.0)
    below = jax.lax.stop_gradient(probs) < threshold
    factor = jnp.where(
        below,
        _softmax.safe_power(one_minus_probs, eta_below),
        _softmax.safe_power(one_minus_probs, eta_above),
    )
    weighted = targets * factor * log_probs
    if where is not None:
        weighted = jnp.where(where, weighted, 0.0)
    return _examples.zero_rows(-jnp.sum(weighted, axis=-1), example_mask)


def margin_label_smoothing_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    margin: float = 10.0,
    alpha: float = 0.1,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    example_mask: Optional[ArrayLike] = None,
) -> Array:
    r"""Computes margin-based label smoothing, MbLS (Liu et al. 2022), per example.

    .. math::
        L(z, y) = \mathrm{CE}(z, y)
            + \frac{\alpha}{n} \sum_{j=1}^{n} \max\big(0,\ \max_k z_k - z_j - m\big)

    with ``n`` the number of classes taking part: the reference
    (``calibrate/losses/logit_margin_l1.py`` in github.com/by-liu/MbLS, class ``LogitMarginL1``)
    takes ``F.relu(diff - margin).mean()`` over the batch and the classes, so the penalty is the
    mean over classes here and the mean over the batch gives the reference's loss. The gradient
    flows through :math:`\max_k z_k` too, as in the reference. Defaults ``margin=10``,
    ``alpha=0.1`` are the reference's and the paper's.

    Args:
      logits: ``[..., num_classes]`` scores.
      labels: integer ids ``[...]`` (the rule of `gsc_jax.cross_entropy`) or probability vectors
        ``[..., num_classes]``.
      margin: the margin :math:`m \ge 0` on logit distances.
      alpha: weight :math:`\alpha \ge 0` of the penalty.
      axis: the class axis.
      where: optional boolean class mask; masked classes take no part in the max or the mean.
        (A ``-inf`` logit left unmasked is infinitely far from the max: the penalty is ``inf``.)
      example_mask: optional ``[...]`` boolean mask; False examples (padding) give 0 and a zero
        gradient row, whatever their logits and label.

    Returns:
      ``[...]`` per-example loss (0 for a row without classes taking part).

    References:
      Liu et al., `The Devil is in the Margin: Margin-based Label Smoothing for Network Calibration
      <https://arxiv.org/abs/2111.15430>`_, CVPR 2022.
    """
    _validation.check_non_negative("margin", margin)
    _validation.check_non_negative("alpha", alpha)
    logits, where, targets, labels, kind, example_mask = _validation.prepare_classification(
        logits, labels, axis, where, example_mask
    )
    cross_entropy = _softmax.cross_entropy_last_axis(
        logits, labels if kind == "int" else targets, kind, where
    )
    if where is None:
        row_max = jnp.max(logits, axis=-1, keepdims=True)
        hinge = jax.nn.relu(row_max - logits - margin)
    else:
        row_max = jnp.max(jnp.where(where, logits, -jnp.inf), axis=-1, keepdims=True)
        row_max = jnp.where(jnp.any(where, axis=-1, keepdims=True), row_max, 0.0)
        hinge = jnp.where(where, jax.nn.relu(row_max - jnp.where(where, logits, 0.0) - margin), 0.0)
    count = _softmax.num_active_classes(logits, where)
    penalty = jnp.sum(hinge, axis=-1) / jnp.maximum(count, 1.0)
    return _examples.zero_rows(cross_entropy + alpha * penalty, example_mask)


class _Batch:
    """A batch prepared for a batch-level penalty: everything class-axis-last, rows flattened."""

    def __init__(self, logits, labels, axis, where, example_mask, *, soft_labels: bool):
        logits_shape = jnp.shape(logits)
        logits, where, axis, num_classes = _validation.prepare_logits(logits, axis, where)
        labels, kind = _validation.prepare_labels(labels, logits_shape, axis)
        if kind == "soft" and not soft_labels:
            raise TypeError(
                "`labels` must be integer class ids of the logits' shape without the class axis "
                f"for this loss; got probability vectors of shape {labels.shape}."
            )
        self.batch_shape = logits.shape[:-1]
        example_mask = _examples.check_example_mask(example_mask, self.batch_shape)
        logits, labels = _examples.harmless_rows(example_mask, logits, labels, kind)
        if kind == "int":
            labels, valid = _validation.label_ids(labels, num_classes, where)
            logits = _validation.poison_invalid_rows(logits, valid)
        else:
            valid = jnp.ones(self.batch_shape, bool)
        targets = _validation.label_targets(labels, kind, num_classes, logits.dtype)
        self.cross_entropy = _softmax.cross_entropy_last_axis(
            logits, labels if kind == "int" else targets, kind, where
        )
        taking_part = valid
        if where is not None:
            taking_part = taking_part & jnp.any(where, axis=-1)
        if example_mask is not None:
            taking_part = taking_part & example_mask
        self.example_mask = example_mask
        self.taking_part = taking_part
        _, probs = _softmax.masked_log_softmax(logits, where)
        # Rows not taking part (NaN for an invalid label) are zeroed before any batch sum.
        self.probs = jnp.where(taking_part[..., None], probs, 0.0).reshape(-1, num_classes)
        self.targets = jnp.where(taking_part[..., None], targets, 0.0).reshape(-1, num_classes)
        self.part = taking_part.reshape(-1).astype(logits.dtype)
        self.count = jnp.sum(self.part)
        self.num_classes = num_classes
        self.dtype = logits.dtype

    def confidence_and_accuracy(self) -> tuple[Array, Array]:
        """``[N]`` top-label confidence (with gradient) and correctness (without), 0 off the batch.

        Correctness is the target's weight on the predicted (first maximal) class: 1/0 for ids.
        """
        confidence = jnp.max(self.probs, axis=-1)
        predicted = jnp.argmax(self.probs, axis=-1)
        accuracy = jnp.take_along_axis(self.targets, predicted[:, None], axis=-1)[:, 0]
        return confidence * self.part, jax.lax.stop_gradient(accuracy * self.part)

    def combine(self, beta, penalty: Array) -> Array:
        """``CE_i + beta * penalty`` for rows taking part, ``CE_i`` or 0 (masked rows) otherwise."""
        penalty = penalty.astype(self.dtype)
        rest = self.cross_entropy
        if self.example_mask is not None:
            rest = jnp.where(self.example_mask, rest, 0.0)
        return jnp.where(self.taking_part, self.cross_entropy + beta * penalty, rest)


def mdca_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    beta: float = 1.0,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    example_mask: Optional[ArrayLike] = None,
) -> Array:
    r"""Computes cross-entropy plus the MDCA penalty (Hebbalaguppe et al. 2022), per example.

    .. math::
        \ell_i = \mathrm{CE}(z_i, y_i) + \beta\, \frac{1}{K} \sum_{j=1}^{K}
            \Big| \frac{1}{N} \sum_{n} S_{nj} - \frac{1}{N} \sum_{n} y_{nj} \Big|

    over the ``N`` examples of the batch that take part, ``K`` the size of the class axis (a class
    masked out in every row adds 0), :math:`y` one-hot for ids. Follows ``MDCA`` and
    ``ClassficationAndMDCA`` (``NLL+MDCA``, ``beta=1.0``) in ``solvers/loss.py`` of
    github.com/mdca-loss/MDCA-Calibration. A batch-level loss: see the module's convention (average
    the values over the batch they were computed on, ``loss.sum() / example_mask.sum()``).

    Args:
      logits: ``[..., num_classes]`` scores; every example along the other axes is in the batch.
      labels: integer ids ``[...]`` (the rule of `gsc_jax.cross_entropy`: an invalid id gives NaN
        for that example and leaves it out of the penalty) or probability vectors.
      beta: weight of the penalty, ``>= 0``; default 1 (the reference's).
      axis: the class axis.
      where: optional boolean class mask of the logits' shape.
      example_mask: optional boolean ``[...]``; False examples (padding) take no part and give 0.

    Returns:
      ``[...]`` per-example values whose mean over the examples taking part is the MDCA objective.

    References:
      Hebbalaguppe et al., `A Stitch in Time Saves Nine: A Train-Time Regularizing Loss for
      Improved Neural Network Calibration <https://arxiv.org/abs/2203.13834>`_, CVPR 2022.
    """
    _validation.check_non_negative("beta", beta)
    batch = _Batch(logits, labels, axis, where, example_mask, soft_labels=True)
    count = jnp.maximum(batch.count, 1.0)
    mean_confidence = jnp.sum(batch.probs, axis=0) / count
    mean_frequency = jnp.sum(batch.targets, axis=0) / count
    penalty = jnp.sum(jnp.abs(mean_confidence - mean_frequency)) / batch.num_classes
    return batch.combine(beta, penalty)


def dca_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    beta: float = 1.0,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    example_mask: Optional[ArrayLike] = None,
) -> Array:
    r"""Computes cross-entropy plus the DCA penalty (Liang et al. 2020), per example.

    .. math::
        \ell_i = \mathrm{CE}(z_i, y_i) + \beta\, \Big| \frac{1}{N} \sum_n \max_k S_{nk}
            - \frac{1}{N} \sum_n \mathbb{1}[\arg\max_k S_{nk} = y_n] \Big|

    over the ``N`` examples of the batch that take part; the accuracy term has no gradient. For
    probability-vector labels the accuracy of an example is its label's weight on the predicted
    class. Follows ``DCA`` in ``solvers/loss.py`` of github.com/mdca-loss/MDCA-Calibration, whose
    default ``beta=1.0`` is the default here. A batch-level loss: see the module's convention.

    Args:
      logits: ``[..., num_classes]`` scores; every example along the other axes is in the batch.
      labels: integer ids ``[...]`` (the rule of `gsc_jax.cross_entropy`: an invalid id gives NaN
        for that example and leaves it out of the penalty) or probability vectors.
      beta: weight of the penalty, ``>= 0``.
      axis: the class axis.
      where: optional boolean class mask of the logits' shape.
      example_mask: optional boolean ``[...]``; False examples (padding) take no part and give 0.

    Returns:
      ``[...]`` per-example values whose mean over the examples taking part is the DCA objective.

    References:
      Liang et al., `Improved Trainable Calibration Method for Neural Networks on Medical Imaging
      Classification <https://arxiv.org/abs/2009.04057>`_, BMVC 2020.
    """
    _validation.check_non_negative("beta", beta)
    batch = _Batch(logits, labels, axis, where, example_mask, soft_labels=True)
    confidence, accuracy = batch.confidence_and_accuracy()
    count = jnp.maximum(batch.count, 1.0)
    penalty = jnp.abs(jnp.sum(confidence) / count - jnp.sum(accuracy) / count)
    return batch.combine(beta, penalty)


def _laplacian_kernel(confidence: Array, bandwidth: float) -> Array:
    """``[N, N]`` kernel ``exp(-|r_i - r_j| / bandwidth)``."""
    return jnp.exp(-jnp.abs(confidence[:, None] - confidence[None, :]) / bandwidth)


def mmce_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    beta: float = 4.0,
    weighted: bool = True,
    bandwidth: float = 0.4,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    example_mask: Optional[ArrayLike] = None,
) -> Array:
    r"""Computes cross-entropy plus the MMCE penalty (Kumar et al. 2018), per example.

    With :math:`r_n = \max_k S_{nk}` the confidence, :math:`c_n = \mathbb{1}[\arg\max_k S_{nk} =
    y_n]` the correctness (no gradient) and the Laplacian kernel
    :math:`k(r, r') = \exp(-|r - r'| / 0.4)`, over the ``N`` examples of the batch that take part:

    - ``weighted=False`` (MMCE, ``calibration_unbiased_loss`` / ``MMCE``), the squared estimate as
      the reference returns it (no square root):

      .. math::
          P = \frac{1}{N^2} \sum_{n, n'} (c_n - r_n)(c_{n'} - r_{n'})\, k(r_n, r_{n'})

    - ``weighted=True`` (MMCE_w, ``calibration_mmce_w_loss`` / ``MMCE_weighted``), with ``C`` the
      ``m`` correct and ``I`` the ``n`` incorrect examples,

      .. math::
          P = \sqrt{\frac{\sum_{C^2} (1-r)(1-r') k}{m^2 (m^2 + 10^{-5})}
              + \frac{\sum_{I^2} r r' k}{n^2 (n^2 + 10^{-5})}
              - \frac{2 \sum_{C \times I} (1-r) r' k}{m n (m n + 10^{-5})} + 10^{-10}}

      and 0 when ``m`` or ``n`` is 0. The normalisation is the reference code's (a mean over the
      pairs, then a division by ``m^2 + 1e-5`` etc.), kept so that ``beta`` means what it means
      there; the square root's argument is floored at 0 against rounding.

    :math:`\ell_i = \mathrm{CE}_i + \beta P`. The references are ``20ng_mmce.py`` in
    github.com/aviralkumar2907/MMCE (the authors' TensorFlow code: the weighted variant with
    coefficient ``mmce_coeff=4.0``, the defaults here) and ``Losses/mmce.py`` in
    github.com/torrvision/focal_calibration (PyTorch, both variants). The penalty holds an
    ``[N, N]`` kernel matrix: memory grows with the square of the batch. A batch-level loss: see
    the module's convention.

    Args:
      logits: ``[..., num_classes]`` scores; every example along the other axes is in the batch.
      labels: integer ids ``[...]`` (the rule of `gsc_jax.cross_entropy`: an invalid id gives NaN
        for that example and leaves it out of the penalty). Probability vectors are not accepted.
      beta: weight :math:`\beta \ge 0` of the penalty.
      weighted: MMCE_w (True) or MMCE (False).
      bandwidth: the kernel's width, ``> 0`` (0.4 in the paper and both references).
      axis: the class axis.
      where: optional boolean class mask of the logits' shape.
      example_mask: optional boolean ``[...]``; False examples (padding) take no part and give 0.

    Returns:
      ``[...]`` per-example values whose mean over the examples taking part is the MMCE objective.

    References:
      Kumar, Sarawagi and Jain, `Trainable Calibration Measures for Neural Networks from Kernel
      Mean Embeddings <https://proceedings.mlr.press/v80/kumar18a.html>`_, ICML 2018.
    """
    _validation.check_non_negative("beta", beta)
    _check_bool("weighted", weighted)
    _check_positive("bandwidth", bandwidth)
    batch = _Batch(logits, labels, axis, where, example_mask, soft_labels=False)
    confidence, correct = batch.confidence_and_accuracy()
    kernel = _laplacian_kernel(confidence, bandwidth)
    if not weighted:
        residual = correct - confidence  # 0 for rows not taking part
        count = jnp.maximum(batch.count, 1.0)
        penalty = residual @ kernel @ residual / (count * count)
        return batch.combine(beta, penalty)
    incorrect = batch.part - correct
    m = jnp.sum(correct)
    n = jnp.sum(incorrect)
    both = (m > 0) & (n > 0)
    m_safe = jnp.where(both, m, 1.0)
    n_safe = jnp.where(both, n, 1.0)
    a = correct * (1.0 - confidence)
    b = incorrect * confidence
    error = (
        (a @ kernel @ a) / (m_safe * m_safe) / (m_safe * m_safe + 1e-5)
        + (b @ kernel @ b) / (n_safe * n_safe) / (n_safe * n_safe + 1e-5)
        - 2.0 * (a @ kernel @ b) / (m_safe * n_safe) / (m_safe * n_safe + 1e-5)
    )
    penalty = jnp.where(both, jnp.sqrt(jnp.maximum(error, 0.0) + 1e-10), 0.0)
    return batch.combine(beta, penalty)
