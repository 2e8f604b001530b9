"""The fused cross-entropy + GSC path (`gsc_jax._fused`) against the autodiff reference.

Values and first derivatives of `gsc_jax.gsc_loss` (the default, fused implementation) must equal
``gsc_loss(..., implementation="reference")`` to 1e-5 relative in float32 and 1e-10 in float64:
with respect to the logits, ``gamma``, ``mu`` and soft labels; on ties among the top scores
(`jax.lax.top_k`'s choice), masked classes, rows with fewer than 2 classes, extreme logits, every
option, other class axes and batch ranks; under jit, vmap and sharding; on the three row paths
(XLA operations with the CPU's top-c selection, with `jax.lax.top_k` as on other backends, and the
opt-in CPU kernel). The integer-label rule holds on both implementations, values and gradients.
Second derivatives are refused with an error naming ``implementation="reference"``.
"""

import functools
import os
import shlex
import shutil
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
from gsc_jax import _fused
from gsc_jax import cpu_kernel

F32_RTOL = 1e-5
F64_RTOL = 1e-10
HAS_COMPILER = shutil.which((shlex.split(os.environ.get("CXX", "")) or ["c++"])[0]) is not None


def _reference(logits, labels, **kwargs):
    return gsc_jax.gsc_loss(logits, labels, implementation="reference", **kwargs)


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
    reference = run(_reference, reference_dtype)
    for actual, expected in zip(fused, reference):
        _assert_close(actual, expected, rtol)
    return fused


@pytest.fixture(params=("xla", "top_k", "cpu_kernel"))
def row_path(request, monkeypatch):
    """Runs a test on each row-statistics path: the default XLA operations (on CPU with the
    hand-written top-c selection), the XLA operations with `jax.lax.top_k` (the selection of every
    other backend) and the opt-in CPU kernel."""
    if request.param == "top_k":
        monkeypatch.setattr(_fused, "select_top", _fused.top_logits_top_k)
        jax.clear_caches()
    elif request.param == "cpu_kernel":
        if not HAS_COMPILER:
            pytest.skip("no C++ compiler on PATH: the opt-in CPU kernel cannot be built")
        cpu_kernel.enable()
    yield request.param
    if request.param == "cpu_kernel":
        cpu_kernel.disable()
    jax.clear_caches()


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
    # A class taking part in each row (any class in row 0, which has none).
    labels = jnp.argmax(where * jax.random.uniform(jax.random.key(4), where.shape), axis=-1)
    value = _check(logits, labels, top_c=5, where=where)[0]
    assert value[0] == 0.0
    soft = jax.nn.softmax(_logits((6, 300), seed=9))
    _check(logits, soft, top_c=5, where=where, soft=True)
    np.testing.assert_array_equal(gsc_jax.gsc_term(logits, top_c=5, where=where)[:2], 0.0)


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
    reference = lambda z, y: _reference(z, y, gamma=0.3, top_c=3)  # noqa: E731
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
        gsc_jax.gsc_term(logits, top_c=2),
        gsc_jax.gsc_term(logits, top_c=2, implementation="reference"),
        rtol=1e-5,
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
        lambda z: gsc_jax.gsc_loss(z, labels, gamma=0.5, top_c=3).sum()
    )(logits)
    floored = logits.at[:, 2].set(-1e4)  # exp underflows to 0 just the same
    value_floored, grad_floored = jax.value_and_grad(
        lambda z: gsc_jax.gsc_loss(z, labels, gamma=0.5, top_c=3).sum()
    )(floored)
    np.testing.assert_allclose(value, value_floored, rtol=1e-6)
    np.testing.assert_allclose(grad, grad_floored, rtol=1e-6, atol=1e-8)
    assert np.all(grad[:, 2] == 0)


