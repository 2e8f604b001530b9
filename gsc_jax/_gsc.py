r"""The GSC term (Zhao et al. 2022, Sec. 3.2) and the losses built on it.

The GSC term is a product of ``top_c`` one-dimensional Gaussian densities, evaluated at the
``top_c`` largest softmax scores, with mean ``mu`` and a standard deviation equal to the softmax
entropy. It needs no label, so it can be added to any classification loss.
"""

from __future__ import annotations

import functools
import numbers
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from gsc_jax import _examples
from gsc_jax import _fused
from gsc_jax import _losses
from gsc_jax import _softmax
from gsc_jax import _validation

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _sigma_floor(dtype) -> float:
    """Smallest sigma used in log space: keeps 1/sigma^2 and its gradient finite in `dtype`.

    Below it the GSC value is exactly 0 in floating point anyway (it holds exp(-1/(2 sigma^2)) with
    the largest score near 1), so the floor changes no value, only keeps gradients finite.
    """
    return float(jnp.finfo(dtype).eps) ** 2


def log_gaussian_product(top_scores: Array, mu: float, sigma: Array) -> Array:
    r"""Log of :math:`\prod_{i=1}^{c} \mathcal{N}(K_i; \mu, \sigma)` (paper Eq. 4-5), in log space.

    .. math::
        \log f = -\tfrac{c}{2}\log(2\pi) - c\log\sigma - \frac{\sum_i (K_i - \mu)^2}{2\sigma^2}

    sigma is floored at ``eps(dtype)**2`` and ``1/sigma^2`` is formed as ``exp(-2 log sigma)``, so
    value and gradient stay finite for sigma = 0 (one-hot scores).

    Args:
      top_scores: ``[..., c]`` the selected scores K.
      mu: mean of every Gaussian factor.
      sigma: ``[...]`` standard deviation per row.

    Returns:
      ``[...]`` the log density.
    """
    top_c = top_scores.shape[-1]
    log_sigma = jnp.log(jnp.maximum(sigma, _sigma_floor(top_scores.dtype)))
    squared_distance = jnp.sum(jnp.square(top_scores - mu), axis=-1)
    return (
        -0.5 * top_c * _softmax.LOG_TWO_PI
        - top_c * log_sigma
        - 0.5 * squared_distance * jnp.exp(-2.0 * log_sigma)
    )


def gsc_from_statistics(
    entropy: Array,
    top_scores: Array,
    num_classes: Array,
    *,
    mu: float,
    normalize_entropy: bool,
    stop_gradient_sigma: bool,
) -> Array:
    r"""The GSC term from per-row softmax statistics (Eq. 4-8); shared by both implementations.

    Args:
      entropy: ``[...]`` :math:`E(S)` in nats.
      top_scores: ``[..., c]`` :math:`K = \mathrm{top}_c(S)`.
      num_classes: ``[...]`` number of classes taking part, ``n``.
      mu, normalize_entropy, stop_gradient_sigma: see `gsc_term`.

    Returns:
      ``[...]`` :math:`f_c(K, \mu, \sigma)`, 0 for rows with ``n < 2``.
    """
    taking_part = num_classes >= 2
    sigma = entropy
    if normalize_entropy:
        sigma = _softmax.normalized_entropy(sigma, num_classes)
    if stop_gradient_sigma:
        sigma = jax.lax.stop_gradient(sigma)
    # Rows with n < 2 give 0; sigma = 1 there keeps f (and 0 * df) finite, so no NaN cotangent.
    sigma = jnp.where(taking_part, sigma, 1.0)
    value = jnp.exp(log_gaussian_product(top_scores, mu, sigma))
    return jnp.where(taking_part, value, 0.0)


def gsc_term_last_axis(
    logits: Array,
    where: Optional[Array],
    *,
    top_c: int,
    mu: float,
    normalize_entropy: bool,
    stop_gradient_sigma: bool,
) -> Array:
    """Reference GSC term on the last axis of validated, compute-dtype logits (see `gsc_term`).

    Plain autodiff through softmax, entropy and `jax.lax.top_k`. Rows with fewer than two classes
    taking part give 0.
    """
    log_probs, probs = _softmax.masked_log_softmax(logits, where)
    top_scores, _ = jax.lax.top_k(probs, top_c)
    return gsc_from_statistics(
        _softmax.entropy_from_log_probs(log_probs, probs),
        top_scores,
        _softmax.num_active_classes(logits, where),
        mu=mu,
        normalize_entropy=normalize_entropy,
        stop_gradient_sigma=stop_gradient_sigma,
    )


