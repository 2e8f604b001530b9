"""The opt-in CPU row kernels (`gsc_jax.cpu_kernel`) against the XLA operations they replace,
and how they are built.

Per row: exp(z - m) and its sums to float32 rounding, the row max and the top-c values and
indices exactly (`jax.lax.top_k`'s order on ties), for rows that end in a partial block, top_c
above the kernel's bounded path, masked (-inf) classes, rows with fewer finite values than top_c
and rows with none. The loss uses the kernels only once `enable()` is called, and not after
`disable()`. The build: a cached library that does not load is rebuilt, a cache directory other
users can write to is refused, a failed, timed-out or interrupted build leaves no partial file,
the cache key follows what ``-march=native`` resolves to, the library has mode 0644, and ``CXX``
may be a command with arguments.
"""

import os
import shlex
import shutil
import stat
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gsc_jax
from gsc_jax import _fused
from gsc_jax import cpu_kernel
from gsc_jax.cpu_kernel import _build
from gsc_jax.cpu_kernel import _ffi

COMPILER = shlex.split(os.environ.get("CXX", "")) or ["c++"]
requires_compiler = pytest.mark.skipif(
    shutil.which(COMPILER[0]) is None,
    reason=f"no C++ compiler {COMPILER[0]!r} on PATH: the opt-in CPU kernel cannot be built",
)


@pytest.fixture
def enabled():
    """The kernel enabled for one test (built on first use, then loaded from the cache)."""
    cpu_kernel.enable()
    yield
    cpu_kernel.disable()


def _kernel_and_xla(logits, top_c):
    kernel = jax.jit(lambda z: _ffi.row_statistics(z, top_c))(logits)
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


@requires_compiler
def test_enable_and_disable():
    assert not cpu_kernel.is_enabled()
    cpu_kernel.enable()
    try:
        assert cpu_kernel.is_enabled()
    finally:
        cpu_kernel.disable()
    assert not cpu_kernel.is_enabled()


@requires_compiler
@pytest.mark.parametrize(
    "num_classes, top_c",
    # 4099: a partial last block; 70: above the bounded fast path (kMaxTopC = 64).
    ((256, 1), (256, 70), (1000, 2), (1000, 5), (4099, 3), (4099, 70), (40000, 2), (40000, 5)),
)
def test_equals_xla_statistics(num_classes, top_c, enabled):
    logits = 4.0 * jax.random.normal(jax.random.key(num_classes + top_c), (3, num_classes))
    _assert_rows_equal(logits, top_c)


@requires_compiler
@pytest.mark.parametrize(
    "num_rows, num_classes, top_c",
    # Rows of up to 64 values go eight at a time (13 rows: one group of 8, then 5 one by one);
    # top_c above 8 and rows above 64 take the one-row path; 100 and 200: blocks of 8 values.
    (
        (13, 2, 1),
        (13, 10, 5),
        (16, 10, 10),
        (13, 64, 8),
        (9, 64, 20),
        (13, 65, 3),
        (13, 100, 8),
        (5, 200, 5),
    ),
)
def test_equals_xla_statistics_on_short_rows(num_rows, num_classes, top_c, enabled):
    logits = 4.0 * jax.random.normal(jax.random.key(num_classes), (num_rows, num_classes))
    _assert_rows_equal(logits, top_c)
    rounded = (
        jnp.round(logits) + 0.0
    )  # ties; + 0.0 turns -0.0, which lax.top_k ranks below 0.0, into 0.0
    indices = _assert_rows_equal(rounded, top_c)
    np.testing.assert_array_equal(indices, jax.lax.top_k(rounded, top_c)[1])