def _assert_close_or_both_nan(actual, expected, rtol=F32_RTOL):
    """NaN exactly where ``expected`` is NaN; elsewhere `_assert_close`."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    _assert_close(actual[~np.isnan(expected)], expected[~np.isnan(expected)], rtol)


def _per_example_value_and_grad(loss_fn, logits, labels, **kwargs):
    """Per-example loss and the gradient of their sum with respect to the logits (jitted)."""

    def total(z):
        value = loss_fn(z, labels, **kwargs)
        return value.sum(), value

    (_, value), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(logits)
    return value, grad


@pytest.mark.parametrize("num_classes", (4, 300))
def test_integer_label_rule(num_classes, row_path):
    # Ids in [-n, n) are valid, negative ones from the end; any other id gives a NaN value for
    # its example and no derivative through its cross-entropy (the GSC term's remains), on both
    # implementations; other rows are unaffected.
    n = num_classes
    labels = jnp.array([0, n - 1, -1, -n, -n - 1, n, n + 7, -(2**31), 2**31 - 1, 2], jnp.int32)
    valid = np.array([True] * 4 + [False] * 5 + [True])
    logits = _logits((labels.shape[0], n))
    kwargs = dict(gamma=0.5, top_c=3)
    value, grad = map(
        np.asarray, _per_example_value_and_grad(gsc_jax.gsc_loss, logits, labels, **kwargs)
    )
    ref_value, ref_grad = _per_example_value_and_grad(_reference, logits, labels, **kwargs)
    assert np.isnan(value[~valid]).all() and np.isfinite(grad).all()
    term_grad = jax.grad(lambda z: 0.5 * gsc_jax.gsc_term(z, top_c=3).sum())(logits)
    np.testing.assert_allclose(grad[~valid], np.asarray(term_grad)[~valid], rtol=1e-5, atol=1e-7)
    _assert_close_or_both_nan(value, ref_value)
    _assert_close_or_both_nan(grad, ref_grad)
    # The valid rows equal the same rows alone, with the negative ids read from the end.
    ids = jnp.where(labels < 0, labels + n, labels)[valid]
    alone_value, alone_grad = _per_example_value_and_grad(
        gsc_jax.gsc_loss, logits[valid], ids, **kwargs
    )
    np.testing.assert_allclose(value[valid], alone_value, rtol=1e-6)
    np.testing.assert_allclose(grad[valid], alone_grad, rtol=1e-6, atol=1e-8)
    with_gsc = gsc_jax.with_gsc(gsc_jax.cross_entropy, gamma=0.5, top_c=3)
    np.testing.assert_allclose(with_gsc(logits, labels), value, rtol=1e-6)


def test_label_minus_five_of_four_classes_is_nan():
    # -5 is outside [-4, 4): NaN, not class 3 without its gradient term.
    logits = _logits((2, 4))
    labels = jnp.array([-5, 1])
    value, grad = _per_example_value_and_grad(gsc_jax.gsc_loss, logits, labels, gamma=0.5, top_c=2)
    assert np.isnan(value[0]) and np.isfinite(grad[0]).all()
    assert np.isfinite(value[1]) and np.isfinite(grad[1]).all()


@pytest.mark.parametrize("num_classes", (10, 300))
def test_label_of_a_masked_out_class_is_nan(num_classes, row_path):
    logits = _logits((4, num_classes))
    where = jnp.ones((4, num_classes), bool).at[:2, 3].set(False).at[2].set(False)
    labels = jnp.array([3, 2, 3, -1])  # row 0 names its masked class 3; row 2 has no class
    kwargs = dict(gamma=0.5, top_c=3, where=where)
    value, grad = map(
        np.asarray, _per_example_value_and_grad(gsc_jax.gsc_loss, logits, labels, **kwargs)
    )
    ref_value, ref_grad = _per_example_value_and_grad(_reference, logits, labels, **kwargs)
    assert np.isnan(value[0]) and np.isfinite(grad[0]).all()
    assert np.isfinite(value[[1, 3]]).all() and np.isfinite(grad[[1, 3]]).all()
    assert value[2] == 0.0 and np.all(grad[2] == 0.0)  # no class takes part: 0, as documented
    _assert_close_or_both_nan(value, ref_value)
    _assert_close_or_both_nan(grad, ref_grad)


@pytest.mark.parametrize("num_classes", (10, 300))
def test_rows_of_minus_infinity_logits_are_nan(num_classes, row_path):
    # No softmax: NaN on both implementations (not a huge finite value); other rows unaffected.
    logits = _logits((3, num_classes)).at[0].set(-jnp.inf)
    labels = jnp.array([0, 1, 2])
    kwargs = dict(gamma=0.5, top_c=3)
    value, grad = _per_example_value_and_grad(gsc_jax.gsc_loss, logits, labels, **kwargs)
    ref_value, ref_grad = _per_example_value_and_grad(_reference, logits, labels, **kwargs)
    assert np.isnan(value[0]) and np.isnan(grad[0]).all()
    assert np.isfinite(value[1:]).all() and np.isfinite(grad[1:]).all()
    _assert_close_or_both_nan(value, ref_value)
    _assert_close_or_both_nan(grad, ref_grad)
    term = gsc_jax.gsc_term(logits, top_c=3)
    _assert_close_or_both_nan(term, gsc_jax.gsc_term(logits, top_c=3, implementation="reference"))
    assert np.isnan(term[0])
    # With a mask: the classes taking part all -inf is NaN too; no class taking part is 0.
    where = jnp.ones(logits.shape, bool).at[1].set(False).at[0, 5:].set(False)
    value = gsc_jax.gsc_loss(logits, labels, where=where, **kwargs)
    _assert_close_or_both_nan(value, _reference(logits, labels, where=where, **kwargs))
    assert np.isnan(value[0]) and value[1] == 0.0


GOLDEN_SCRIPT = textwrap.dedent(
    """
    import io, logging, subprocess, sys, warnings
    warnings.simplefilter("error")
    log = io.StringIO()
    logging.basicConfig(stream=log, level=logging.WARNING, force=True)

    def refuse(*args, **kwargs):
        raise AssertionError(f"a subprocess was started: {args}")

    subprocess.Popen = refuse
    import jax, jax.numpy as jnp, numpy as np
    import gsc_jax

    assert not gsc_jax.cpu_kernel.is_enabled()
    i = np.arange(4 * 7, dtype=np.float64).reshape(4, 7)
    logits = jnp.asarray((3.0 * np.sin(1.7 * i + 0.3) + 0.5 * np.cos(0.9 * i * i)).astype(np.float32))
    labels = jnp.array([0, 3, 6, 2], jnp.int32)
    for implementation in (None, "reference"):
        step = jax.jit(jax.value_and_grad(lambda z: gsc_jax.gsc_loss(
            z, labels, gamma=0.5, top_c=3, implementation=implementation).mean()))
        value, grad = step(logits)
        print(repr(float(value)), repr(np.asarray(grad).tolist()))
    term = jax.jit(jax.grad(lambda z: gsc_jax.with_gsc(
        gsc_jax.focal_loss, gamma=0.5, top_c=2)(z, labels).sum()))(logits)
    assert np.isfinite(term).all()
    assert log.getvalue() == "", log.getvalue()
    """
)
GOLDEN_VALUE = 3.185882806777954  # the mean loss of GOLDEN_SCRIPT's logits and labels
GOLDEN_GRAD = [
    [
        -0.22510287165641785,
        0.148085817694664,
        0.000399684882722795,
        0.00023325062647927552,
        0.052471790462732315,
        0.023653065785765648,
        0.00025924728834070265,
    ],
    [
        0.002845520619302988,
        0.15046951174736023,
        0.005045376718044281,
        -0.24987682700157166,
        0.006837164517492056,
        0.08304791897535324,
        0.0016313763335347176,
    ],
    [
        0.0004699149285443127,
        0.05714937672019005,
        0.0530506856739521,
        0.00019414775306358933,
        0.0006311229080893099,
        0.12509867548942566,
        -0.23659394681453705,
    ],
    [
        0.00019331538351252675,
        0.004309208132326603,
        -0.09557169675827026,
        0.0012403164291754365,
        9.238987695425749e-05,
        0.03935528174042702,
        0.050381191074848175,
    ],
]


def test_default_path_needs_no_compiler_and_keeps_its_values(tmp_path):
    # No C++ compiler on PATH (only the interpreter's directory), no CXX, every subprocess start
    # refused: importing gsc_jax and a jitted value_and_grad of gsc_loss on CPU run without a
    # warning or a log line and give the values the fused loss has always given.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {key: value for key, value in os.environ.items() if key not in ("CXX", "XLA_FLAGS")}
    env.update(
        PATH=str(bin_dir),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=root + os.pathsep + env.get("PYTHONPATH", ""),
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", GOLDEN_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == "", result.stderr[-3000:]
    fused, reference = (line.split(" ", 1) for line in result.stdout.strip().splitlines())
    for value, grad in (fused, reference):
        np.testing.assert_allclose(float(value), GOLDEN_VALUE, rtol=1e-6)
        np.testing.assert_allclose(np.array(eval(grad)), GOLDEN_GRAD, rtol=1e-6, atol=1e-7)


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


def test_gsc_term_fused_equals_reference(row_path):
    logits = _logits((5, 300))
    where = jax.random.bernoulli(jax.random.key(2), 0.8, (5, 300))
    for kwargs in ({}, {"where": where, "mu": 0.4}, {"stop_gradient_sigma": True}):

        def value_and_grad(**implementation):
            return jax.jit(
                jax.value_and_grad(
                    lambda z: gsc_jax.gsc_term(z, top_c=3, **implementation, **kwargs).sum()
                )
            )(logits)

        fused, forced = value_and_grad(), value_and_grad(implementation="fused")
        plain = value_and_grad(implementation="reference")
        for actual, same, expected in zip(fused, forced, plain):
            np.testing.assert_array_equal(actual, same)
            _assert_close(actual, expected, F32_RTOL)


def test_with_gsc_dispatches_cross_entropy_to_the_fused_path():
    logits, labels = _logits((4, 10)), _int_labels((4,), 10)
    fused = gsc_jax.with_gsc(gsc_jax.cross_entropy, gamma=0.2, top_c=2)
    np.testing.assert_array_equal(
        fused(logits, labels), gsc_jax.gsc_loss(logits, labels, gamma=0.2, top_c=2)
    )
    with pytest.raises(NotImplementedError, match='implementation="reference"'):
        jax.jit(jax.hessian(lambda z: fused(z, labels).sum()))(logits)
    reference = gsc_jax.with_gsc(
        gsc_jax.cross_entropy, gamma=0.2, top_c=2, implementation="reference"
    )
    _assert_close(reference(logits, labels), fused(logits, labels), F32_RTOL)
    jax.jit(jax.hessian(lambda z: reference(z, labels).sum()))(logits)
    # Any other base loss gets gsc_term, with the implementation passed on.
    wrapped = gsc_jax.with_gsc(
        lambda z, y, **kw: gsc_jax.cross_entropy(z, y, **kw), gamma=0.2, top_c=2
    )
    _assert_close(wrapped(logits, labels), fused(logits, labels), F32_RTOL)
    with pytest.raises(NotImplementedError, match='implementation="reference"'):
        jax.jit(jax.hessian(lambda z: wrapped(z, labels).sum()))(logits)
    wrapped_reference = gsc_jax.with_gsc(
        lambda z, y, **kw: gsc_jax.cross_entropy(z, y, **kw),
        gamma=0.2,
        top_c=2,
        implementation="reference",
    )
    jax.jvp(lambda z: wrapped_reference(z, labels).sum(), (logits,), (logits,))


@pytest.mark.parametrize("num_classes", (10, 300))
def test_second_derivatives_are_refused_with_a_clear_error(num_classes):
    # (With the CPU kernel enabled: tests/test_cpu_kernel.py.)
    logits, labels = _logits((3, num_classes)), _int_labels((3,), num_classes)
    for loss in (
        lambda z: gsc_jax.gsc_loss(z, labels, gamma=0.5, top_c=2).sum(),
        lambda z: gsc_jax.gsc_term(z, top_c=2).sum(),
    ):
        with pytest.raises(NotImplementedError, match='implementation="reference"'):
            jax.jit(jax.hessian(loss))(logits)
        with pytest.raises(NotImplementedError, match="first-order reverse-mode"):
            jax.jit(jax.grad(lambda z: jax.grad(loss)(z).sum()))(logits)
        # Forward mode names the alternative too (it was JAX's generic custom_vjp TypeError);
        # traced inside jax.jit the error comes from JAX's transformation of the staged program.
        with pytest.raises(NotImplementedError, match='implementation="reference"'):
            jax.jvp(loss, (logits,), (logits,))
        with pytest.raises(NotImplementedError, match='implementation="reference"'):
            jax.jacfwd(loss)(logits)
        with pytest.raises(TypeError, match="forward-mode"):
            jax.jit(lambda z: jax.jvp(loss, (z,), (z,)))(logits)
    small = logits[:, :10]
    reference = lambda z: _reference(z, labels % 10, gamma=0.5, top_c=2).sum()  # noqa: E731
    assert jax.jit(jax.hessian(reference))(small).shape == 2 * small.shape


@pytest.mark.parametrize("implementation", ("Fused", "xla", "", 1, True))
def test_unknown_implementation_is_refused(implementation):
    logits, labels = _logits((3, 10)), _int_labels((3,), 10)
    calls = (
        lambda: gsc_jax.gsc_loss(logits, labels, gamma=0.1, top_c=2, implementation=implementation),
        lambda: gsc_jax.gsc_term(logits, implementation=implementation),
        lambda: gsc_jax.with_gsc(
            gsc_jax.focal_loss, gamma=0.1, top_c=2, implementation=implementation
        ),
    )
    for call in calls:
        with pytest.raises(
            ValueError, match="`implementation` must be None .*'fused' or 'reference'"
        ):
            call()


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
    for fn in (gsc_jax.gsc_loss, _reference):
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

    return pair(gsc_jax.gsc_loss), pair(_reference)


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
    import functools, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import gsc_jax

    assert jax.device_count() == 8, jax.devices()
    if sys.argv[1] == "cpu_kernel":
        gsc_jax.cpu_kernel.enable()
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    logits = 3.0 * jax.random.normal(jax.random.key(0), (16, 300))
    labels = jax.random.randint(jax.random.key(1), (16,), 0, 300)
    logits = jax.device_put(logits, NamedSharding(mesh, P("batch", None)))
    labels = jax.device_put(labels, NamedSharding(mesh, P("batch")))
    reference = functools.partial(gsc_jax.gsc_loss, implementation="reference")

    def value_and_grad(fn):
        loss = lambda z, g: fn(z, labels, gamma=g, top_c=3).mean()
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(logits, 0.5)

    (value, (grad, ggamma)) = value_and_grad(gsc_jax.gsc_loss)
    (ref, (ref_grad, ref_ggamma)) = value_and_grad(reference)
    assert len(grad.sharding.device_set) == 8, grad.sharding
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    np.testing.assert_allclose(ggamma, ref_ggamma, rtol=1e-5)
    assert np.abs(grad - ref_grad).max() <= 1e-5 * np.abs(ref_grad).max()

    # Each device works on its own rows: no rows gathered.
    step = jax.jit(jax.value_and_grad(lambda z: gsc_jax.gsc_loss(z, labels, gamma=0.5, top_c=3).mean()))
    hlo = step.lower(logits).compile().as_text()
    assert ("gsc_jax_row_statistics" in hlo) == (sys.argv[1] == "cpu_kernel")
    if sys.argv[1] == "cpu_kernel":
        assert "gsc_jax_row_gradient" in hlo, "the backward kernel is missing"
    assert "all-gather" not in hlo, "rows were gathered onto every device"

    # Classes split over devices (gathered along them first), and vmap over a sharded axis.
    wide = 3.0 * jax.random.normal(jax.random.key(2), (16, 320))
    wide_labels = jnp.arange(16)
    per_class = jax.device_put(wide, NamedSharding(mesh, P(None, "batch")))
    grad_fn = jax.jit(jax.grad(lambda z: gsc_jax.gsc_loss(z, wide_labels, gamma=0.5, top_c=3).sum()))
    np.testing.assert_allclose(grad_fn(per_class), grad_fn(wide), rtol=1e-6, atol=1e-7)
    stacked = jax.device_put(wide.reshape(2, 8, 320), NamedSharding(mesh, P(None, "batch", None)))
    per_row = jax.jit(jax.vmap(lambda z: gsc_jax.gsc_term(z, top_c=2)))(stacked)
    np.testing.assert_allclose(per_row.reshape(16), gsc_jax.gsc_term(wide, top_c=2), rtol=1e-5)
    print("sharded ok")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("path", ("xla", "cpu_kernel"))
def test_sharded_over_eight_cpu_devices(path):
    if path == "cpu_kernel" and not HAS_COMPILER:
        pytest.skip("no C++ compiler on PATH: the opt-in CPU kernel cannot be built")
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT, path],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sharded ok" in result.stdout