IMPLEMENTATIONS = ("fused", "reference")


def _check_implementation(implementation: Optional[str]) -> str:
    """``'fused'`` for None or ``'fused'``, ``'reference'`` for ``'reference'``; else ValueError."""
    if implementation is None:
        return "fused"
    if isinstance(implementation, str) and implementation in IMPLEMENTATIONS:
        return implementation
    raise ValueError(
        "`implementation` must be None (the default: 'fused'), 'fused' or 'reference', got "
        f"{implementation!r}."
    )


def check_mu(mu) -> float:
    if _validation.is_concrete(mu):
        if np.ndim(mu) != 0 or not np.isfinite(mu):
            raise ValueError(f"`mu` must be a finite scalar, got {mu!r}.")
    return mu


def _fused_gsc_last_axis(
    logits_last: Array,
    where_last: Optional[Array],
    labels_last: Optional[Array],
    label_kind: Optional[str],
    *,
    top_c: int,
    mu: float,
    normalize_entropy: bool,
    stop_gradient_sigma: bool,
) -> tuple[Array, Array]:
    """Cross-entropy (0 if no labels) and GSC term from one fused softmax pass (`_fused`)."""
    cross_entropy, entropy, top_scores = _fused.softmax_statistics(
        logits_last, where_last, labels_last, label_kind, top_c
    )
    term = gsc_from_statistics(
        entropy,
        top_scores,
        # in the statistics' dtype: 16-bit logits reach here as they are
        _softmax.num_active_classes(logits_last, where_last, entropy.dtype),
        mu=mu,
        normalize_entropy=normalize_entropy,
        stop_gradient_sigma=stop_gradient_sigma,
    )
    return cross_entropy, term


