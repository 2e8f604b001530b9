"""`gsc_jax.linear_gsc_loss` (chunked output projection + CE + GSC) against the materialised loss.

Values and the gradients of hidden, weight, bias, gamma and mu must equal those of
``gsc_jax.gsc_loss(hidden @ weight + bias, labels, ...)`` to 1e-5 (float32) and 1e-10 (float64):
for chunk sizes that do and do not divide the vocabulary, top_c larger than a chunk, ties across
chunk boundaries, every option, the integer-label rule and example masks; under jit, vmap and a
batch sharded over 8 CPU devices. The compiled program's temporary memory does not grow with the
vocabulary at a fixed chunk size.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gsc_jax
from gsc_jax import _linear

F32_RTOL = 1e-5
F64_RTOL = 1e-10


def _assert_close(actual, expected, rtol):
    """Elementwise within ``rtol`` of the largest magnitude of ``expected``."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    assert np.all(np.isfinite(actual)), actual
    scale = max(float(np.max(np.abs(expected), initial=0.0)), np.finfo(np.float32).tiny)
    error = float(np.max(np.abs(actual - expected), initial=0.0))
    assert error <= rtol * scale, f"max error {error:.3g} > {rtol:g} * {scale:.3g}"


def _inputs(rows, dim, vocab, dtype=jnp.float32, seed=0, scale=1.0):
    keys = jax.random.split(jax.random.key(seed), 4)
    hidden = scale * jax.random.normal(keys[0], (rows, dim), dtype)
    weight = jax.random.normal(keys[1], (dim, vocab), dtype)
    bias = jax.random.normal(keys[2], (vocab,), dtype)
    labels = jax.random.randint(keys[3], (rows,), -vocab, vocab)
    return hidden, weight, bias, labels


def _value_and_grads(chunked, hidden, weight, bias, labels, gamma, mu, **options):
    """Per-example loss and the gradients of a weighted sum w.r.t. hidden, weight, bias, gamma, mu."""
    weights = 1.0 + jnp.arange(labels.size, dtype=hidden.dtype).reshape(labels.shape) / labels.size

    def loss(hidden, weight, bias, gamma, mu):
        if chunked:
            values = gsc_jax.linear_gsc_loss(
                hidden, weight, labels, bias=bias, gamma=gamma, mu=mu, **options
            )
        else:
            options.pop("chunk_size", None)
            values = gsc_jax.gsc_loss(hidden @ weight + bias, labels, gamma=gamma, mu=mu, **options)
        return jnp.sum(weights * values), values

    (_, values), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(
        hidden, weight, bias, gamma, mu
    )
    return values, grads


def _check_against_materialised(hidden, weight, bias, labels, rtol, gamma=0.7, mu=0.1, **options):
    gamma, mu = jnp.asarray(gamma, hidden.dtype), jnp.asarray(mu, hidden.dtype)
    actual = _value_and_grads(True, hidden, weight, bias, labels, gamma, mu, **options)
    expected = _value_and_grads(False, hidden, weight, bias, labels, gamma, mu, **options)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        _assert_close(a, e, rtol)


@pytest.fixture(params=["cpu", "top_k"])
def top_c_path(request, monkeypatch):
    """Each top-c merge: the CPU backend's selection, and `jax.lax.top_k` as on accelerators."""
    if request.param == "top_k":
        monkeypatch.setattr(_linear, "_merge_top_select", _linear._merge_top_k)
    return request.param


@pytest.mark.parametrize(
    "vocab, chunk_size, top_c",
    [
        (64, 16, 3),  # chunks divide V
        (67, 16, 3),  # V not a multiple: the last chunk overlaps the previous one
        (67, 5, 9),  # top_c larger than a chunk
        (67, 1, 4),  # one column per chunk
        (40, 100, 2),  # one chunk larger than V
        (2, 1, 2),  # the smallest vocabulary, top_c = V
    ],
)
def test_equals_materialised_gsc_loss(vocab, chunk_size, top_c):
    hidden, weight, bias, labels = _inputs(6, 8, vocab, scale=0.7)
    _check_against_materialised(
        hidden, weight, bias, labels, F32_RTOL, top_c=top_c, chunk_size=chunk_size
    )


@pytest.mark.parametrize(
    "options",
    [
        dict(normalize_entropy=False),
        dict(stop_gradient_sigma=True),
        dict(normalize_entropy=False, stop_gradient_sigma=True),
    ],
)
def test_options_equal_materialised(options):
    hidden, weight, bias, labels = _inputs(5, 8, 50, seed=1, scale=0.5)
    _check_against_materialised(
        hidden, weight, bias, labels, F32_RTOL, top_c=3, chunk_size=12, **options
    )


