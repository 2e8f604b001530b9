"""The fused cross-entropy + GSC path (`gsc_jax._fused`) against the autodiff reference.

Values and first derivatives of `gsc_jax.gsc_loss` (fused) must equal `gsc_jax.gsc_loss_reference`
to 1e-5 relative in float32 and 1e-10 in float64: with respect to the logits, ``gamma``, ``mu``
and soft labels; on ties among the top scores (`jax.lax.top_k`'s choice), masked classes, rows
with fewer than 2 classes, extreme logits, every option, other class axes and batch ranks; under
jit, vmap and sharding. Second derivatives are refused with an error naming the reference.
"""

import functools
import os
import subprocess
import sys
import textwrap

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gsc_jax
from gsc_jax import _cpu_kernel, _fused

F32_RTOL = 1e-5
F64_RTOL = 1e-10


def _assert_close(actual, expected, rtol, scale_floor=np.finfo(np.float32).tiny):
    """Elementwise within ``rtol`` of the largest magnitude (normwise relative error).

    ``scale_floor`` bounds the scale from below where the result is a difference of larger terms.
    """
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    assert np.all(np.isfinite(actual)), actual
    scale = max(float(np.max(np.abs(expected), initial=0.0)), scale_floor)
    error = float(np.max(np.abs(actual - expected), initial=0.0))
    assert error <= rtol * scale, f"max error {error:.3g} > {rtol:g} * {scale:.3g}"


def _value_and_grads(loss_fn, logits, labels, gamma, mu, soft, **kwargs):
    """Per-example loss and the gradients of a weighted sum w.r.t. logits, gamma, mu (, labels)."""
    batch_shape = np.shape(labels)[:-1] if soft else np.shape(labels)
    weights = 1.0 + jnp.arange(np.prod(batch_shape, dtype=int), dtype=jnp.float32).reshape(
        batch_shape
    ) / max(1, np.prod(batch_shape, dtype=int))

    def total(z, g, m, y):
        return jnp.sum(weights * loss_fn(z, y, gamma=g, mu=m, **kwargs))

    argnums = (0, 1, 2, 3) if soft else (0, 1, 2)
    grads = jax.grad(total, argnums=argnums)(logits, gamma, mu, labels)
    return (loss_fn(logits, labels, gamma=gamma, mu=mu, **kwargs),) + tuple(grads)


def _check(
    logits,
    labels,
    *,
    rtol=F32_RTOL,
    gamma=0.7,
    mu=0.0,
    soft=False,
    reference_dtype=None,
    **kwargs,
):
    """Jitted fused and reference: equal values and gradients (reference in `reference_dtype`)."""

    def run(fn, dtype):
        dtype = dtype or (jnp.float64 if logits.dtype == jnp.float64 else jnp.float32)
        args = [logits.astype(dtype) if reference_dtype else logits, labels]
        if soft and reference_dtype:
            args[1] = labels.astype(dtype)
        args += [jnp.asarray(gamma, dtype), jnp.asarray(mu, dtype)]
        f = lambda z, y, g, m: _value_and_grads(fn, z, y, g, m, soft, **kwargs)  # noqa: E731
        return jax.jit(f)(*args)

    fused = run(gsc_jax.gsc_loss, None)
    reference = run(gsc_jax.gsc_loss_reference, reference_dtype)
    for actual, expected in zip(fused, reference):
        _assert_close(actual, expected, rtol)
    return fused


@pytest.fixture(params=("cpu_kernel", "xla"))
def row_path(request, monkeypatch):
    """Runs a test on both row-statistics paths: the CPU kernel and the XLA operations (which
    every other backend uses)."""
    if request.param == "xla":
        monkeypatch.setattr(_cpu_kernel, "available", lambda: False)
    elif not _cpu_kernel.available():
        pytest.skip("no C++ compiler: the CPU kernel is not built (tests/test_cpu_kernel.py)")
    return request.param


def _int_labels(shape, num_classes, seed=1):
    return jax.random.randint(jax.random.key(seed), shape, 0, num_classes)


def _logits(shape, scale=3.0, seed=0, dtype=jnp.float32):
    return (scale * jax.random.normal(jax.random.key(seed), shape)).astype(dtype)


