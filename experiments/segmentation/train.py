r"""Kanezaki (ICASSP 2018) unsupervised segmentation by backpropagation, with an optional GSC term.

Follows kanezaki/pytorch-unsupervised-segmentation@478e67e demo.py: a small conv net maps the image to ``p`` channels per pixel; each iteration the per-pixel argmax
labels are replaced, inside each SLIC superpixel, by the superpixel's most frequent label, and the
net is trained with softmax cross-entropy against these refined labels. Training stops after the
step of the first iteration whose argmax map (before refinement) has ``<= min_labels`` labels.

With the GSC paper (Zhao et al. 2022, Sec. 4.4), the per-pixel loss becomes

.. math::
    \ell_n = \mathrm{CE}(z_n, \hat c_n) + \gamma \, f_{top_c}(\mathrm{Topk}(S_n), 0, H(S_n))

with :math:`S_n = \mathrm{softmax}(z_n)` over the ``p`` channels (Eq. 9, ``gsc_jax.gsc_term``),
built by the experiments' shared loss layer (``losses.LossSpec("ce", gsc_gamma, gsc_top_c)``).

Choices where this differs from, or is not fixed by, the reference:

- Channel order: the reference reads BGR with OpenCV and passes it to skimage's SLIC, which takes
  it for RGB, so SLIC's Lab conversion sees swapped channels. By default we feed RGB to both the
  net and SLIC (SLIC as its authors intended; for the randomly initialised net the order is only a
  permutation of first-layer weights); ``Config.bgr=True`` reproduces the quirk.
- SLIC segments: the reference asks for 10000 superpixels on the image it is given. When the image
  is downscaled first (``--max_side``), we ask for ``10000 * scale**2`` so that superpixels cover
  the same part of the scene.
- Initial weights: PyTorch's default init (weights and biases U(+-1/sqrt(fan_in))), seeded.
"""

import dataclasses
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import skimage.segmentation
import tqdm

from experiments.common import losses
from experiments.common.layers import TorchConv


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyper-parameters; defaults are the reference's (demo.py) unless noted."""

    n_channel: int = 100  # p, channels of every layer and number of possible labels
    n_conv: int = 2  # M, number of 3x3 conv blocks
    lr: float = 0.1  # SGD learning rate
    momentum: float = 0.9  # SGD momentum (no weight decay)
    max_iter: int = 1000  # at most this many iterations
    min_labels: int = 3  # stop after the step of the first iteration with <= min_labels labels
    slic_n_segments: int = 10000  # SLIC superpixels at the input's original resolution
    slic_compactness: float = 100.0  # SLIC compactness
    bgr: bool = False  # True: BGR like the reference's OpenCV read; False: RGB (module docstring)
    seed: int = 0  # PRNG seed for the initial weights (not set in the reference)


class KanezakiNet(nn.Module):
    """conv3x3 -> ReLU -> BN, (n_conv - 1) x [conv3x3 -> ReLU -> BN], conv1x1 -> BN.

    BN always normalises with the statistics of the current image (the reference never leaves
    train mode); its running averages are never read. ``[1, H, W, 3] -> [1, H, W, n_channel]``.
    On the CPU backend the convolutions' kernel gradients are matrix products
    (``cpu_conv="matmul_backward"``, see `layers.TorchConv`), about twice as fast on large images.
    """

    n_channel: int = 100
    n_conv: int = 2

    def _bn(self, x: jax.Array) -> jax.Array:
        return nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)(x)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(TorchConv, self.n_channel, padding="SAME",
                                 cpu_conv="matmul_backward")
        for _ in range(self.n_conv):
            x = self._bn(nn.relu(conv(3)(x)))
        return self._bn(conv(1)(x))


def superpixels(image: np.ndarray, config: Config, scale: float = 1.0) -> tuple[np.ndarray, int]:
    """SLIC superpixels of ``[H, W, 3]`` uint8, as consecutive ids ``[H * W]`` and their count.

    `scale` is the image's downscale factor: ``slic_n_segments * scale**2`` segments keep the
    superpixels as large, relative to the scene, as the reference's at full resolution.
    """
    n_segments = max(1, round(config.slic_n_segments * scale**2))
    segments = skimage.segmentation.slic(
        image, n_segments=n_segments, compactness=config.slic_compactness, start_label=0
    )
    _, ids = np.unique(segments.ravel(), return_inverse=True)
    return ids.astype(np.int32), int(ids.max()) + 1


def refine_labels(labels: jax.Array, segment_ids: jax.Array, num_segments: int, n_channel: int):
    """Replaces each pixel's label by the most frequent label of its superpixel.

    Ties go to the smallest label, as in the reference (argmax over a histogram of sorted labels).

    Args:
      labels: ``[N]`` int per-pixel labels in ``[0, n_channel)``.
      segment_ids: ``[N]`` int superpixel id of each pixel in ``[0, num_segments)``.
      num_segments: number of superpixels (static).
      n_channel: number of possible labels (static).

    Returns:
      ``[N]`` int32 refined labels.
    """
    one_hot = jax.nn.one_hot(labels, n_channel, dtype=jnp.float32)
    histogram = jax.ops.segment_sum(one_hot, segment_ids, num_segments=num_segments)
    return jnp.argmax(histogram, axis=-1).astype(jnp.int32)[segment_ids]