def gsc_term(
    logits: ArrayLike,
    *,
    top_c: int = 2,
    mu: float = 0.0,
    normalize_entropy: bool = True,
    stop_gradient_sigma: bool = False,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    example_mask: Optional[ArrayLike] = None,
    implementation: Optional[str] = None,
) -> Array:
    r"""Computes the Gaussian Score Calibrating (GSC) term per example.

    The term rewards confident score vectors less and less as they sharpen: it is large when the
    top scores are close to each other (an ambiguous prediction) and vanishes as the prediction
    becomes one-hot. It does not use labels, so it can regularise unsupervised objectives too.

    With :math:`S = \mathrm{softmax}(z)` over the ``n`` classes taking part,

    .. math::
        E(S) &= -\sum_i S_i \log S_i \quad \text{(Eq. 7, natural log)} \\
        \sigma &= E(S) / \log n \ \text{(Eq. 8, if normalize\_entropy) or } E(S) \\
        K &= \mathrm{top}_{c}(S) \quad \text{(Eq. 6)} \\
        f &= \prod_{i=1}^{c} \mathcal{N}(K_i; \mu, \sigma)
           = (2\pi\sigma^2)^{-c/2} \exp\Big(-\sum_i \frac{(K_i - \mu)^2}{2\sigma^2}\Big)
           \quad \text{(Eq. 4-5)}

    computed in log space. Gradients flow through both :math:`K` and :math:`\sigma` unless
    ``stop_gradient_sigma`` (the paper's Appendix 6.2 analysis holds :math:`\sigma` fixed).

    A note on the paper's derivative: Appendix Eq. 12/17 states
    :math:`\partial f_2/\partial p = f_2 (1-p)/\sigma^2` for the binary case
    :math:`K = (p, 1-p)`, and Table 8's :math:`f'` column follows that formula. Differentiating
    Eq. 13 with :math:`\sigma` fixed actually gives :math:`f_2 (1-2p)/\sigma^2`: the step in Eq. 17
    drops a factor (:math:`n' = (1-2p)/\sigma^2`, not :math:`(1-p)/\sigma^2`). This function's
    gradients are the exact ones (checked against float64 finite differences in the tests);
    ``python -m experiments.table8`` (in a checkout of the repository) prints both columns side by
    side.

    Args:
      logits: ``[..., num_classes, ...]`` unnormalised scores; at least 2 classes along ``axis``.
        16-bit floats are computed in float32; float64 stays float64 (with ``jax_enable_x64``).
      top_c: number of top scores that enter the product, ``1 <= top_c <= num_classes``. The paper
        uses 2 or 3 for CIFAR-10, 5-7 for ImageNet, 7-9 for segmentation.
      mu: mean of every Gaussian factor. The paper uses 0; values above 0.5 penalise confident
        predictions.
      normalize_entropy: if True, :math:`\sigma = E/\log n` in [0, 1] (Eq. 8, the multi-class
        definition); if False, :math:`\sigma = E` in nats (the binary convention of Eq. 13-14 and
        Table 8).
      stop_gradient_sigma: if True, treat :math:`\sigma` as a constant in the backward pass.
      axis: the class axis (a single int).
      where: optional boolean mask of the logits' shape; masked classes take no part (probability
        0, not counted in ``n``). Rows with fewer than 2 classes taking part give 0.
      example_mask: optional boolean mask of the logits' shape without ``axis``; False examples
        (padding) give 0 and a zero gradient row, whatever their logits.
      implementation: how the term and its derivatives are computed, as in
        `jax.nn.dot_product_attention`:

        - None (default) or ``'fused'``: one softmax pass (one exponential per logit) and a
          closed-form backward pass, :math:`\partial f / \partial z = S \odot (g - \langle g, S
          \rangle)` with :math:`g = \partial f / \partial S` (see `gsc_jax._fused`). Supports
          `jax.jit`, `jax.vmap`, sharding and first-order reverse mode (`jax.grad`, `jax.vjp`),
          also with respect to a traced ``mu``; forward mode (`jax.jvp`, `jax.jacfwd`) and second
          derivatives (`jax.hessian`, grad of grad) raise an error.
        - ``'reference'``: softmax, entropy and `jax.lax.top_k` by plain autodiff; every JAX
          transformation, second derivatives included; usually slower, with a few times the
          fused path's temporary memory on large rows.

        Both give the same values and first derivatives to rounding (ties among the top scores
        resolved as `jax.lax.top_k` does); ``python -m benchmarks.loss_overhead`` measures their
        cost (``docs/performance.md``).

    Returns:
      The GSC value per example, shape of ``logits`` without ``axis``, in the compute dtype. A
      row whose classes taking part all have logit ``-inf`` has no softmax and gives NaN.

    Raises:
      ValueError: ``top_c`` outside ``[1, num_classes]``, fewer than 2 classes, a mask whose shape
        differs from the logits', a tuple or out-of-range ``axis``, a non-finite ``mu``, an
        unknown ``implementation``.
      TypeError: non-floating logits or a non-boolean mask.

    Examples:
      >>> import jax.numpy as jnp
      >>> from gsc_jax import gsc_term
      >>> round(float(gsc_term(jnp.zeros(10), top_c=2)), 6)  # (2 pi)^-1 exp(-0.01)
      0.157571

    References:
      Zhao et al., `GSC Loss: A Gaussian Score Calibrating Loss for Deep Learning
      <https://arxiv.org/abs/2203.00833>`_, 2022.
    """
    implementation = _check_implementation(implementation)
    fused = implementation == "fused"
    logits_last, where_last, _, num_classes = _validation.prepare_logits(
        logits, axis, where, upcast=not fused
    )
    top_c = _validation.check_top_c(top_c, num_classes)
    mu = check_mu(mu)
    example_mask = _examples.check_example_mask(example_mask, logits_last.shape[:-1])
    if example_mask is not None:
        logits_last = jnp.where(
            example_mask[..., None], logits_last, jnp.zeros((), logits_last.dtype)
        )
    options = dict(
        top_c=top_c,
        mu=mu,
        normalize_entropy=normalize_entropy,
        stop_gradient_sigma=stop_gradient_sigma,
    )
    if not fused:
        term = gsc_term_last_axis(logits_last, where_last, **options)
    else:
        _, term = _fused_gsc_last_axis(logits_last, where_last, None, None, **options)
    return _examples.zero_rows(term, example_mask)