# Class counts that exercise the three selection paths: short rows (whole-row selection),
# chunked rows (300 = 15 chunks of 20) and a prime length without a divisor (whole row).
@pytest.mark.parametrize("num_classes, top_c", ((2, 1), (10, 2), (300, 5), (4099, 3)))
def test_matches_reference_float32(num_classes, top_c, row_path):
    logits = _logits((6, num_classes))
    _check(logits, _int_labels((6,), num_classes), top_c=top_c)


@pytest.mark.parametrize(
    "stop_gradient_sigma, normalize_entropy, mu",
    ((False, True, 0.0), (True, True, 0.3), (False, False, 0.3), (True, False, 0.0)),
)
def test_options(stop_gradient_sigma, normalize_entropy, mu):
    logits = _logits((5, 300), scale=1.5)
    _check(
        logits,
        _int_labels((5,), 300),
        top_c=3,
        mu=mu,
        stop_gradient_sigma=stop_gradient_sigma,
        normalize_entropy=normalize_entropy,
    )


def test_soft_labels_and_their_gradient():
    logits = _logits((4, 300))
    labels = jax.nn.softmax(_logits((4, 300), seed=5))
    _check(logits, labels, top_c=4, soft=True)


@pytest.mark.parametrize("num_classes", (10, 300))
def test_all_equal_logits_pick_what_top_k_picks(num_classes, row_path):
    logits = jnp.zeros((3, num_classes))
    values, indices = _fused.top_logits(logits, 5)
    np.testing.assert_array_equal(indices, jax.lax.top_k(logits, 5)[1])
    np.testing.assert_array_equal(indices, np.broadcast_to(np.arange(5), (3, 5)))
    np.testing.assert_array_equal(values, 0.0)
    _check(logits, _int_labels((3,), num_classes), top_c=5)


def test_repeated_maxima_across_chunks(row_path):
    # 300 classes = 15 chunks of 20; equal top values inside one chunk and across chunks.
    logits = _logits((4, 300), scale=1.0)
    logits = logits.at[:, [7, 45, 46, 299]].set(5.0).at[:, [3, 120]].set(4.0)
    logits = logits.at[1].set(jnp.round(logits[1]))  # many ties everywhere in row 1
    for top_c in (2, 6):
        np.testing.assert_array_equal(
            _fused.top_logits(logits, top_c)[1], jax.lax.top_k(logits, top_c)[1]
        )
        _check(logits, _int_labels((4,), 300), top_c=top_c)


def test_masked_classes_and_rows_with_fewer_than_two_classes(row_path):
    logits = _logits((6, 300))
    where = jax.random.bernoulli(jax.random.key(3), 0.3, (6, 300))
    where = where.at[0].set(False)  # no class
    where = where.at[1].set(False).at[1, 17].set(True)  # one class
    where = where.at[2].set(False).at[2, [4, 250]].set(True)  # two classes, top_c > n
    labels = _int_labels((6,), 300)
    value = _check(logits, labels, top_c=5, where=where)[0]
    assert value[0] == 0.0
    soft = jax.nn.softmax(_logits((6, 300), seed=9))
    _check(logits, soft, top_c=5, where=where, soft=True)
    np.testing.assert_array_equal(
        gsc_jax.gsc_term_fused(logits, top_c=5, where=where)[:2], 0.0
    )


def test_extreme_logits_stay_finite():
    # The float32 reference loses ~1e-4 here (log S = z - lse cancels at |z| = 1e4) while the
    # fused entropy, a sum of non-negative terms, does not: compare with a float64 reference.
    logits = jnp.array(
        [[1e4, -1e4, 1e4, 0.0] * 75, [-1e4] * 299 + [1e4], [1e4] * 300, [0.5, -1e4] * 150]
    )
    labels = jnp.array([0, 299, 3, 1])
    with jax.enable_x64(True):
        _check(logits, labels, top_c=2, reference_dtype=jnp.float64)
        _check(logits, labels, top_c=5, stop_gradient_sigma=True, reference_dtype=jnp.float64)


def test_class_axis_zero_and_three_dimensional_batch():
    logits = _logits((300, 4))
    _check(logits, _int_labels((4,), 300), top_c=3, axis=0)
    logits = _logits((2, 3, 40))
    _check(logits, _int_labels((2, 3), 40), top_c=2)
    _check(jnp.moveaxis(logits, -1, 1), _int_labels((2, 3), 40), top_c=2, axis=1)


