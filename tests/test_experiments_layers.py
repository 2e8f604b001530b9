"""TorchConv's im2col paths equal XLA's native convolution, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.common.layers import TorchConv


@pytest.mark.parametrize(
    "features,kernel,stride,padding,groups",
    [
        (6, 3, 1, 1, 1),  # ungrouped: patch matrix
        (6, 3, 2, 0, 1),
        (4, 5, 1, "SAME", 4),  # depthwise: shift-and-add
        (4, 4, 1, "SAME", 4),  # even kernel: SAME pads 1 before, 2 after
        (4, 3, 1, 2, 4),
        (4, 3, 1, "VALID", 4),
    ],
)
def test_im2col_equals_native_convolution(features, kernel, stride, padding, groups):
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 4))
    native = TorchConv(features, kernel, stride, padding, groups, im2col=False)
    fast = TorchConv(features, kernel, stride, padding, groups, im2col=True)
    params = native.init(jax.random.key(1), x)

    @jax.jit
    def outputs_and_grads(params, x):
        loss = lambda module, p, x: jnp.sum(jnp.sin(module.apply(p, x)))  # noqa: E731
        grad = jax.grad(loss, argnums=(1, 2))
        return (fast.apply(params, x), native.apply(params, x),
                grad(fast, params, x), grad(native, params, x))

    y_fast, y_native, grads_fast, grads_native = outputs_and_grads(params, x)
    np.testing.assert_allclose(y_fast, y_native, rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(grads_fast), jax.tree.leaves(grads_native)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