@requires_compiler
def test_exp_matches_float64_over_its_whole_range(enabled):
    # exp(z - m) for z - m from -90 (0 below -88) to 0, against float64: about 1 ulp.
    shifted = np.linspace(-90.0, 0.0, 1000 * 1000, dtype=np.float32).reshape(1000, 1000)
    shifted[:, 0] = 0.0  # each row's max
    exps = np.asarray(jax.jit(lambda z: _ffi.row_statistics(z, 2))(shifted)[0])
    expected = np.exp(shifted.astype(np.float64))
    normal = expected > np.finfo(np.float32).tiny
    np.testing.assert_allclose(exps[normal], expected[normal], rtol=2e-7)
    np.testing.assert_allclose(exps[~normal], expected[~normal], rtol=0, atol=2e-38)


@requires_compiler
def test_ties_follow_top_k(enabled):
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


@requires_compiler
@pytest.mark.parametrize("num_classes", (300, 40))
def test_masked_classes_and_short_rows(num_classes, enabled):
    logits = jax.random.normal(jax.random.key(1), (9, num_classes))
    where = jax.random.bernoulli(jax.random.key(2), 0.2, logits.shape)
    where = where.at[0].set(False)  # nothing left: m = 0, sums 0, top values -inf at index C
    where = where.at[1].set(False).at[1, [3, 29]].set(True)  # fewer than top_c
    masked = jnp.where(where, logits, -jnp.inf)
    kernel = jax.jit(lambda z: _ffi.row_statistics(z, 5))(masked)
    xla = jax.jit(lambda z: _fused._row_statistics_xla(z, logits, where, 5))(masked)
    for got, want in zip(kernel, xla):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(kernel[5][0], num_classes)
    by_value = sorted([3, 29], key=lambda i: -float(logits[1, i]))
    np.testing.assert_array_equal(kernel[5][1], by_value + [num_classes] * 3)


