"""Linen layers with PyTorch's default initialisation, and CPU-only rewrites of convolutions.

Initialisation: weights and biases U(+-1/sqrt(fan_in)), PyTorch's default for nn.Conv2d and
nn.Linear (kaiming_uniform with a = sqrt(5) is variance_scaling(1/3, 'fan_in', 'uniform')). The
reference recipes were tuned with it: bearpaw/pytorch-classification (CIFAR AlexNet),
locuslab/convmixer-cifar10 (ConvMixer) and kanezaki/pytorch-unsupervised-segmentation. Flax
defaults to lecun_normal / zeros.

Convolutions: XLA:CPU runs some convolutions far slower than equivalent programs built from matrix
products and elementwise ops, so on the CPU backend `TorchConv` may compute them that way (same
parameters, same values up to float rounding; tests/test_experiments_layers.py). Whether it does is
decided in one place, `cpu_rewrites_enabled()`: on when `jax.default_backend() == "cpu"`, off on
GPU and TPU, where every convolution is XLA's own (`lax.conv_general_dilated`, with
`feature_group_count` for grouped ones). `cpu_rewrites(True | False)` overrides it for tests.
"""

import contextlib
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# TorchConv.cpu_conv values; see TorchConv.
CPU_CONVS = ("im2col", "matmul_backward", "xla")
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
_cpu_rewrites_override = None


def cpu_rewrites_enabled() -> bool:
    """True when `TorchConv` uses its CPU rewrites: on the CPU backend, unless overridden."""
    if _cpu_rewrites_override is not None:
        return _cpu_rewrites_override
    return jax.default_backend() == "cpu"


@contextlib.contextmanager
def cpu_rewrites(enabled: bool | None):
    """Forces the CPU rewrites on (True) or off (False) in the block; None follows the backend.

    The choice is made when a model is traced, so jit-compile inside the block.
    """
    global _cpu_rewrites_override
    previous, _cpu_rewrites_override = _cpu_rewrites_override, enabled
    try:
        yield
    finally:
        _cpu_rewrites_override = previous


def torch_batch_norm(train: bool, dtype=jnp.float32):
    """`nn.BatchNorm` as PyTorch's BatchNorm1d/2d/3d defaults: momentum 0.1 (Flax's 0.9), eps 1e-5.

    Batch statistics in training, the running averages otherwise; call the result on an input
    ``[..., C]`` to normalise over every axis but the last.
    """
    return functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype
    )


