"""ResNet-18/50/101 v1.5 in Flax Linen (He et al. 2016; stride on the 3x3 convolution).

Architecture as in facebookresearch/pycls (pycls/models/anynet.py `ResStem`, blocks.py) and the
Flax ImageNet example (google/flax examples/imagenet/models.py): 7x7/2 stem convolution, BN, ReLU,
3x3/2 max pool; four stages of basic (ResNet-18: two 3x3) or bottleneck (1x1, 3x3, 1x1 with 4x
expansion) blocks with stage strides 1, 2, 2, 2, the stride on the 3x3 convolution (v1.5); a 1x1
projection + BN shortcut where the shape changes; global average pool; a dense classifier.

Initialisation as in pycls (blocks.py `init_weights`): convolutions N(0, 2 / fan_out) with
fan_out = k*k*out_channels, BN scale 1 and bias 0, the classifier N(0, 0.01^2) with bias 0.
BatchNorm: momentum 0.9 (PyTorch's 0.1), epsilon 1e-5. Under jit with a batch sharded over the
devices the batch statistics are means over the global batch (cross-device BN; checked by the
1-vs-8-device test). `dtype` is the compute dtype (bfloat16 with --bf16); parameters and BN
statistics stay float32 and the logits are returned in float32.
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from experiments.common import layers

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.normal(0.01)

# name -> (block, stage depths)
CONFIGS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
MODELS = tuple(CONFIGS)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; the first carries the stride."""

    features: int
    stride: int
    conv: type
    norm: type

    @nn.compact
    def __call__(self, x):
        y = nn.relu(self.norm()(self.conv(self.features, (3, 3), self.stride)(x)))
        y = self.norm()(self.conv(self.features, (3, 3))(y))
        if x.shape != y.shape:
            x = self.norm()(self.conv(self.features, (1, 1), self.stride)(x))
        return nn.relu(x + y)


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 with the stride (v1.5), 1x1 expand to 4x `features`."""

    features: int
    stride: int
    conv: type
    norm: type

    @nn.compact
    def __call__(self, x):
        y = nn.relu(self.norm()(self.conv(self.features, (1, 1))(x)))
        y = nn.relu(self.norm()(self.conv(self.features, (3, 3), self.stride)(y)))
        y = self.norm()(self.conv(4 * self.features, (1, 1))(y))
        if x.shape != y.shape:
            x = self.norm()(self.conv(4 * self.features, (1, 1), self.stride)(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ResNet v1.5: `model(x [B, H, W, 3], train) -> float32 logits [B, num_classes]`.

    Attributes:
      num_classes: classifier outputs.
      block: 'basic' or 'bottleneck'.
      depths: blocks per stage.
      width: stem / first-stage width (64 in the paper's models; smaller for tests).
      dtype: compute dtype.
    """

    num_classes: int
    block: str = "bottleneck"
    depths: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(
            nn.Conv, use_bias=False, padding="SAME", dtype=self.dtype, kernel_init=conv_init
        )
        norm = layers.torch_batch_norm(train, self.dtype)
        block = BasicBlock if self.block == "basic" else BottleneckBlock
        x = x.astype(self.dtype)
        x = conv(self.width, (7, 7), 2, padding=[(3, 3), (3, 3)], name="stem_conv")(x)
        x = nn.relu(norm(name="stem_bn")(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])
        for stage, depth in enumerate(self.depths):
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                x = block(self.width * 2**stage, stride, conv, norm)(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=dense_init, name="head")(x)
        return x.astype(jnp.float32)


def create_model(name: str, num_classes: int, *, bf16: bool = False, width: int = 64) -> ResNet:
    """ResNet by name (MODELS); `width` < 64 gives the small variants the tests use."""
    if name not in CONFIGS:
        raise ValueError(f"unknown --model {name!r}; choose one of {', '.join(MODELS)}.")
    block, depths = CONFIGS[name]
    return ResNet(num_classes, block, depths, width, jnp.bfloat16 if bf16 else jnp.float32)