@requires_compiler
@pytest.mark.parametrize("num_classes, top_c", ((10, 3), (1000, 5)))
def test_gradient_kernel_equals_xla_operations(num_classes, top_c, enabled):
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
    args = (
        exps,
        total,
        row_max,
        coefficient,
        slope,
        top_indices,
        top_entries,
        labels,
        label_entries,
    )
    finite = jnp.where(jnp.isfinite(logits), logits, -1e30)  # the XLA pass would make 0 * inf
    kernel = jax.jit(_fused._logits_cotangent_kernel)
    xla = jax.jit(_fused._logits_cotangent_xla)
    np.testing.assert_allclose(kernel(finite, *args), xla(finite, *args), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(kernel(logits, *args), kernel(finite, *args))
    no_labels = args[:-2] + (None, None)
    np.testing.assert_allclose(
        kernel(logits, *no_labels), xla(finite, *no_labels), rtol=1e-5, atol=1e-7
    )


@requires_compiler
@pytest.mark.parametrize("num_classes", (10, 300))
@pytest.mark.parametrize("kind", ("int", "soft", "masked"))
def test_bfloat16_logits_are_read_as_they_are(num_classes, kind, enabled):
    logits = (3.0 * jax.random.normal(jax.random.key(0), (16, num_classes))).astype(jnp.bfloat16)
    labels = jax.random.randint(jax.random.key(1), (16,), 0, num_classes)
    kwargs = {}
    if kind == "soft":
        labels = jax.nn.softmax(jax.random.normal(jax.random.key(2), logits.shape))
    if kind == "masked":
        kwargs["where"] = (
            jax.random.bernoulli(jax.random.key(3), 0.7, logits.shape).at[:, 0].set(True)
        )
        labels = jnp.zeros(16, jnp.int32)

    def value_and_grad(z):
        return jax.value_and_grad(
            lambda z: gsc_jax.gsc_loss(z, labels, gamma=0.5, top_c=3, **kwargs).sum()
        )(z)

    value, grad = jax.jit(value_and_grad)(logits)
    value_f32, grad_f32 = jax.jit(value_and_grad)(logits.astype(jnp.float32))
    assert grad.dtype == jnp.bfloat16
    # The same float32 arithmetic on the same values; the gradient rounded to bfloat16 once.
    np.testing.assert_allclose(value, value_f32, rtol=1e-6)
    np.testing.assert_array_equal(grad, grad_f32.astype(jnp.bfloat16))


@requires_compiler
def test_bfloat16_logits_need_no_float32_copy(enabled):
    logits = jnp.zeros((256, 1000), jnp.bfloat16)
    labels = jnp.zeros(256, jnp.int32)
    step = jax.jit(
        jax.value_and_grad(lambda z: gsc_jax.gsc_loss(z, labels, gamma=0.5, top_c=3).mean())
    )
    temp = step.lower(logits).compile().memory_analysis().temp_size_in_bytes
    # exp(z - m) in float32 (the backward pass's residual, then the float32 gradient) and
    # per-row vectors; an upcast copy of the logits would add another 1 MB.
    assert temp <= 4 * logits.size + 64 * 1024, temp


@requires_compiler
def test_batch_dimensions_and_vmap(enabled):
    logits = jax.random.normal(jax.random.key(3), (2, 3, 512))
    direct = jax.jit(lambda z: _ffi.row_statistics(z, 3))(logits)
    mapped = jax.jit(jax.vmap(lambda z: _ffi.row_statistics(z, 3)))(logits)
    for got, want in zip(mapped, direct):
        np.testing.assert_array_equal(got, want)
    assert direct[0].shape == (2, 3, 512) and direct[4].shape == (2, 3, 3)


def _uses_kernel(fn, logits):
    return "gsc_jax_row_statistics" in jax.jit(fn).lower(logits).as_text()


@requires_compiler
def test_the_loss_uses_the_kernel_once_enabled_for_float32_and_bfloat16_rows_only():
    labels = jnp.arange(2)

    def grad(z):
        return jax.grad(lambda z: gsc_jax.gsc_loss(z, labels, gamma=0.1, top_c=2).sum())(z)

    cases = (
        (300, jnp.float32, True),
        (10, jnp.float32, True),
        (10, jnp.bfloat16, True),
        (10, jnp.float64, False),
    )
    with jax.enable_x64(True):
        jitted = jax.jit(grad)
        before = jitted.lower(jnp.zeros((2, 300), jnp.float32)).as_text()
        assert "gsc_jax_row_statistics" not in before  # the default: XLA operations only
        cpu_kernel.enable()
        try:
            # The jit cache is cleared: the same jitted function now takes the kernel.
            assert (
                "gsc_jax_row_statistics" in jitted.lower(jnp.zeros((2, 300), jnp.float32)).as_text()
            )
            for num_classes, dtype, expected in cases:
                logits = jnp.zeros((2, num_classes), dtype)
                assert _uses_kernel(grad, logits) == expected, (num_classes, dtype)
            small = jnp.zeros((2, 10), jnp.float32)
            assert _uses_kernel(lambda z: gsc_jax.gsc_term(z, top_c=2), small)
            assert not _uses_kernel(
                lambda z: gsc_jax.gsc_term(z, top_c=2, implementation="reference"), small
            )
        finally:
            cpu_kernel.disable()
        assert (
            "gsc_jax_row_statistics" not in jitted.lower(jnp.zeros((2, 300), jnp.float32)).as_text()
        )


@requires_compiler
@pytest.mark.parametrize("num_classes", (10, 300))
def test_the_kernel_keeps_the_integer_label_rule(num_classes, enabled):
    # Invalid ids (outside [-n, n), or naming a masked-out class) make their rows NaN, value and
    # whole gradient row, as on the XLA path; -1 is class n - 1.
    logits = 3.0 * jax.random.normal(jax.random.key(0), (5, num_classes))
    labels = jnp.array([-1, num_classes, -num_classes - 1, 2, 0])
    where = jnp.ones(logits.shape, bool).at[3, 2].set(False)

    def value_and_grad(z):
        def total(z):
            value = gsc_jax.gsc_loss(z, labels, gamma=0.5, top_c=3, where=where)
            return value.sum(), value

        (_, value), grad = jax.value_and_grad(total, has_aux=True)(z)
        return value, grad

    value, grad = map(np.asarray, jax.jit(value_and_grad)(logits))
    assert np.isnan(value[1:4]).all() and np.isfinite(grad).all()
    assert np.isfinite(value[[0, 4]]).all() and np.isfinite(grad[[0, 4]]).all()
    cpu_kernel.disable()
    xla_value, xla_grad = jax.jit(value_and_grad)(logits)
    np.testing.assert_allclose(value, xla_value, rtol=1e-6)
    np.testing.assert_allclose(grad, xla_grad, rtol=1e-5, atol=1e-7)


@requires_compiler
def test_second_derivatives_through_the_kernel_name_the_reference(enabled):
    logits = jax.random.normal(jax.random.key(0), (3, 300))
    loss = lambda z: gsc_jax.gsc_loss(z, jnp.arange(3), gamma=0.5, top_c=2).sum()  # noqa: E731
    assert _uses_kernel(jax.grad(loss), logits)
    with pytest.raises(NotImplementedError, match='implementation="reference"'):
        jax.jit(jax.hessian(loss))(logits)


# The build, on a small source that compiles in a fraction of a second.
SMALL_SOURCE = 'extern "C" int gsc_probe() { return 7; }\n'


@pytest.fixture
def small_source(tmp_path):
    path = tmp_path / "probe.cc"
    path.write_text(SMALL_SOURCE)
    return str(path)


def _write_script(path, body):
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


@requires_compiler
def test_a_cached_library_that_does_not_load_is_rebuilt(small_source, tmp_path):
    # Empty (an interrupted copy) and corrupt; separate directories, as a process never loads
    # the same path twice.
    for i, content in enumerate((b"", b"not a shared library" * 100)):
        cache = tmp_path / f"cache{i}"
        cache.mkdir(mode=0o755)
        library = _build.library_path(str(cache), COMPILER, source=small_source)
        assert os.path.dirname(library) == str(cache)
        with open(library, "wb") as f:
            f.write(content)
        handle = _build.load(source=small_source, cache_dir=str(cache), symbols=("gsc_probe",))
        assert handle.gsc_probe() == 7
        assert os.path.getsize(library) > len(content)
        assert os.listdir(cache) == [os.path.basename(library)]


@requires_compiler
def test_the_library_has_mode_0644(small_source, tmp_path):
    old_umask = os.umask(0o077)  # the mode must not depend on the user's umask
    try:
        _build.load(source=small_source, cache_dir=str(tmp_path / "cache"))
    finally:
        os.umask(old_umask)
    (library,) = os.listdir(tmp_path / "cache")
    assert library.endswith(".so")
    assert stat.S_IMODE(os.stat(tmp_path / "cache" / library).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "cache").st_mode) == 0o755


