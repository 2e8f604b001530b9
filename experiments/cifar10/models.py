"""CIFAR-10 models in Flax Linen: AlexNet without BN and ConvMixer.

AlexNet is the CIFAR variant of bearpaw/pytorch-classification (models/cifar/alexnet.py); ConvMixer
is Trockman & Kolter's "Patches Are All You Need?" (2022; locuslab/convmixer-cifar10). Both use
PyTorch's default initialisation, U(+-1/sqrt(fan_in)) for weights and biases (kaiming_uniform with
a = sqrt(5)), since the reference recipes were tuned with it. On the CPU backend their convolutions
run as the rewrites of `layers.TorchConv`; on GPU and TPU as XLA's.
"""

import functools

import flax.linen as nn
import jax.numpy as jnp

from experiments.common.layers import TorchConv
from experiments.common.layers import TorchDense
from experiments.common.layers import torch_batch_norm


class AlexNet(nn.Module):
    """bearpaw CIFAR AlexNet: 5 convs with ReLU, 3 max-pools, one linear layer; no BN, no dropout.

    [B, 32, 32, 3] -> conv11/s4 64 (8x8) -> pool (4x4) -> conv5 192 -> pool (2x2) -> conv3 384 ->
    conv3 256 -> conv3 256 -> pool (1x1) -> linear -> [B, num_classes]. 2,472,266 parameters.
    """

    num_classes: int = 10
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):  # pylint: disable=unused-argument
        conv = functools.partial(TorchConv, dtype=self.dtype)
        pool = lambda y: nn.max_pool(y, (2, 2), (2, 2))  # noqa: E731
        # XLA:CPU's own convolution is fast on the 32x32 input; convs 2-5 (4x4 and 2x2 maps) are
        # patch-matrix products on the CPU.
        x = pool(nn.relu(conv(64, 11, 4, 5, cpu_conv="xla")(x)))
        x = pool(nn.relu(conv(192, 5, 1, 2)(x)))
        x = nn.relu(conv(384, 3, 1, 1)(x))
        x = nn.relu(conv(256, 3, 1, 1)(x))
        x = pool(nn.relu(conv(256, 3, 1, 1)(x)))
        return TorchDense(self.num_classes, dtype=self.dtype)(x.reshape(x.shape[0], -1))


class ConvMixer(nn.Module):
    """ConvMixer-h/d (Trockman & Kolter): patch conv, d x [residual depthwise, pointwise], linear.

    Every unit is conv -> GELU (exact) -> BatchNorm (PyTorch momentum 0.1, eps 1e-5).
    CIFAR defaults h=256, d=8, kernel 5, patch 2: [B, 32, 32, 3] -> 16x16x256 tokens -> [B, K].
    """

    dim: int = 256
    depth: int = 8
    kernel_size: int = 5
    patch_size: int = 2
    num_classes: int = 10
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = torch_batch_norm(train, self.dtype)
        act = functools.partial(nn.gelu, approximate=False)
        conv = functools.partial(TorchConv, dtype=self.dtype)  # depthwise: shifted sums on CPU
        x = norm()(act(conv(self.dim, self.patch_size, self.patch_size)(x)))
        for _ in range(self.depth):
            x = x + norm()(
                act(conv(self.dim, self.kernel_size, padding="SAME", groups=self.dim)(x))
            )
            x = norm()(act(conv(self.dim, 1)(x)))
        return TorchDense(self.num_classes, dtype=self.dtype)(jnp.mean(x, axis=(1, 2)))


MODELS = {"alexnet": AlexNet, "convmixer": ConvMixer}


def create_model(name: str, num_classes: int, bf16: bool = False, **overrides) -> nn.Module:
    """Returns MODELS[name](num_classes=..., dtype=..., **overrides); raises on an unknown name."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}.")
    dtype = jnp.bfloat16 if bf16 else jnp.float32
    return MODELS[name](num_classes=num_classes, dtype=dtype, **overrides)
