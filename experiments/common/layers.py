"""Linen layers with PyTorch's default initialisation, U(+-1/sqrt(fan_in)) for weights and biases.

kaiming_uniform(a = sqrt(5)) is variance_scaling(1/3, 'fan_in', 'uniform'); the reference CIFAR
recipes (algorithms.md sections 4-5) were tuned with it; Flax defaults to lecun_normal / zeros.
"""

import functools
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

    With `im2col`, the convolution avoids XLA's native convolution (same parameters, same result
    up to float rounding):
    - ungrouped: an explicit patch matrix [B, Ho, Wo, kh*kw*Cin] times the kernel reshaped to
      [kh*kw*Cin, Cout]. On XLA:CPU about 10x faster for tiny feature maps (AlexNet's 4x4 and 2x2,
      the 8x8 digits) and under vmap, where the native convolution takes a slow path;
    - depthwise (groups = Cin = Cout, stride 1): y[b,h,w,c] = sum_{i,j} x_pad[b,h+i,w+j,c] w[i,j,c],
      k*k shifted copies scaled per channel, which XLA fuses into one elementwise loop. On XLA:CPU
      about 10x faster than the native grouped convolution, forward and backward (ConvMixer's
      16x16x256 maps, k=5).
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
        depthwise = self.groups == cin == self.features and self.stride == 1
        if self.im2col and depthwise:
            y = _depthwise_shift_and_add(x, w[:, :, 0, :], self.padding)
        elif self.im2col and self.groups == 1 and isinstance(self.padding, int):
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


def _padding_pair(padding, kernel: int) -> tuple[int, int]:
    """(before, after) padding of one spatial axis, as lax.conv_general_dilated pads at stride 1."""
    if padding == "SAME":
        return (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2
    if padding == "VALID":
        return 0, 0
    return padding, padding


def _shift_and_add(x_padded, w, out_h: int, out_w: int):
    """sum_{i,j} x_padded[:, i:i+out_h, j:j+out_w, :] * w[i, j]: one fused elementwise loop."""
    k_h, k_w = w.shape[:2]
    return sum(x_padded[:, i:i + out_h, j:j + out_w, :] * w[i, j]
               for i in range(k_h) for j in range(k_w))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_shift_and_add(x, w, padding):
    """Stride-1 depthwise convolution of x [B, H, W, C] with w [k, k, C] as k*k shifted products.

    y[b,h,w,c] = sum_{i,j} x_pad[b, h+i, w+j, c] w[i,j,c], `padding` an int or 'SAME' / 'VALID' as
    in lax.conv_general_dilated. The custom backward pass keeps memory at a few [B, H, W, C]
    buffers: dx is the same form with the flipped kernel, and dw[i,j] = sum x_pad-slice * dy is
    computed one offset at a time (autodiff would hold all k*k shifted slices at once).
    """
    return _depthwise_forward(x, w, padding)[0]


def _depthwise_forward(x, w, padding):
    before, after = _padding_pair(padding, w.shape[0])
    x_padded = jnp.pad(x, ((0, 0), (before, after), (before, after), (0, 0)))
    out_h, out_w = (x_padded.shape[i] - w.shape[0] + 1 for i in (1, 2))
    return _shift_and_add(x_padded, w, out_h, out_w), (x, w)


def _depthwise_backward(padding, residuals, dy):
    x, w = residuals
    k = w.shape[0]
    before, after = _padding_pair(padding, k)
    # y[h] = sum_i x_pad[h + i] w[i]  =>  dx[t] = sum_i dy_pad[t + i] w[k - 1 - i].
    dy_padded = jnp.pad(dy, ((0, 0), (k - 1 - before, k - 1 - after),
                             (k - 1 - before, k - 1 - after), (0, 0)))
    dx = _shift_and_add(dy_padded, w[::-1, ::-1], x.shape[1], x.shape[2])
    x_padded = jnp.pad(x, ((0, 0), (before, after), (before, after), (0, 0)))
    offsets = jnp.stack(jnp.meshgrid(jnp.arange(k), jnp.arange(k), indexing="ij"), -1)

    def kernel_grad_at(offset):
        window = jax.lax.dynamic_slice(x_padded, (0, offset[0], offset[1], 0), dy.shape)
        return jnp.sum(window * dy, axis=(0, 1, 2))

    dw = jax.lax.map(kernel_grad_at, offsets.reshape(k * k, 2)).reshape(w.shape)
    return dx, dw


_depthwise_shift_and_add.defvjp(_depthwise_forward, _depthwise_backward)


class TorchDense(nn.Module):
    """nn.Dense with PyTorch default init."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.features, dtype=self.dtype, kernel_init=torch_kernel_init,
                        bias_init=torch_bias_init(x.shape[-1]))(x)
