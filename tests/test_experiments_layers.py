"""TorchConv's CPU rewrites equal XLA's convolution (values and gradients); off on GPU and TPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.cifar10 import models
from experiments.common import layers
from experiments.common.layers import TorchConv

pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.mark.parametrize(
    "features,kernel,stride,padding,groups,cpu_conv",
    [
        (6, 3, 1, 1, 1, "im2col"),  # ungrouped: patch matrix
        (6, 3, 2, 0, 1, "im2col"),
        (4, 5, 1, "SAME", 4, "im2col"),  # depthwise: shift-and-add
        (4, 4, 1, "SAME", 4, "im2col"),  # even kernel: SAME pads 1 before, 2 after
        (4, 3, 1, 2, 4, "im2col"),
        (4, 3, 1, "VALID", 4, "im2col"),
        (5, 3, 1, "SAME", 1, "matmul_backward"),  # XLA forward, kernel gradient as matmuls
        (5, 1, 1, "SAME", 1, "matmul_backward"),
        (5, 4, 1, "SAME", 1, "matmul_backward"),
        (5, 3, 1, 2, 1, "matmul_backward"),
    ],
)
def test_cpu_rewrites_equal_xla_convolution(features, kernel, stride, padding, groups, cpu_conv):
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 4))
    xla = TorchConv(features, kernel, stride, padding, groups, cpu_conv="xla")
    fast = TorchConv(features, kernel, stride, padding, groups, cpu_conv=cpu_conv)
    params = xla.init(jax.random.key(1), x)

    def outputs_and_grads(params, x):
        loss = lambda module, p, x: jnp.sum(jnp.sin(module.apply(p, x)))  # noqa: E731
        grad = jax.grad(loss, argnums=(1, 2))
        return (
            fast.apply(params, x),
            xla.apply(params, x),
            grad(fast, params, x),
            grad(xla, params, x),
        )

    with layers.cpu_rewrites(True):
        y_fast, y_xla, grads_fast, grads_xla = jax.jit(outputs_and_grads)(params, x)
        forward = str(jax.make_jaxpr(fast.apply)(params, x))
        backward = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(fast.apply(p, x))))(params))
    if cpu_conv == "im2col":  # no XLA convolution at all, forward or backward
        assert "conv_general_dilated" not in forward + backward
    else:  # the custom backward pass
        assert "custom_vjp" in forward
    np.testing.assert_allclose(y_fast, y_xla, rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(grads_fast), jax.tree.leaves(grads_xla)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _conv_primitives(model, x, enabled):
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    with layers.cpu_rewrites(enabled):
        jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x))(variables)
    return [
        eqn.params.get("feature_group_count")
        for eqn in jaxpr.jaxpr.eqns
        if eqn.primitive.name == "conv_general_dilated"
    ]


def test_rewrites_follow_the_backend_and_are_off_on_gpu_and_tpu():
    assert layers.cpu_rewrites_enabled() == (jax.default_backend() == "cpu")
    model = models.ConvMixer(dim=8, depth=2, kernel_size=3, patch_size=4)
    x = jnp.zeros((1, 16, 16, 3))
    # GPU/TPU: XLA's convolutions, the depthwise ones grouped (feature_group_count = dim).
    assert _conv_primitives(model, x, False) == [1, 8, 1, 8, 1]
    assert _conv_primitives(model, x, True) == []  # CPU: patch matrices and shifted sums
    alexnet = models.AlexNet()
    x = jnp.zeros((1, 32, 32, 3))
    assert _conv_primitives(alexnet, x, False) == [1] * 5
    assert _conv_primitives(alexnet, x, True) == [1]  # the first layer stays XLA's on the CPU


def test_unknown_cpu_conv_is_refused():
    with pytest.raises(ValueError, match="cpu_conv must be one of"):
        TorchConv(4, 3, cpu_conv="fft").init(jax.random.key(0), jnp.zeros((1, 5, 5, 2)))


def test_init_is_pytorch_default():
    params = TorchConv(64, 3).init(jax.random.key(0), jnp.ones((1, 4, 4, 20)))["params"]
    bound = 1 / np.sqrt(20 * 3 * 3)
    for values in (params["kernel"], params["bias"]):
        assert 0.8 * bound < float(jnp.abs(values).max()) <= bound
