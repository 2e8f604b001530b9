"""Linen layers with PyTorch's default initialisation, U(+-1/sqrt(fan_in)) for weights and biases.

kaiming_uniform(a = sqrt(5)) is variance_scaling(1/3, 'fan_in', 'uniform'); the reference CIFAR
recipes (algorithms.md sections 4-5) were tuned with it; Flax defaults to lecun_normal / zeros.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
    """PyTorch's default bias init U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class TorchConv(nn.Module):
    """2-D convolution with symmetric padding and PyTorch default init. NHWC in, NHWC out.

    With `im2col`, an ungrouped convolution is computed as an explicit patch matrix [B, Ho, Wo,
    kh*kw*Cin] times the kernel reshaped to [kh*kw*Cin, Cout] (same parameters, same result up to
    float rounding). On XLA:CPU this is about 10x faster for tiny feature maps (AlexNet's 4x4 and
    2x2, the 8x8 digits) and under vmap, where the native convolution takes a slow path.
    """

    features: int
    kernel: int
    stride: int = 1
    padding: int | str = 0
    groups: int = 1
    im2col: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        k, cin = self.kernel, x.shape[-1]
        fan_in = cin // self.groups * k * k
        w = self.param("kernel", torch_kernel_init, (k, k, cin // self.groups, self.features))
        b = self.param("bias", torch_bias_init(fan_in), (self.features,))
        x, w = x.astype(self.dtype), w.astype(self.dtype)
        if self.im2col and self.groups == 1 and isinstance(self.padding, int):
            h, wd, p, s = x.shape[1], x.shape[2], self.padding, self.stride
            xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
            ho, wo = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
            cols = jnp.concatenate([xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :]
                                    for i in range(k) for j in range(k)], axis=-1)
            y = cols @ w.reshape(k * k * cin, self.features)
        else:
            pad = self.padding if isinstance(self.padding, str) else [(self.padding,) * 2] * 2
            y = jax.lax.conv_general_dilated(
                x, w, (self.stride, self.stride), pad, feature_group_count=self.groups,
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + b.astype(self.dtype)


class TorchDense(nn.Module):
    """nn.Dense with PyTorch default init."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.features, dtype=self.dtype, kernel_init=torch_kernel_init,
                        bias_init=torch_bias_init(x.shape[-1]))(x)