def count_labels(labels: jax.Array, n_channel: int) -> jax.Array:
    """Number of distinct values in ``[N]`` int labels in ``[0, n_channel)``; int32 scalar."""
    return jnp.sum(jnp.bincount(labels, length=n_channel) > 0).astype(jnp.int32)


def loss_spec(gamma: float, top_c: int) -> losses.LossSpec:
    """Per-pixel cross-entropy plus ``gamma`` times the GSC term (``gamma == 0``: the baseline)."""
    return losses.LossSpec("ce", gsc_gamma=gamma, gsc_top_c=top_c)


def loss_terms(logits: jax.Array, targets: jax.Array, *, gamma: float, top_c: int):
    """Mean CE and GSC term over pixels, and ``CE + gamma * GSC``; logits [N, p], targets [N].

    The baseline (``gamma == 0``) trains CE alone but still reports the GSC term.
    """
    objective = losses.make_objective(loss_spec(gamma, top_c), with_gsc_term=True)
    loss, parts = objective(logits, targets)
    return loss, {"ce": parts["base_loss"], "gsc": parts["gsc_term"]}


def init_state(model: KanezakiNet, image: jax.Array, config: Config):
    """Initial ``{'params', 'batch_stats', 'opt'}`` and the SGD+momentum optimiser."""
    variables = jax.jit(model.init)(jax.random.key(config.seed), image)
    tx = optax.sgd(config.lr, momentum=config.momentum)
    state = {"params": variables["params"], "opt": tx.init(variables["params"])}
    return state, variables["batch_stats"], tx


def make_apply(model: KanezakiNet, batch_stats):
    """``apply(params, image [1, H, W, 3]) -> logits [H * W, p]`` with train-mode BN."""

    def apply(params, image):
        out, _ = model.apply(
            {"params": params, "batch_stats": batch_stats}, image, mutable=["batch_stats"]
        )
        return out.reshape(-1, model.n_channel)

    return apply


def make_loss_fn(apply, n_channel: int, *, num_segments: int, gamma: float, top_c: int):
    """``loss_fn(params, image, segment_ids) -> (loss, metrics)`` of one reference iteration.

    Forward pass, argmax labels and their count, superpixel refinement, then `loss_terms`.
    ``metrics`` holds ``loss``, ``ce``, ``gsc`` and ``n_labels`` (labels before refinement).
    """

    def loss_fn(params, image, segment_ids):
        logits = apply(params, image)
        labels = jnp.argmax(logits, axis=-1)
        targets = refine_labels(labels, segment_ids, num_segments, n_channel)
        loss, terms = loss_terms(logits, targets, gamma=gamma, top_c=top_c)
        return loss, dict(terms, loss=loss, n_labels=count_labels(labels, n_channel))

    return loss_fn


def make_train_step(loss_fn, tx):
    """Jitted ``step(state, image, segment_ids) -> (state, metrics)``: one SGD step on `loss_fn`."""

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, image, segment_ids):
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state["params"], image, segment_ids)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, metrics

    return step


@dataclasses.dataclass
class Result:
    """One segmentation run: final label map, labels per iteration, last losses, timing."""

    labels: np.ndarray  # [H, W] int32 argmax map of a final forward pass (not refined)
    n_labels: list[int]  # labels (before refinement) at each iteration
    last_metrics: dict[str, float]  # loss, ce, gsc of the last iteration
    seconds: float  # wall time, compilation included


def segment(pixels: np.ndarray, segment_ids: np.ndarray, num_segments: int, config: Config, *,
            gamma: float, top_c: int, desc: str = "") -> Result:
    """Trains a fresh `KanezakiNet` on one image and returns its segmentation.

    Args:
      pixels: ``[H, W, 3]`` uint8 network input, in the channel order of `config.bgr`.
      segment_ids: ``[H * W]`` superpixel ids from `superpixels`.
      num_segments: number of superpixels.
      config: hyper-parameters.
      gamma: weight of the GSC term (0: Kanezaki's baseline).
      top_c: number of top scores in the GSC term.
      desc: progress-bar label.
    """
    losses.validate_loss_spec(loss_spec(gamma, top_c), config.n_channel)
    start = time.perf_counter()
    model = KanezakiNet(config.n_channel, config.n_conv)
    image = jnp.asarray(pixels, jnp.float32)[None] / 255.0
    state, batch_stats, tx = init_state(model, image, config)
    apply = make_apply(model, batch_stats)
    loss_fn = make_loss_fn(
        apply, config.n_channel, num_segments=num_segments, gamma=gamma, top_c=top_c
    )
    step = make_train_step(loss_fn, tx)
    segment_ids = jnp.asarray(segment_ids)
    history = []
    with tqdm.trange(config.max_iter, desc=desc, leave=False) as bar:
        for _ in bar:
            state, metrics = step(state, image, segment_ids)
            history.append(int(metrics["n_labels"]))
            bar.set_postfix(labels=history[-1], loss=f"{float(metrics['loss']):.3f}", refresh=False)
            if history[-1] <= config.min_labels:
                break
    labels = np.asarray(jnp.argmax(jax.jit(apply)(state["params"], image), axis=-1))
    return Result(
        labels=labels.reshape(pixels.shape[:2]).astype(np.int32),
        n_labels=history,
        last_metrics={k: float(metrics[k]) for k in ("loss", "ce", "gsc")},
        seconds=time.perf_counter() - start,
    )