def test_batch_rank_and_no_bias():
    hidden, weight, _, _ = _inputs(6, 8, 30, seed=2)
    hidden = hidden.reshape(2, 3, 8)
    labels = jnp.array([[0, 29, -1], [5, 6, -30]])

    def value_and_grad(loss_fn):
        return jax.jit(lambda w: (loss_fn(w), jax.grad(lambda v: loss_fn(v).sum())(w)))(weight)

    actual, grad = value_and_grad(
        lambda w: gsc_jax.linear_gsc_loss(hidden, w, labels, gamma=0.5, top_c=2, chunk_size=7)
    )
    expected, ref_grad = value_and_grad(
        lambda w: gsc_jax.gsc_loss(hidden @ w, labels, gamma=0.5, top_c=2)
    )
    assert actual.shape == (2, 3)
    _assert_close(actual, expected, F32_RTOL)
    _assert_close(grad, ref_grad, F32_RTOL)


def test_float64():
    with jax.enable_x64(True):
        hidden, weight, bias, labels = _inputs(5, 6, 43, dtype=jnp.float64, seed=3)
        for chunk_size, top_c in ((8, 3), (4, 7), (43, 2)):
            _check_against_materialised(
                hidden, weight, bias, labels, F64_RTOL, top_c=top_c, chunk_size=chunk_size
            )
        loss = gsc_jax.linear_gsc_loss(hidden, weight, labels, gamma=0.1, top_c=2, chunk_size=8)
        assert loss.dtype == jnp.float64


@pytest.mark.parametrize("top_c", [2, 5])
def test_ties_across_chunk_boundaries(top_c, top_c_path):
    # Logits equal to the bias (hidden = 0), with equal values in different chunks:
    # lax.top_k's order (the lower index first) decides which entries carry the top-c gradient.
    bias = jnp.array(
        [1.0, 3.0, 0.0, 2.0, 3.0, 2.0, 0.5, 3.0, -1.0, 2.0, 3.0, 0.0, 1.0, 1.0, 2.0, 0.0, 3.0, 2.0]
    )
    hidden = jnp.zeros((4, 3))
    weight = jax.random.normal(jax.random.key(5), (3, 18))
    labels = jnp.array([0, 4, 7, -1])
    for chunk_size in (4, 7):  # 18 = 4 chunks of 4 + an overlapping one; 2 of 7 + 1
        _check_against_materialised(
            hidden, weight, bias, labels, F32_RTOL, top_c=top_c, chunk_size=chunk_size
        )


def test_gamma_zero_is_optax_cross_entropy():
    hidden, weight, bias, labels = _inputs(7, 8, 45, seed=6)
    labels = labels % 45

    def chunked(hidden, weight, bias):
        return gsc_jax.linear_gsc_loss(
            hidden, weight, labels, bias=bias, gamma=0.0, top_c=2, chunk_size=10
        )

    def materialised(hidden, weight, bias):
        return optax.softmax_cross_entropy_with_integer_labels(hidden @ weight + bias, labels)

    _assert_close(chunked(hidden, weight, bias), materialised(hidden, weight, bias), F32_RTOL)
    grads = jax.jit(jax.grad(lambda *a: chunked(*a).sum(), argnums=(0, 1, 2)))(hidden, weight, bias)
    ref = jax.jit(jax.grad(lambda *a: materialised(*a).sum(), argnums=(0, 1, 2)))(
        hidden, weight, bias
    )
    for a, e in zip(grads, ref):
        _assert_close(a, e, F32_RTOL)


def test_label_rule():
    hidden, weight, bias, _ = _inputs(4, 8, 20, seed=7)
    fn = jax.jit(
        lambda labels, h=hidden: gsc_jax.linear_gsc_loss(
            h, weight, labels, bias=bias, gamma=0.3, top_c=2, chunk_size=6
        )
    )
    # Negative ids count from the end.
    np.testing.assert_allclose(fn(jnp.array([-1, -20, 3, 19])), fn(jnp.array([19, 0, 3, 19])))
    # An id outside [-V, V): a NaN value for that example and no derivative through its
    # cross-entropy (the GSC term, which needs no label, still has one); the others untouched.
    labels = jnp.array([20, 3, -21, 5])
    values = np.asarray(fn(labels))
    assert np.isnan(values[0]) and np.isnan(values[2])
    np.testing.assert_array_equal(values[[1, 3]], np.asarray(fn(jnp.array([0, 3, 0, 5])))[[1, 3]])
    grad = np.asarray(jax.jit(jax.grad(lambda h: fn(labels, h).sum()))(hidden))
    assert np.all(np.isfinite(grad))
    expected = jax.jit(
        jax.grad(lambda h: gsc_jax.gsc_loss(h @ weight + bias, labels, gamma=0.3, top_c=2).sum())
    )(hidden)
    _assert_close(grad, np.asarray(expected), F32_RTOL)