def test_under_vmap():
    logits = _logits((3, 5, 300))
    labels = _int_labels((3, 5), 300)
    loss = lambda z, y: gsc_jax.gsc_loss(z, y, gamma=0.3, top_c=3)  # noqa: E731
    reference = lambda z, y: gsc_jax.gsc_loss_reference(z, y, gamma=0.3, top_c=3)  # noqa: E731
    grad = lambda fn: jax.vmap(jax.grad(lambda z, y: fn(z, y).sum()))  # noqa: E731
    _assert_close(jax.vmap(loss)(logits, labels), jax.vmap(reference)(logits, labels), F32_RTOL)
    _assert_close(grad(loss)(logits, labels), grad(reference)(logits, labels), F32_RTOL)


def test_bfloat16_logits_compute_in_float32():
    logits = _logits((4, 300), dtype=jnp.bfloat16)
    labels = _int_labels((4,), 300)
    # Both paths compute in float32; the logits' gradient is rounded to bfloat16 (2^-8 relative).
    fused = _check(logits, labels, top_c=2, rtol=2.0**-7)
    assert fused[0].dtype == jnp.float32 and fused[1].dtype == jnp.bfloat16
    _check(logits.astype(jnp.float32), labels, top_c=2)


@pytest.mark.parametrize("dtype, num_classes", ((jnp.float16, 70000), (jnp.bfloat16, 1001)))
def test_16_bit_logits_count_their_classes_in_float32(dtype, num_classes, row_path):
    # float16 cannot hold 70000 (inf) and bfloat16 rounds 1001: n and log n are float32 here.
    logits = _logits((2, num_classes), dtype=dtype)
    np.testing.assert_allclose(
        gsc_jax.gsc_term_fused(logits, top_c=2), gsc_jax.gsc_term(logits, top_c=2), rtol=1e-5
    )


@pytest.mark.parametrize("num_classes", (10, 40))
def test_negative_labels_count_from_the_end(num_classes, row_path):
    logits = _logits((9, num_classes))
    labels = -1 - _int_labels((9,), num_classes)
    _check(logits, labels, top_c=3)
    _check(logits, labels + num_classes, top_c=3)


@pytest.mark.parametrize("num_classes", (10, 300))
def test_nan_logits_make_their_rows_nan(num_classes, row_path):
    # Rows 0 and 8: one inside a group of eight short rows, one after it.
    logits = _logits((9, num_classes)).at[jnp.array([0, 8]), 3].set(jnp.nan)
    loss = gsc_jax.gsc_loss(logits, _int_labels((9,), num_classes), gamma=0.5, top_c=3)
    loss = np.asarray(loss)
    assert np.isnan(loss[[0, 8]]).all() and np.isfinite(loss[1:8]).all(), loss


@pytest.mark.parametrize("num_classes", (10, 300))
def test_minus_infinity_logits_give_finite_values_and_gradients(num_classes, row_path):
    # exp(-inf) = 0 contributes 0 to the entropy and to the gradient, not 0 * inf = NaN.
    logits = _logits((4, num_classes)).at[:, 2].set(-jnp.inf)
    labels = jnp.zeros(4, jnp.int32)
    value, grad = jax.value_and_grad(
        lambda z: gsc_jax.gsc_loss(z, labels, gamma=0.5, top_c=3).sum())(logits)
    floored = logits.at[:, 2].set(-1e4)  # exp underflows to 0 just the same
    value_floored, grad_floored = jax.value_and_grad(
        lambda z: gsc_jax.gsc_loss(z, labels, gamma=0.5, top_c=3).sum())(floored)
    np.testing.assert_allclose(value, value_floored, rtol=1e-6)
    np.testing.assert_allclose(grad, grad_floored, rtol=1e-6, atol=1e-8)
    assert np.all(grad[:, 2] == 0)


def test_float64_to_1e10():
    with jax.enable_x64(True):
        logits = _logits((4, 300), dtype=jnp.float64)
        assert logits.dtype == jnp.float64
        _check(logits, _int_labels((4,), 300), rtol=F64_RTOL, top_c=5)
        logits = _logits((4, 10), dtype=jnp.float64)
        _check(
            logits,
            jax.nn.softmax(logits[::-1]),
            rtol=F64_RTOL,
            top_c=2,
            soft=True,
            normalize_entropy=False,
            stop_gradient_sigma=True,
            mu=0.2,
        )