def gsc_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: Union[float, ArrayLike],
    top_c: int,
    mu: float = 0.0,
    normalize_entropy: bool = True,
    stop_gradient_sigma: bool = False,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
    example_mask: Optional[ArrayLike] = None,
    implementation: Optional[str] = None,
) -> Array:
    r"""Computes cross-entropy plus ``gamma`` times the GSC term per example (paper Eq. 9).

    .. math::
        L(z, y) = \mathrm{CE}(z, y) + \gamma\, f_{top_c}(K, \mu, \sigma)

    With the default (fused) implementation both terms come from one softmax pass (one
    exponential per logit) and the gradient with respect to the logits is one elementwise pass,

    .. math::
        \frac{\partial L}{\partial z} = \Big(\sum_j y_j\Big) S - y
            + \gamma\, S \odot \big(g - \langle g, S \rangle\big), \qquad
        g = \frac{\partial f}{\partial S},

    see `gsc_jax._fused`: XLA operations on every backend, or on CPU two C++ row kernels once
    `gsc_jax.cpu_kernel.enable` is called. ``implementation='reference'`` is
    `gsc_jax.cross_entropy` plus ``gamma`` times `gsc_term` by plain autodiff. Values and first
    derivatives (logits, soft labels, ``gamma``, ``mu``) are equal to rounding;
    ``python -m benchmarks.loss_overhead`` measures the cost of each relative to optax's
    cross-entropy alone.

    Args:
      logits: ``[..., num_classes]`` scores (16-bit floats are computed in float32).
      labels: ``[...]`` integer class ids, the rule of `gsc_jax.cross_entropy` (ids in
        ``[-n, n)``, negative ones from the end; an id outside it or naming a masked-out class
        gives a NaN value for that example and no gradient through its cross-entropy), or
        ``[..., num_classes]`` probability vectors.
      gamma: weight of the GSC term, ``>= 0``. The paper uses 0.05 (AlexNet, CIFAR-10), 0.02
        (ConvMixer, ImageNet ResNets) and suggests starting from 0.01. May be traced.
      top_c: number of top scores in the term, ``1 <= top_c <= num_classes``.
      mu, normalize_entropy, stop_gradient_sigma, axis, where: see `gsc_term`.
      example_mask: optional ``[...]`` boolean mask; False examples (padding) give 0 and a zero
        gradient row, whatever their logits and label (the rule of `gsc_jax.cross_entropy`).
      implementation: None (default) or ``'fused'``: the fused path, first-order reverse-mode
        derivatives only (`jax.grad`, `jax.vjp`, under `jax.jit`, `jax.vmap` and sharding;
        second derivatives, and forward mode outside `jax.jit`, raise an error naming
        ``'reference'``; forward mode traced inside `jax.jit` raises JAX's TypeError about
        `jax.custom_vjp`);
        ``'reference'``: plain autodiff, every transformation. See `gsc_term`.

    Returns:
      ``[...]`` per-example loss.

    Raises:
      ValueError / TypeError: as `gsc_term`, plus a negative ``gamma`` or labels whose shape fits
      neither form.
    """
    implementation = _check_implementation(implementation)
    _validation.check_non_negative("gamma", gamma)
    options = dict(
        top_c=top_c,
        mu=mu,
        normalize_entropy=normalize_entropy,
        stop_gradient_sigma=stop_gradient_sigma,
    )
    if implementation == "reference":
        masks = dict(axis=axis, where=where, example_mask=example_mask)
        term = gsc_term(logits, implementation="reference", **masks, **options)
        return _losses.cross_entropy(logits, labels, **masks) + gamma * term
    logits_shape = jnp.shape(logits)
    logits_last, where_last, axis, num_classes = _validation.prepare_logits(
        logits, axis, where, upcast=False
    )
    options["top_c"] = _validation.check_top_c(top_c, num_classes)
    options["mu"] = check_mu(mu)
    labels_last, label_kind = _validation.prepare_labels(labels, logits_shape, axis)
    if label_kind == "soft":
        labels_last = labels_last.astype(_validation.compute_dtype(logits_last.dtype))
    example_mask = _examples.check_example_mask(example_mask, logits_last.shape[:-1])
    logits_last, labels_last = _examples.harmless_rows(
        example_mask, logits_last, labels_last, label_kind
    )
    cross_entropy, term = _fused_gsc_last_axis(
        logits_last, where_last, labels_last, label_kind, **options
    )
    return _examples.zero_rows(cross_entropy + gamma * term, example_mask)


