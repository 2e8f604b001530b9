"""3D ResNets of Hara et al. (2018) in Flax Linen: ResNet3D-18 and ResNet3D-34.

As kenshohara/3D-ResNets-PyTorch models/resnet.py: a 7x7x7 stem convolution with stride
(1, 2, 2) (temporal stride 1 for clips shorter than 32 frames) and padding 3, BN, ReLU, a
3x3x3 max pool of stride 2 (padding 1); four stages of basic blocks (two 3x3x3 convolutions,
the first with the stride) of widths 64, 128, 256, 512 and stage strides 1, 2, 2, 2 (in time
too); global average pool; a linear classifier. Shortcuts where the shape changes: 'A' the
input subsampled by the stride and zero-padded in channels, no parameters (`--resnet_shortcut
A` of the reference; with 400 classes it gives the 63.5M parameters usually quoted for Hara's
ResNet-34: the default here); 'B' a 1x1x1 convolution with the stride + BN (the reference's
opts.py default).

Parameters (`num_params`, tested against `reference_num_params`): ResNet3D-34, 400 classes:
63,544,912 (A) / 63,718,736 (B); 60 classes: 63,370,492 (A) / 63,544,316 (B); ResNet3D-18,
60 classes: 33,060,860 (A) / 33,234,684 (B).

Initialisation as the reference: convolutions kaiming normal fan_out, BN scale 1 bias 0, the
classifier PyTorch's default Linear init. BatchNorm momentum 0.9 (PyTorch's 0.1), epsilon 1e-5.
Input [B, T, H, W, 3] (channels last); `dtype` is the compute dtype, logits float32.
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from experiments.common import layers

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
DEPTHS = {"resnet3d18": (2, 2, 2, 2), "resnet3d34": (3, 4, 6, 3)}
MODELS = tuple(DEPTHS)
SHORTCUTS = ("A", "B")


class BasicBlock3D(nn.Module):
    """Two 3x3x3 convolutions (the first with the stride) and the shortcut."""

    features: int
    stride: int
    shortcut: str
    conv: type
    norm: type

    @nn.compact
    def __call__(self, x):
        s = (self.stride,) * 3
        y = nn.relu(self.norm()(self.conv(self.features, (3, 3, 3), s, padding=1)(x)))
        y = self.norm()(self.conv(self.features, (3, 3, 3), padding=1)(y))
        if x.shape != y.shape:
            if self.shortcut == "A":
                x = x[:, :: self.stride, :: self.stride, :: self.stride]
                x = jnp.pad(x, ((0, 0),) * 4 + ((0, self.features - x.shape[-1]),))
            else:
                x = self.norm()(self.conv(self.features, (1, 1, 1), s, padding=0)(x))
        return nn.relu(x + y)


class ResNet3D(nn.Module):
    """`model(x [B, T, H, W, 3], train) -> float32 logits [B, num_classes]`.

    Attributes:
      num_classes: classifier outputs.
      depths: blocks per stage ((3, 4, 6, 3): ResNet3D-34).
      width: stem / first-stage width (64 in the reference; smaller for tests).
      shortcut: 'A' or 'B'.
      dtype: compute dtype.
    """

    num_classes: int
    depths: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    shortcut: str = "A"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype)
        norm = layers.torch_batch_norm(train, self.dtype)
        t_stride = 2 if x.shape[1] >= 32 else 1
        x = conv(self.width, (7, 7, 7), (t_stride, 2, 2), padding=3, name="stem")(
            x.astype(self.dtype)
        )
        x = nn.relu(norm(name="stem_bn")(x))
        x = nn.max_pool(x, (3, 3, 3), (2, 2, 2), padding=((1, 1),) * 3)
        for i, depth in enumerate(self.depths):
            for j in range(depth):
                x = BasicBlock3D(
                    self.width * 2**i, 2 if i > 0 and j == 0 else 1, self.shortcut, conv, norm
                )(x)
        x = jnp.mean(x, axis=(1, 2, 3))
        return layers.TorchDense(self.num_classes, dtype=self.dtype, name="head")(x).astype(
            jnp.float32
        )


def create_model(
    name: str, num_classes: int, *, width: int = 64, shortcut: str = "A", bf16: bool = False
) -> ResNet3D:
    if name not in DEPTHS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}.")
    return ResNet3D(
        num_classes, DEPTHS[name], width, shortcut, jnp.bfloat16 if bf16 else jnp.float32
    )


def num_params(model: ResNet3D, frames: int = 16, size: int = 112) -> int:
    """The parameter count (jax.eval_shape: nothing is computed)."""
    import jax  # pylint: disable=import-outside-toplevel

    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, frames, size, size, 3)))
    )
    return sum(int(jnp.prod(jnp.array(p.shape))) for p in jax.tree.leaves(shapes["params"]))


def reference_num_params(
    depths: Sequence[int], num_classes: int, width: int = 64, shortcut: str = "A"
) -> int:
    """The count of the reference's layers, written out: stem conv + BN, per block two 3x3x3
    convs + BNs (and a 1x1x1 conv + BN shortcut 'B' where the shape changes), the classifier."""
    n, cin = 7**3 * 3 * width + 2 * width, width
    for i, depth in enumerate(depths):
        c = width * 2**i
        for j in range(depth):
            n += 27 * cin * c + 2 * c + 27 * c * c + 2 * c
            if (cin != c or (i > 0 and j == 0)) and shortcut == "B":
                n += cin * c + 2 * c
            cin = c
    return n + cin * num_classes + num_classes