def torch_bias_init(fan_in: int):
    """PyTorch's default bias init U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class TorchConv(nn.Module):
    """2-D convolution with bias and PyTorch's default init. NHWC in, NHWC out.

    On GPU and TPU (and whenever `cpu_rewrites_enabled()` is False) this is XLA's convolution. On
    the CPU backend, `cpu_conv` picks a rewrite where one applies (else XLA's convolution):
    - 'im2col': ungrouped with int padding: an explicit patch matrix [B, Ho, Wo, kh*kw*Cin] times
      the kernel reshaped to [kh*kw*Cin, Cout]; on XLA:CPU about 10x faster for tiny feature maps
      (AlexNet's 4x4 and 2x2, the 8x8 digits) and under vmap, where the native convolution takes a
      slow path. Depthwise (groups = Cin = Cout, stride 1):
      y[b,h,w,c] = sum_{i,j} x_pad[b,h+i,w+j,c] w[i,j,c], k*k shifted copies scaled per channel,
      which XLA fuses into one elementwise loop; about 10x faster than the native grouped
      convolution, forward and backward (ConvMixer's 16x16x256 maps, k=5).
    - 'matmul_backward': ungrouped, stride 1: XLA's convolution forward, and a backward pass whose
      kernel gradient is k*k matrix products x_shifted^T @ dy ([I, B*H*W] @ [B*H*W, O]). XLA:CPU
      computes that gradient as a convolution whose window is the whole image; on large maps
      (Kanezaki's 100-channel net on a 300x451 image) the rewrite halves the step time.
    - 'xla': always XLA's convolution (where it is fast on the CPU too, e.g. AlexNet's first layer).

    Attributes:
      features: output channels.
      kernel: square kernel size k.
      stride: stride in both spatial dimensions.
      padding: pixels on every side, or 'SAME' / 'VALID' as in lax.conv_general_dilated.
      groups: feature groups (Cin for depthwise).
      cpu_conv: one of CPU_CONVS.
      dtype: compute dtype (parameters stay float32).
    """

    features: int
    kernel: int
    stride: int = 1
    padding: int | str = 0
    groups: int = 1
    cpu_conv: str = "im2col"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.cpu_conv not in CPU_CONVS:
            raise ValueError(f"cpu_conv must be one of {CPU_CONVS}, got {self.cpu_conv!r}.")
        k, cin = self.kernel, x.shape[-1]
        fan_in = cin // self.groups * k * k
        w = self.param("kernel", torch_kernel_init, (k, k, cin // self.groups, self.features))
        b = self.param("bias", torch_bias_init(fan_in), (self.features,))
        x, w = x.astype(self.dtype), w.astype(self.dtype)
        rewrite = self.cpu_conv if cpu_rewrites_enabled() else "xla"
        depthwise = self.groups == cin == self.features and self.stride == 1
        if rewrite == "im2col" and depthwise:
            y = _depthwise_shift_and_add(x, w[:, :, 0, :], self.padding)
        elif rewrite == "im2col" and self.groups == 1 and isinstance(self.padding, int):
            h, wd, p, s = x.shape[1], x.shape[2], self.padding, self.stride
            xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
            ho, wo = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
            cols = jnp.concatenate(
                [
                    xp[:, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s, :]
                    for i in range(k)
                    for j in range(k)
                ],
                axis=-1,
            )
            y = cols @ w.reshape(k * k * cin, self.features)
        elif rewrite == "matmul_backward" and self.groups == 1 and self.stride == 1:
            y = _conv_matmul_backward(x, w, self.padding)
        else:
            pad = self.padding if isinstance(self.padding, str) else [(self.padding,) * 2] * 2
            y = jax.lax.conv_general_dilated(
                x,
                w,
                (self.stride, self.stride),
                pad,
                feature_group_count=self.groups,
                dimension_numbers=_DIMENSIONS,
            )
        return y + b.astype(self.dtype)


def _padding_pair(padding, kernel: int) -> tuple[int, int]:
    """(before, after) padding of one spatial axis, as lax.conv_general_dilated pads at stride 1."""
    if padding == "SAME":
        return (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2
    if padding == "VALID":
        return 0, 0
    return padding, padding


def _pad_spatial(x, before: int, after: int):
    return jnp.pad(x, ((0, 0), (before, after), (before, after), (0, 0)))


def _shift_and_add(x_padded, w, out_h: int, out_w: int):
    """sum_{i,j} x_padded[:, i:i+out_h, j:j+out_w, :] * w[i, j]: one fused elementwise loop."""
    k_h, k_w = w.shape[:2]
    return sum(
        x_padded[:, i : i + out_h, j : j + out_w, :] * w[i, j]
        for i in range(k_h)
        for j in range(k_w)
    )


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
    x_padded = _pad_spatial(x, before, after)
    out_h, out_w = (x_padded.shape[i] - w.shape[0] + 1 for i in (1, 2))
    return _shift_and_add(x_padded, w, out_h, out_w), (x, w)


def _depthwise_backward(padding, residuals, dy):
    x, w = residuals
    k = w.shape[0]
    before, after = _padding_pair(padding, k)
    # y[h] = sum_i x_pad[h + i] w[i]  =>  dx[t] = sum_i dy_pad[t + i] w[k - 1 - i].
    dy_padded = _pad_spatial(dy, k - 1 - before, k - 1 - after)
    dx = _shift_and_add(dy_padded, w[::-1, ::-1], x.shape[1], x.shape[2])
    x_padded = _pad_spatial(x, before, after)
    offsets = jnp.stack(jnp.meshgrid(jnp.arange(k), jnp.arange(k), indexing="ij"), -1)

    def kernel_grad_at(offset):
        window = jax.lax.dynamic_slice(x_padded, (0, offset[0], offset[1], 0), dy.shape)
        return jnp.sum(window * dy, axis=(0, 1, 2))

    dw = jax.lax.map(kernel_grad_at, offsets.reshape(k * k, 2)).reshape(w.shape)
    return dx, dw


_depthwise_shift_and_add.defvjp(_depthwise_forward, _depthwise_backward)


def _xla_conv(x, w, padding):
    """Stride-1 convolution [B, H, W, I] * [k, k, I, O] -> [B, Ho, Wo, O] with `padding`."""
    before, after = _padding_pair(padding, w.shape[0])
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), [(before, after)] * 2, dimension_numbers=_DIMENSIONS
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_matmul_backward(x, w, padding):
    """`_xla_conv` whose backward pass computes the kernel gradient as k*k matrix products.

    dx is XLA's convolution of dy with the flipped, transposed kernel; dw[i, j] is
    x_pad[:, i:i+Ho, j:j+Wo]^T @ dy ([I, B*Ho*Wo] @ [B*Ho*Wo, O]).
    """
    return _xla_conv(x, w, padding)


def _conv_matmul_forward(x, w, padding):
    return _xla_conv(x, w, padding), (x, w)


def _conv_matmul_backward_pass(padding, residuals, dy):
    x, w = residuals
    k = w.shape[0]
    before, after = _padding_pair(padding, k)
    dx = jax.lax.conv_general_dilated(
        dy,
        jnp.flip(w, (0, 1)).swapaxes(2, 3),
        (1, 1),
        [(k - 1 - before, k - 1 - after)] * 2,
        dimension_numbers=_DIMENSIONS,
    )
    x_padded = _pad_spatial(x, before, after)
    out_h, out_w = dy.shape[1], dy.shape[2]
    dy_flat = dy.reshape(-1, dy.shape[-1])
    dw = jnp.stack(
        [
            jnp.stack(
                [
                    x_padded[:, i : i + out_h, j : j + out_w].reshape(-1, x.shape[-1]).T @ dy_flat
                    for j in range(k)
                ]
            )
            for i in range(k)
        ]
    )
    return dx, dw


_conv_matmul_backward.defvjp(_conv_matmul_forward, _conv_matmul_backward_pass)


class TorchDense(nn.Module):
    """nn.Dense with PyTorch default init."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.Dense(
            self.features,
            dtype=self.dtype,
            kernel_init=torch_kernel_init,
            bias_init=torch_bias_init(x.shape[-1]),
        )(x)