@pytest.mark.parametrize("mode", (0o777, 0o775, 0o757))
def test_a_cache_directory_others_can_write_is_refused(tmp_path, mode):
    cache = tmp_path / "shared"
    cache.mkdir()
    cache.chmod(mode)
    with pytest.raises(_build.BuildError, match=f"{cache}.*writable by other users.*chmod go-w"):
        _build.prepare_cache_dir(str(cache))
    cache.chmod(0o755)
    assert _build.prepare_cache_dir(str(cache)) == str(cache)


@requires_compiler
def test_enable_refuses_an_unsafe_cache_directory(tmp_path):
    cache = tmp_path / "shared"
    cache.mkdir()
    cache.chmod(0o777)
    with pytest.raises(cpu_kernel.BuildError, match="writable by other users"):
        cpu_kernel.enable(cache_dir=str(cache))
    assert not cpu_kernel.is_enabled()
    assert os.listdir(cache) == []


FAILING_COMPILER = """
    import sys, time
    output = sys.argv[sys.argv.index("-o") + 1]
    with open(output, "wb") as f:
        f.write(b"half a library")
    if "{how}" == "sleep":
        time.sleep(60)
    sys.exit("error: something went wrong")
"""


@pytest.mark.parametrize("how", ("fail", "sleep"))
def test_a_failed_or_timed_out_build_leaves_no_partial_file(tmp_path, how):
    compiler = _write_script(tmp_path / "fake-c++", FAILING_COMPILER.replace("{how}", how))
    cache = tmp_path / "cache"
    cache.mkdir()
    library = str(cache / "row_kernels_0.so")
    message = "something went wrong" if how == "fail" else "did not finish within 1 s"
    with pytest.raises(_build.BuildError, match=message):
        _build.build(str(tmp_path / "x.cc"), library, [compiler], timeout_s=1)
    assert os.listdir(cache) == []


