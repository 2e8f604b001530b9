"""The CPU row kernel (`gsc_jax._cpu_kernel`) against the XLA operations it replaces.

Per row: exp(z - m) and its sums to float32 rounding, the row max and the top-c values and
indices exactly (`jax.lax.top_k`'s order on ties), for rows that end in a partial block, top_c
above the kernel's bounded path, masked (-inf) classes, rows with fewer finite values than top_c
and rows with none. Then the fallback: with GSC_JAX_CPU_KERNEL=0 the loss is unchanged.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gsc_jax
from gsc_jax import _cpu_kernel, _fused

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None,
    reason="no C++ compiler: the CPU kernel is not built and the XLA path is used",
)


def _kernel_and_xla(logits, top_c):
    kernel = jax.jit(lambda z: _cpu_kernel.row_statistics(z, top_c))(logits)
    xla = jax.jit(lambda z: _fused._row_statistics_xla(z, z, None, top_c))(logits)
    return kernel, xla


def _assert_rows_equal(logits, top_c):
    (exps, row_max, total, weighted, values, indices), expected = _kernel_and_xla(logits, top_c)
    e_exps, e_max, e_total, e_weighted, e_values, e_indices = expected
    np.testing.assert_array_equal(values, e_values)
    np.testing.assert_array_equal(indices, e_indices)
    np.testing.assert_array_equal(row_max, e_max)
    np.testing.assert_allclose(exps, e_exps, rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(total, e_total, rtol=1e-5)
    np.testing.assert_allclose(weighted, e_weighted, rtol=1e-5, atol=1e-6)
    return indices


def test_the_kernel_builds_where_a_compiler_exists():
    assert _cpu_kernel.available()


@pytest.mark.parametrize(
    "num_classes, top_c",
    # 4099: a partial last block; 70: above the bounded fast path (kMaxTopC = 64).
    ((256, 1), (256, 70), (1000, 2), (1000, 5), (4099, 3), (4099, 70), (40000, 2), (40000, 5)),
)
def test_equals_xla_statistics(num_classes, top_c):
    logits = 4.0 * jax.random.normal(jax.random.key(num_classes + top_c), (3, num_classes))
    _assert_rows_equal(logits, top_c)


@pytest.mark.parametrize(
    "num_rows, num_classes, top_c",
    # Rows of up to 64 values go eight at a time (13 rows: one group of 8, then 5 one by one);
    # top_c above 8 and rows above 64 take the one-row path; 100 and 200: blocks of 8 values.
    ((13, 2, 1), (13, 10, 5), (16, 10, 10), (13, 64, 8), (9, 64, 20), (13, 65, 3), (13, 100, 8),
     (5, 200, 5)),
)
def test_equals_xla_statistics_on_short_rows(num_rows, num_classes, top_c):
    logits = 4.0 * jax.random.normal(jax.random.key(num_classes), (num_rows, num_classes))
    _assert_rows_equal(logits, top_c)
    rounded = jnp.round(logits) + 0.0  # ties; + 0.0 turns -0.0, which lax.top_k ranks below 0.0, into 0.0
    indices = _assert_rows_equal(rounded, top_c)
    np.testing.assert_array_equal(indices, jax.lax.top_k(rounded, top_c)[1])


def test_exp_matches_float64_over_its_whole_range():
    # exp(z - m) for z - m from -90 (0 below -88) to 0, against float64: about 1 ulp.
    shifted = np.linspace(-90.0, 0.0, 1000 * 1000, dtype=np.float32).reshape(1000, 1000)
    shifted[:, 0] = 0.0  # each row's max
    exps = np.asarray(jax.jit(lambda z: _cpu_kernel.row_statistics(z, 2))(shifted)[0])
    expected = np.exp(shifted.astype(np.float64))
    normal = expected > np.finfo(np.float32).tiny
    np.testing.assert_allclose(exps[normal], expected[normal], rtol=2e-7)
    np.testing.assert_allclose(exps[~normal], expected[~normal], rtol=0, atol=2e-38)


def test_ties_follow_top_k():
    num_classes = 1000
    rng = np.random.default_rng(0)
    logits = np.round(rng.normal(size=(5, num_classes)), 1).astype(np.float32)  # many ties
    logits[1] = 0.0  # all equal
    logits[2, [5, 300, 999]] = 9.0  # the maximum in three blocks, one the partial last block
    logits[3, [998, 999]] = 9.0  # the maximum only in the partial last block
    logits[4, ::37] = 9.0
    logits = jnp.asarray(logits)
    for top_c in (1, 2, 3, 7):
        indices = _assert_rows_equal(logits, top_c)
        np.testing.assert_array_equal(indices, jax.lax.top_k(logits, top_c)[1])


@pytest.mark.parametrize("num_classes", (300, 40))
def test_masked_classes_and_short_rows(num_classes):
    logits = jax.random.normal(jax.random.key(1), (9, num_classes))
    where = jax.random.bernoulli(jax.random.key(2), 0.2, logits.shape)
    where = where.at[0].set(False)  # nothing left: m = 0, sums 0, top values -inf at index C
    where = where.at[1].set(False).at[1, [3, 29]].set(True)  # fewer than top_c
    masked = jnp.where(where, logits, -jnp.inf)
    kernel = jax.jit(lambda z: _cpu_kernel.row_statistics(z, 5))(masked)
    xla = jax.jit(lambda z: _fused._row_statistics_xla(z, logits, where, 5))(masked)
    for got, want in zip(kernel, xla):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(kernel[5][0], num_classes)
    by_value = sorted([3, 29], key=lambda i: -float(logits[1, i]))
    np.testing.assert_array_equal(kernel[5][1], by_value + [num_classes] * 3)


@pytest.mark.parametrize("num_classes, top_c", ((10, 3), (1000, 5)))
def test_gradient_kernel_equals_xla_operations(num_classes, top_c):
    keys = jax.random.split(jax.random.key(num_classes), 6)
    shape = (2, 3, num_classes)
    logits = 3.0 * jax.random.normal(keys[0], shape)
    logits = logits.at[0, 0, :4].set(-jnp.inf)  # e = 0 there: 0, not NaN
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    exps = jnp.exp(logits - row_max)
    total = jnp.sum(exps, axis=-1, keepdims=True)
    coefficient, slope = (jax.random.normal(k, shape[:-1] + (1,)) for k in keys[1:3])
    top_indices = jax.random.randint(keys[3], shape[:-1] + (top_c,), 0, num_classes)
    top_indices = top_indices.at[1, 2, -1].set(num_classes)  # a missing entry: dropped
    top_entries = jax.random.normal(keys[4], shape[:-1] + (top_c,))
    labels = jax.random.randint(keys[5], shape[:-1] + (1,), 0, num_classes)
    labels = labels.at[0, 1].set(top_indices[0, 1, 0])  # added after the entry is set
    label_entries = -jnp.abs(slope)
    args = (exps, total, row_max, coefficient, slope, top_indices, top_entries, labels,
            label_entries)
    finite = jnp.where(jnp.isfinite(logits), logits, -1e30)  # the XLA pass would make 0 * inf
    kernel = jax.jit(_fused._logits_cotangent_kernel)
    xla = jax.jit(_fused._logits_cotangent_xla)
    np.testing.assert_allclose(kernel(finite, *args), xla(finite, *args), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(kernel(logits, *args), kernel(finite, *args))
    no_labels = args[:-2] + (None, None)
    np.testing.assert_allclose(
        kernel(logits, *no_labels), xla(finite, *no_labels), rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("num_classes", (10, 300))
@pytest.mark.parametrize("kind", ("int", "soft", "masked"))
def test_bfloat16_logits_are_read_as_they_are(num_classes, kind):
    logits = (3.0 * jax.random.normal(jax.random.key(0), (16, num_classes))).astype(jnp.bfloat16)
    labels = jax.random.randint(jax.random.key(1), (16,), 0, num_classes)
    kwargs = {}
    if kind == "soft":
        labels = jax.nn.softmax(jax.random.normal(jax.random.key(2), logits.shape))
    if kind == "masked":
        kwargs["where"] = jax.random.bernoulli(jax.random.key(3), 0.7, logits.shape).at[:, 0].set(
            True)
        labels = jnp.zeros(16, jnp.int32)

    def value_and_grad(z):
        return jax.value_and_grad(
            lambda z: gsc_jax.gsc_loss(z, labels, gamma=0.5, top_c=3, **kwargs).sum())(z)

    value, grad = jax.jit(value_and_grad)(logits)
    value_f32, grad_f32 = jax.jit(value_and_grad)(logits.astype(jnp.float32))
    assert grad.dtype == jnp.bfloat16
    # The same float32 arithmetic on the same values; the gradient rounded to bfloat16 once.
    np.testing.assert_allclose(value, value_f32, rtol=1e-6)
    np.testing.assert_array_equal(grad, grad_f32.astype(jnp.bfloat16))


def test_bfloat16_logits_need_no_float32_copy():
    logits = jnp.zeros((256, 1000), jnp.bfloat16)
    labels = jnp.zeros(256, jnp.int32)
    step = jax.jit(jax.value_and_grad(
        lambda z: gsc_jax.gsc_loss(z, labels, gamma=0.5, top_c=3).mean()))
    temp = step.lower(logits).compile().memory_analysis().temp_size_in_bytes
    # exp(z - m) in float32 (the backward pass's residual, then the float32 gradient) and
    # per-row vectors; an upcast copy of the logits would add another 1 MB.
    assert temp <= 4 * logits.size + 64 * 1024, temp


def test_batch_dimensions_and_vmap():
    logits = jax.random.normal(jax.random.key(3), (2, 3, 512))
    direct = jax.jit(lambda z: _cpu_kernel.row_statistics(z, 3))(logits)
    mapped = jax.jit(jax.vmap(lambda z: _cpu_kernel.row_statistics(z, 3)))(logits)
    for got, want in zip(mapped, direct):
        np.testing.assert_array_equal(got, want)
    assert direct[0].shape == (2, 3, 512) and direct[4].shape == (2, 3, 3)


FALLBACK_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    import gsc_jax
    from gsc_jax import _cpu_kernel
    assert not _cpu_kernel.available()
    z = 3.0 * jax.random.normal(jax.random.key(0), (4, 300))
    y = jnp.arange(4)
    fused = jax.value_and_grad(lambda z: gsc_jax.gsc_loss(z, y, gamma=0.5, top_c=3).sum())(z)
    hlo = jax.jit(lambda z: gsc_jax.gsc_loss(z, y, gamma=0.5, top_c=3)).lower(z).as_text()
    assert "gsc_jax_row_statistics" not in hlo
    ref = jax.value_and_grad(lambda z: gsc_jax.gsc_loss_reference(z, y, gamma=0.5, top_c=3).sum())(z)
    for a, b in zip(fused, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    print("fallback ok")
    """
)


def test_disabled_kernel_falls_back_to_xla_operations():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, GSC_JAX_CPU_KERNEL="0")
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fallback ok" in result.stdout


def test_the_loss_uses_the_kernel_on_cpu_for_float32_rows_only():
    labels = jnp.arange(2)
    with jax.enable_x64(True):
        for num_classes, dtype, expected in ((300, jnp.float32, True), (10, jnp.float32, True),
                                             (10, jnp.bfloat16, True), (10, jnp.float64, False)):
            logits = jnp.zeros((2, num_classes), dtype)
            hlo = jax.jit(
                jax.grad(lambda z: gsc_jax.gsc_loss(z, labels, gamma=0.1, top_c=2).sum())
            ).lower(logits).as_text()
            assert ("gsc_jax_row_statistics" in hlo) == expected, (num_classes, dtype)