def test_gsc_term_fused_equals_gsc_term():
    logits = _logits((5, 300))
    where = jax.random.bernoulli(jax.random.key(2), 0.8, (5, 300))
    for kwargs in ({}, {"where": where, "mu": 0.4}, {"stop_gradient_sigma": True}):
        fused = jax.value_and_grad(lambda z: gsc_jax.gsc_term_fused(z, top_c=3, **kwargs).sum())
        plain = jax.value_and_grad(lambda z: gsc_jax.gsc_term(z, top_c=3, **kwargs).sum())
        for actual, expected in zip(fused(logits), plain(logits)):
            _assert_close(actual, expected, F32_RTOL)


def test_with_gsc_dispatches_cross_entropy_to_the_fused_path():
    logits, labels = _logits((4, 10)), _int_labels((4,), 10)
    fused = gsc_jax.with_gsc(gsc_jax.cross_entropy, gamma=0.2, top_c=2)
    np.testing.assert_array_equal(
        fused(logits, labels), gsc_jax.gsc_loss(logits, labels, gamma=0.2, top_c=2)
    )
    with pytest.raises(NotImplementedError, match="gsc_loss_reference"):
        jax.hessian(lambda z: fused(z, labels).sum())(logits)
    wrapped = gsc_jax.with_gsc(
        lambda z, y, **kw: gsc_jax.cross_entropy(z, y, **kw), gamma=0.2, top_c=2
    )
    _assert_close(wrapped(logits, labels), fused(logits, labels), F32_RTOL)
    jax.jvp(lambda z: wrapped(z, labels).sum(), (logits,), (logits,))  # the reference path


@pytest.mark.parametrize("num_classes", (10, 300))  # 300: through the CPU kernel
def test_second_derivatives_are_refused_with_a_clear_error(num_classes):
    logits, labels = _logits((3, num_classes)), _int_labels((3,), num_classes)
    loss = lambda z: gsc_jax.gsc_loss(z, labels, gamma=0.5, top_c=2).sum()  # noqa: E731
    with pytest.raises(NotImplementedError, match="gsc_loss_reference"):
        jax.hessian(loss)(logits)
    with pytest.raises(NotImplementedError, match="first-order reverse-mode"):
        jax.grad(lambda z: jax.grad(loss)(z).sum())(logits)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(loss, (logits,), (logits,))


@pytest.mark.parametrize(
    "call",
    (
        dict(top_c=11),
        dict(top_c=0),
        dict(top_c=2, axis=(0, 1)),
        dict(top_c=2, labels=jnp.zeros((3, 2), jnp.int32)),
        dict(top_c=2, labels=jnp.zeros((4,))),
        dict(top_c=2, where=jnp.ones((4, 10))),
        dict(top_c=2, gamma=-1.0),
        dict(top_c=2, mu=float("nan")),
        dict(top_c=2, logits=jnp.zeros((4, 10), jnp.int32)),
    ),
)
def test_errors_are_the_references(call):
    call = dict(call)
    logits = call.pop("logits", jnp.zeros((4, 10)))
    labels = call.pop("labels", jnp.zeros((4,), jnp.int32))
    call.setdefault("gamma", 0.1)
    errors = []
    for fn in (gsc_jax.gsc_loss, gsc_jax.gsc_loss_reference):
        with pytest.raises((ValueError, TypeError)) as info:
            fn(logits, labels, **call)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1]