LossFn = Callable[..., Array]


def with_gsc(
    base_loss: LossFn,
    *,
    gamma: Union[float, ArrayLike],
    top_c: int,
    mu: float = 0.0,
    normalize_entropy: bool = True,
    stop_gradient_sigma: bool = False,
    implementation: Optional[str] = None,
) -> LossFn:
    r"""Adds ``gamma`` times the GSC term to any per-example classification loss.

    .. math::
        L(z, y) = \mathrm{base\_loss}(z, y) + \gamma\, f_{top_c}(K, \mu, \sigma) \quad \text{(Eq. 9)}

    The returned function has ``base_loss``'s signature,
    ``(logits, labels, **base_kwargs) -> [batch...]``; ``axis``, ``where`` and ``example_mask`` in
    ``base_kwargs`` are passed to the GSC term too, so that a masked example (``example_mask``
    False, which every loss of `gsc_jax` takes) adds 0 to the loss and to the gradient. Composes with every loss in `gsc_jax` (cross-entropy, label
    smoothing, focal, entropy-regularised, online label smoothing, margin logits fed to
    cross-entropy) and with a user's own.

    When ``base_loss`` is `gsc_jax.cross_entropy` itself, the result is `gsc_loss` (with the fused
    implementation, one softmax pass for both terms). Any other base loss, a wrapper around
    `gsc_jax.cross_entropy` included, gets `gsc_term` added. Both take ``implementation``.

    Args:
      base_loss: ``(logits, labels, **kwargs) -> per-example loss``.
      gamma: weight of the GSC term, ``>= 0`` (paper: 0.005-0.05 for clean classification, up to 2
        for noisy labels). May be a traced scalar (e.g. from a schedule).
      top_c, mu, normalize_entropy, stop_gradient_sigma: see `gsc_term`.
      implementation: None (default) or ``'fused'``: first-order reverse-mode derivatives of the
        GSC part; ``'reference'``: plain autodiff, every transformation. See `gsc_term`.

    Returns:
      The combined per-example loss function.

    Raises:
      ValueError: negative or non-finite ``gamma``, ``top_c < 1`` or an unknown
        ``implementation``, at construction; the other checks of `gsc_term` when the returned
        function is traced.
    """
    _check_implementation(implementation)
    _validation.check_non_negative("gamma", gamma)
    if isinstance(top_c, bool) or not isinstance(top_c, numbers.Integral) or top_c < 1:
        raise ValueError(f"`top_c` must be an int >= 1, got {top_c!r}.")
    check_mu(mu)
    gsc_kwargs = dict(
        top_c=top_c,
        mu=mu,
        normalize_entropy=normalize_entropy,
        stop_gradient_sigma=stop_gradient_sigma,
        implementation=implementation,
    )

    if base_loss is _losses.cross_entropy:

        @functools.wraps(base_loss)
        def cross_entropy_with_gsc(logits, labels, *, axis=-1, where=None, example_mask=None):
            return gsc_loss(
                logits,
                labels,
                gamma=gamma,
                axis=axis,
                where=where,
                example_mask=example_mask,
                **gsc_kwargs,
            )

        return cross_entropy_with_gsc

    @functools.wraps(base_loss)
    def loss_with_gsc(logits, labels, **base_kwargs):
        term = gsc_term(
            logits,
            axis=base_kwargs.get("axis", -1),
            where=base_kwargs.get("where"),
            example_mask=base_kwargs.get("example_mask"),
            **gsc_kwargs,
        )
        return base_loss(logits, labels, **base_kwargs) + gamma * term

    return loss_with_gsc