def test_example_mask():
    hidden, weight, bias, labels = _inputs(5, 8, 33, seed=8)
    labels = labels.at[1].set(-100)  # a padding id, outside [-V, V)
    mask = jnp.array([True, False, True, True, False])

    def chunked(hidden, weight, bias):
        return gsc_jax.linear_gsc_loss(
            hidden, weight, labels, bias=bias, gamma=0.4, top_c=3, chunk_size=8, example_mask=mask
        )

    def materialised(hidden, weight, bias):
        values = gsc_jax.gsc_loss(
            hidden @ weight + bias, jnp.where(mask, labels, 0), gamma=0.4, top_c=3
        )
        return jnp.where(mask, values, 0.0)

    values = chunked(hidden, weight, bias)
    np.testing.assert_array_equal(values[~np.asarray(mask)], 0.0)
    _assert_close(values, materialised(hidden, weight, bias), F32_RTOL)
    grads = jax.jit(jax.grad(lambda *a: chunked(*a).sum(), argnums=(0, 1, 2)))(hidden, weight, bias)
    ref = jax.jit(jax.grad(lambda *a: materialised(*a).sum(), argnums=(0, 1, 2)))(
        hidden, weight, bias
    )
    np.testing.assert_array_equal(grads[0][~np.asarray(mask)], 0.0)
    for a, e in zip(grads, ref):
        _assert_close(a, e, F32_RTOL)


def test_jit_and_vmap():
    hidden, weight, bias, labels = _inputs(6, 8, 29, seed=9)
    batched_hidden, batched_labels = hidden.reshape(2, 3, 8), (labels % 29).reshape(2, 3)

    def loss(h, y, w, b, gamma):
        return gsc_jax.linear_gsc_loss(h, w, y, bias=b, gamma=gamma, top_c=3, chunk_size=8)

    direct = loss(batched_hidden, batched_labels, weight, bias, 0.5)
    jitted = jax.jit(loss)(batched_hidden, batched_labels, weight, bias, 0.5)
    mapped = jax.jit(jax.vmap(loss, in_axes=(0, 0, None, None, None)))(
        batched_hidden, batched_labels, weight, bias, 0.5
    )
    _assert_close(jitted, direct, F32_RTOL)
    _assert_close(mapped, direct, F32_RTOL)

    def total(w, h, y):
        return loss(h, y, w, bias, 0.5).sum()

    per_slice = jax.jit(jax.vmap(jax.grad(total), in_axes=(None, 0, 0)))(
        weight, batched_hidden, batched_labels
    )
    _assert_close(
        per_slice.sum(0), jax.grad(total)(weight, batched_hidden, batched_labels), F32_RTOL
    )


def test_bfloat16_accumulates_in_float32():
    hidden, weight, bias, labels = _inputs(6, 16, 50, seed=10)
    hidden, weight, bias = (x.astype(jnp.bfloat16) for x in (hidden, weight, bias))
    fn = lambda h, w, b: gsc_jax.linear_gsc_loss(  # noqa: E731
        h, w, labels, bias=b, gamma=0.5, top_c=3, chunk_size=16
    )
    values = fn(hidden, weight, bias)
    assert values.dtype == jnp.float32
    upcast = [x.astype(jnp.float32) for x in (hidden, weight, bias)]
    # Products of bfloat16 numbers are exact in float32: the logits are those of the upcast inputs.
    _assert_close(values, fn(*upcast), F32_RTOL)
    grads = jax.grad(lambda *a: fn(*a).sum(), argnums=(0, 1, 2))(hidden, weight, bias)
    assert all(g.dtype == jnp.bfloat16 for g in grads)
    ref = jax.grad(lambda *a: fn(*a).sum(), argnums=(0, 1, 2))(*upcast)
    for a, e in zip(grads, ref):
        _assert_close(a, e, 2e-2)  # the logits' cotangent enters the products in bfloat16