def test_an_interrupted_build_leaves_no_partial_file(tmp_path, monkeypatch):
    def interrupted(command, **kwargs):
        with open(command[command.index("-o") + 1], "wb") as f:
            f.write(b"half a library")
        raise KeyboardInterrupt

    monkeypatch.setattr(_build.subprocess, "run", interrupted)
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(KeyboardInterrupt):
        _build.build(str(tmp_path / "x.cc"), str(cache / "row_kernels_0.so"), ["c++"], 10)
    assert os.listdir(cache) == []


def test_the_cache_key_follows_the_resolved_target(tmp_path, monkeypatch):
    args = (b"source", ["c++", "-O3", "-march=native"])
    assert _build.cache_key(*args, "-march= znver3", "0.10.2") != _build.cache_key(
        *args, "-march= skylake-avx512", "0.10.2"
    )
    assert _build.cache_key(*args, "-march= znver3", "0.10.2") == _build.cache_key(
        *args, "-march= znver3", "0.10.2"
    )
    assert _build.cache_key(*args, "-march= znver3", "0.10.2") != _build.cache_key(
        b"other source", args[1], "-march= znver3", "0.10.2"
    )
    source = tmp_path / "probe.cc"
    source.write_text(SMALL_SOURCE)
    paths = []
    for target in ("-march= znver3", "-march= skylake-avx512"):
        monkeypatch.setattr(_build, "native_target", lambda compiler, timeout_s=0, t=target: t)
        paths.append(_build.library_path(str(tmp_path), ["c++"], source=str(source)))
    assert paths[0] != paths[1]


@requires_compiler
def test_the_native_target_is_what_the_compiler_resolves():
    target = _build.native_target(COMPILER)
    assert "-march=" in target or "-target-cpu" in target, target[:2000]  # GCC or Clang
    assert _build.native_target(COMPILER) == target  # the same machine: the same key


FAKE_CCACHE = """
    import os, sys
    with open(os.environ["GSC_TEST_WRAPPER_LOG"], "a") as log:
        log.write(" ".join(sys.argv[1:]) + "\\n")
    os.execvp(sys.argv[1], sys.argv[1:])
"""


@requires_compiler
def test_cxx_may_be_a_command_with_arguments(small_source, tmp_path, monkeypatch):
    # CXX="ccache g++": a launcher and the compiler, split like a shell command line.
    wrapper = _write_script(tmp_path / "fake ccache", FAKE_CCACHE)
    log = tmp_path / "log"
    monkeypatch.setenv("GSC_TEST_WRAPPER_LOG", str(log))
    monkeypatch.setenv("CXX", f"{shlex.quote(wrapper)} {shlex.join(COMPILER)}")
    assert _build.compiler_command() == [wrapper, *COMPILER]
    handle = _build.load(
        source=small_source, cache_dir=str(tmp_path / "cache"), symbols=("gsc_probe",)
    )
    assert handle.gsc_probe() == 7
    calls = log.read_text().splitlines()
    assert any("-march=native" in call and small_source in call for call in calls), calls


def test_no_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(cpu_kernel.BuildError, match="no C.. compiler: 'c..' .* not on PATH"):
        cpu_kernel.enable(cache_dir=str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "clang++-nowhere -O2")
    with pytest.raises(cpu_kernel.BuildError, match="'clang..-nowhere' .*CXX="):
        cpu_kernel.enable(cache_dir=str(tmp_path / "cache"))
    assert not cpu_kernel.is_enabled()
    assert not os.path.exists(tmp_path / "cache")
