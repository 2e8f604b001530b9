"""The FER2013 VGG of Khairuddin & Chen (2021), arXiv 2105.03588 (usef-kh/fer, models/vgg.py).

Four stages of two 3x3 convolutions (padding 1, with bias), each followed by BatchNorm and ReLU,
and a 2x2 max-pool: [B, 40, 40, 1] -> 20x20x64 -> 10x10x128 -> 5x5x256 -> 2x2x512 (the last pool
floors 5 to 2). Then flatten (2,048) -> Linear 4096 -> Dropout(0.2) -> ReLU -> Linear 4096 ->
Dropout(0.2) -> ReLU -> Linear num_classes. About 350M multiply-adds per 40x40 crop.

`width` and `hidden` scale the channels (width, 2 width, 4 width, 8 width) and the two hidden
layers, for narrower shortened runs; width 64 and hidden 4096 are the reference model.
"""

import functools

import flax.linen as nn
import jax.numpy as jnp

from experiments.common.layers import TorchConv
from experiments.common.layers import TorchDense
from experiments.common.layers import torch_batch_norm

STAGE_MULTIPLIERS = (1, 2, 4, 8)


class VGG(nn.Module):
    """Khairuddin & Chen's VGG variant with BatchNorm and dropout; PyTorch default initialisation.

    BatchNorm as PyTorch's BatchNorm2d (momentum 0.1, i.e. Flax momentum 0.9; eps 1e-5). The
    flatten is over (H, W, C) where PyTorch flattens (C, H, W): the same function up to a fixed
    permutation of the first linear layer's inputs.

    Attributes:
      num_classes: outputs (7 emotions).
      width: channels of the first stage (64 in the reference).
      hidden: width of the two hidden linear layers (4096 in the reference).
      dropout: dropout rate of the hidden layers (0.2 in the reference).
      cpu_conv: TorchConv's CPU rewrite ('xla': XLA's convolution, measured fastest here).
      dtype: compute dtype.
    """

    num_classes: int = 7
    width: int = 64
    hidden: int = 4096
    dropout: float = 0.2
    cpu_conv: str = "xla"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = functools.partial(
            TorchConv, kernel=3, padding=1, cpu_conv=self.cpu_conv, dtype=self.dtype
        )
        norm = torch_batch_norm(train, self.dtype)
        for multiplier in STAGE_MULTIPLIERS:
            for _ in range(2):
                x = nn.relu(norm()(conv(self.width * multiplier)(x)))
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        for _ in range(2):
            x = TorchDense(self.hidden, dtype=self.dtype)(x)
            x = nn.relu(nn.Dropout(self.dropout, deterministic=not train)(x))
        return TorchDense(self.num_classes, dtype=self.dtype)(x)


def multiply_adds(
    crop: int = 40, width: int = 64, hidden: int = 4096, num_classes: int = 7, channels: int = 1
) -> int:
    """Multiply-adds of one forward pass on a crop x crop image (convolutions and linear layers)."""
    total, side, cin = 0, crop, channels
    for multiplier in STAGE_MULTIPLIERS:
        for _ in range(2):
            cout = width * multiplier
            total += side * side * 9 * cin * cout
            cin = cout
        side //= 2
    flat = side * side * cin
    return total + flat * hidden + hidden * hidden + hidden * num_classes