@functools.lru_cache(maxsize=None)
def _compiled_pair(top_c):
    """Jitted (fused, reference) value-and-gradients, reused across hypothesis examples."""

    def pair(fn):
        # mu = 0: d/dmu has no cancellation across rows (mu != 0 is covered by test_options).
        return jax.jit(lambda z, y: _value_and_grads(fn, z, y, 0.7, 0.0, False, top_c=top_c))

    return pair(gsc_jax.gsc_loss), pair(gsc_jax.gsc_loss_reference)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    num_classes=st.sampled_from((7, 300)),
    top_c=st.sampled_from((1, 5)),
    scale=st.sampled_from((1e-3, 1.0, 30.0, 1e3)),
    integer_valued=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_random_classes_scales_and_ties(num_classes, top_c, scale, integer_valued, seed):
    logits = np.asarray(_logits((3, num_classes), scale=scale, seed=seed))
    if integer_valued:  # coarse values: many ties among the top scores (+ 0.0: no -0.0)
        logits = np.round(logits / scale * 2.0) + 0.0
    logits = jnp.asarray(logits, jnp.float32)
    np.testing.assert_array_equal(
        _fused.top_logits(logits, top_c)[1], jax.lax.top_k(logits, top_c)[1]
    )
    labels = _int_labels((3,), num_classes, seed=seed)
    fused, reference = _compiled_pair(top_c)
    for actual, expected in zip(fused(logits, labels), reference(logits, labels)):
        # Errors are relative to max(|expected|, 1). In a saturated row the logits' gradient is
        # S - y with S_label ~ 1, a difference of O(1) terms (times weights < 2), and the GSC term
        # is exp(-a) with a ~ 50, whose relative error is a times sigma's; both are float32
        # rounding of O(1) quantities, not a relative error the difference or the tiny term keeps.
        _assert_close(actual, expected, F32_RTOL, scale_floor=1.0)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    logits=hnp.arrays(np.int32, (3, 7), elements=st.integers(-200, 200)),
    top_c=st.sampled_from((1, 5)),
)
def test_property_arbitrary_logits(logits, top_c):
    # Quarter-integers: equal logits tie exactly, distinct ones have distinct probabilities. (Logits
    # that differ by less than the rounding of the probabilities, say 0 and -1e-24, tie in the
    # reference's probabilities but not in the logits the fused path selects on; either choice is
    # a valid one-sided derivative there.)
    logits = jnp.asarray(logits, jnp.float32) / 4.0
    np.testing.assert_array_equal(
        _fused.top_logits(logits, top_c)[1], jax.lax.top_k(logits, top_c)[1]
    )
    labels = jnp.arange(3)
    fused, reference = _compiled_pair(top_c)
    for actual, expected in zip(fused(logits, labels), reference(logits, labels)):
        _assert_close(actual, expected, F32_RTOL, scale_floor=1.0)  # see the test above


SHARDED_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import gsc_jax

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    logits = 3.0 * jax.random.normal(jax.random.key(0), (16, 300))
    labels = jax.random.randint(jax.random.key(1), (16,), 0, 300)
    logits = jax.device_put(logits, NamedSharding(mesh, P("batch", None)))
    labels = jax.device_put(labels, NamedSharding(mesh, P("batch")))

    def value_and_grad(fn):
        loss = lambda z, g: fn(z, labels, gamma=g, top_c=3).mean()
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(logits, 0.5)

    (value, (grad, ggamma)) = value_and_grad(gsc_jax.gsc_loss)
    (ref, (ref_grad, ref_ggamma)) = value_and_grad(gsc_jax.gsc_loss_reference)
    assert len(grad.sharding.device_set) == 8, grad.sharding
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    np.testing.assert_allclose(ggamma, ref_ggamma, rtol=1e-5)
    assert np.abs(grad - ref_grad).max() <= 1e-5 * np.abs(ref_grad).max()

    # Each device runs the CPU kernels on its own rows: no rows gathered.
    step = jax.jit(jax.value_and_grad(lambda z: gsc_jax.gsc_loss(z, labels, gamma=0.5, top_c=3).mean()))
    hlo = step.lower(logits).compile().as_text()
    if "gsc_jax_row_statistics" in hlo:  # the kernel is built (a C++ compiler exists)
        assert "gsc_jax_row_gradient" in hlo, "the backward kernel is missing"
        assert "all-gather" not in hlo, "the kernels' rows were gathered onto every device"

    # Classes split over devices (gathered along them first), and vmap over a sharded axis.
    wide = 3.0 * jax.random.normal(jax.random.key(2), (16, 320))
    wide_labels = jnp.arange(16)
    per_class = jax.device_put(wide, NamedSharding(mesh, P(None, "batch")))
    grad_fn = jax.jit(jax.grad(lambda z: gsc_jax.gsc_loss(z, wide_labels, gamma=0.5, top_c=3).sum()))
    np.testing.assert_allclose(grad_fn(per_class), grad_fn(wide), rtol=1e-6, atol=1e-7)
    stacked = jax.device_put(wide.reshape(2, 8, 320), NamedSharding(mesh, P(None, "batch", None)))
    per_row = jax.jit(jax.vmap(lambda z: gsc_jax.gsc_term_fused(z, top_c=2)))(stacked)
    np.testing.assert_allclose(per_row.reshape(16), gsc_jax.gsc_term_fused(wide, top_c=2), rtol=1e-6)
    print("sharded ok")
    """
)


def test_sharded_over_eight_cpu_devices():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sharded ok" in result.stdout
