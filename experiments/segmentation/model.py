r"""Kanezaki (ICASSP 2018) unsupervised segmentation by backpropagation, with an optional GSC term.

Follows kanezaki/pytorch-unsupervised-segmentation@478e67e demo.py: a small conv net maps the image to ``p`` channels per pixel; each iteration the per-pixel argmax
labels are replaced, inside each SLIC superpixel, by the superpixel's most frequent label, and the
net is trained with softmax cross-entropy against these refined labels. Training stops after the
step of the first iteration whose argmax map (before refinement) has ``<= min_labels`` labels.

With the GSC paper (Zhao et al. 2022, Sec. 4.4), the per-pixel loss becomes

.. math::
    \ell_n = \mathrm{CE}(z_n, \hat c_n) + \gamma \, f_{top_c}(\mathrm{Topk}(S_n), 0, H(S_n))

with :math:`S_n = \mathrm{softmax}(z_n)` over the ``p`` channels (Eq. 9, ``gsc_jax.gsc_term``),
built by the experiments' shared loss layer; the training runs on the shared loop
(`experiments.segmentation.task`).

Choices where this differs from, or is not fixed by, the reference:

- Channel order: the reference reads BGR with OpenCV and passes it to skimage's SLIC, which takes
  it for RGB, so SLIC's Lab conversion sees swapped channels. By default we feed RGB to both the
  net and SLIC (SLIC as its authors intended; for the randomly initialised net the order is only a
  permutation of first-layer weights); ``config.data.bgr=True`` reproduces the quirk.
- SLIC segments: the reference asks for 10000 superpixels on the image it is given. When the image
  is downscaled first (``--max_side``), we ask for ``10000 * scale**2`` so that superpixels cover
  the same part of the scene.
- Initial weights: PyTorch's default init (weights and biases U(+-1/sqrt(fan_in))), seeded.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import skimage.segmentation

from experiments.common.layers import TorchConv
from experiments.common.layers import torch_batch_norm


class KanezakiNet(nn.Module):
    """conv3x3 -> ReLU -> BN, (n_conv - 1) x [conv3x3 -> ReLU -> BN], conv1x1 -> BN.

    BN always normalises with the statistics of the current image (the reference never leaves
    train mode); its running averages are never read. ``[1, H, W, 3] -> [H * W, n_channel]``.
    On the CPU backend the convolutions' kernel gradients are matrix products
    (``cpu_conv="matmul_backward"``, see `layers.TorchConv`), about twice as fast on large images.
    """

    n_channel: int = 100
    n_conv: int = 2

    def _bn(self, x: jax.Array) -> jax.Array:
        return torch_batch_norm(train=True)()(x)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        """[1, H, W, 3] -> per-pixel logits [H * W, n_channel] (BN in train mode either way)."""
        del train
        conv = functools.partial(
            TorchConv, self.n_channel, padding="SAME", cpu_conv="matmul_backward"
        )
        for _ in range(self.n_conv):
            x = self._bn(nn.relu(conv(3)(x)))
        return self._bn(conv(1)(x)).reshape(-1, self.n_channel)


def superpixels(
    image: np.ndarray, n_segments: int, compactness: float, scale: float = 1.0
) -> tuple[np.ndarray, int]:
    """SLIC superpixels of ``[H, W, 3]`` uint8, as consecutive ids ``[H * W]`` and their count.

    `scale` is the image's downscale factor: ``n_segments * scale**2`` segments keep the
    superpixels as large, relative to the scene, as the reference's at full resolution.
    """
    n_segments = max(1, round(n_segments * scale**2))
    segments = skimage.segmentation.slic(
        image, n_segments=n_segments, compactness=compactness, start_label=0
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