@pytest.mark.parametrize("forward_only", [True, False])
def test_temporary_memory_does_not_grow_with_vocabulary(forward_only):
    rows, dim, chunk_size = 256, 16, 512
    labels = jax.ShapeDtypeStruct((rows,), jnp.int32)
    hidden = jax.ShapeDtypeStruct((rows, dim), jnp.float32)

    def loss(hidden, weight, labels):
        return gsc_jax.linear_gsc_loss(
            hidden, weight, labels, gamma=0.1, top_c=5, chunk_size=chunk_size
        ).mean()

    fn = loss if forward_only else jax.grad(loss, argnums=(0, 1))
    temp = {}
    for vocab in (4096, 16384):
        weight = jax.ShapeDtypeStruct((dim, vocab), jnp.float32)
        analysis = jax.jit(fn).lower(hidden, weight, labels).compile().memory_analysis()
        temp[vocab] = analysis.temp_size_in_bytes
    logits_bytes = rows * 16384 * 4
    chunk_bytes = rows * chunk_size * 4
    # Growth with V well below one chunk's logits (V x 4 grows by 12 chunks' worth), and the whole
    # temporary space well below the [B, V] logits.
    assert temp[16384] - temp[4096] < chunk_bytes, temp
    assert temp[16384] < logits_bytes / 4, temp


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(chunk_size=0), "chunk_size"),
        (dict(chunk_size=2.5), "chunk_size"),
        (dict(top_c=11), "top_c"),
        (dict(top_c=0), "top_c"),
        (dict(weight=jnp.zeros((7, 10))), "weight"),
        (dict(weight=jnp.zeros((8,))), "weight"),
        (dict(weight=jnp.zeros((8, 1))), "weight"),
        (dict(bias=jnp.zeros((9,))), "bias"),
        (dict(labels=jnp.zeros((3,), jnp.int32)), "labels"),
        (dict(example_mask=jnp.ones((3,), bool)), "example_mask"),
        (dict(gamma=-1.0), "gamma"),
        (dict(mu=float("nan")), "mu"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    arguments = dict(
        hidden=jnp.zeros((4, 8)),
        weight=jnp.zeros((8, 10)),
        labels=jnp.zeros((4,), jnp.int32),
        gamma=0.1,
        top_c=2,
    )
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        gsc_jax.linear_gsc_loss(
            arguments.pop("hidden"), arguments.pop("weight"), arguments.pop("labels"), **arguments
        )


def test_bad_dtypes_raise():
    with pytest.raises(TypeError, match="labels"):
        gsc_jax.linear_gsc_loss(
            jnp.zeros((4, 8)), jnp.zeros((8, 10)), jnp.zeros((4,)), gamma=0.1, top_c=2
        )
    with pytest.raises(TypeError, match="hidden"):
        gsc_jax.linear_gsc_loss(
            jnp.zeros((4, 8), jnp.int32),
            jnp.zeros((8, 10)),
            jnp.zeros((4,), jnp.int32),
            gamma=0.1,
            top_c=2,
        )


SHARDED_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import gsc_jax

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    keys = jax.random.split(jax.random.key(0), 3)
    hidden = jax.random.normal(keys[0], (16, 8))
    weight = jax.random.normal(keys[1], (8, 45))
    labels = jax.random.randint(keys[2], (16,), 0, 45)
    sharded_hidden = jax.device_put(hidden, NamedSharding(mesh, P("batch", None)))
    sharded_labels = jax.device_put(labels, NamedSharding(mesh, P("batch")))

    def chunked(h, w, y):
        return gsc_jax.linear_gsc_loss(h, w, y, gamma=0.5, top_c=3, chunk_size=10).mean()

    def materialised(h, w, y):
        return gsc_jax.gsc_loss(h @ w, y, gamma=0.5, top_c=3).mean()

    step = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1)))
    value, (d_hidden, d_weight) = step(sharded_hidden, weight, sharded_labels)
    ref, (ref_hidden, ref_weight) = jax.value_and_grad(materialised, argnums=(0, 1))(
        hidden, weight, labels)
    assert len(d_hidden.sharding.device_set) == 8, d_hidden.sharding
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    assert np.abs(d_hidden - ref_hidden).max() <= 1e-5 * np.abs(ref_hidden).max()
    assert np.abs(d_weight - ref_weight).max() <= 1e-5 * np.abs(ref_weight).max()
    hlo = step.lower(sharded_hidden, weight, sharded_labels).compile().as_text()
    assert "all-gather" not in hlo, "rows were gathered onto every device"
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


def test_forward_mode_is_refused_naming_the_alternative():
    hidden, weight = jnp.ones((2, 4)), jnp.ones((4, 6))
    labels = jnp.array([0, 1])
    with pytest.raises(NotImplementedError, match="first-order reverse-mode"):
        jax.jvp(
            lambda h: gsc_jax.linear_gsc_loss(h, weight, labels, gamma=0.1, top_c=2).sum(),
            (hidden,),
            (hidden,),
        )
