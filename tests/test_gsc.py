"""Tests of the GSC term, gsc_loss and with_gsc against the paper and independent formulas.

Each check runs on both implementations (``implementation=None``, the fused default, and
``"reference"``, plain autodiff) where it applies to both.
"""

import functools
import math

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

import gsc_jax
from experiments import table8


def numpy_gsc(logits, top_c, mu=0.0, normalize_entropy=True):
    """Independent float64 NumPy GSC term on the last axis (no masking)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.sum(np.where(p > 0, p * np.log(p), 0.0), -1)
    sigma = entropy / math.log(z.shape[-1]) if normalize_entropy else entropy
    top = -np.sort(-p, -1)[..., :top_c]
    return (2 * np.pi * sigma**2) ** (-top_c / 2) * np.exp(
        -np.sum((top - mu) ** 2, -1) / (2 * sigma**2)
    )


class PaperTable8Test(parameterized.TestCase):
    """Appendix 6.2, Table 8: binary scores, sigma = entropy in nats, top_c = 2."""

    def test_f_and_h_columns_match_to_three_decimals(self):
        rows = table8.table8_rows()
        for i, row in enumerate(rows):
            self.assertAlmostEqual(row["H"], table8.PAPER_COLUMNS["H"][i], delta=5e-4)
            self.assertAlmostEqual(row["H'"], table8.PAPER_COLUMNS["H'"][i], delta=5e-4)
            self.assertAlmostEqual(row["f"], table8.PAPER_COLUMNS["f"][i], delta=5e-4)

    def test_printed_derivative_is_eq12_not_the_derivative_of_eq13(self):
        for i, row in enumerate(table8.table8_rows()):
            p, f, sigma = row["p"], row["f"], row["H"]
            # The printed f' column is the paper's Eq. 12, f (1 - p) / sigma^2 ...
            self.assertAlmostEqual(
                row["f' paper Eq. 12"], table8.PAPER_COLUMNS["f'"][i], delta=5e-4
            )
            # ... while d f / d p of Eq. 13 with sigma fixed is f (1 - 2p) / sigma^2.
            exact = f * (1 - 2 * p) / sigma**2
            self.assertAlmostEqual(row["f' exact, sigma fixed"], exact, delta=1e-5)
            if p > 0.5:
                self.assertGreater(abs(row["f' exact, sigma fixed"] - row["f' paper Eq. 12"]), 0.1)

    def test_binary_value_is_equation_13(self):
        for p in (0.5, 0.62, 0.9):
            entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
            eq13 = math.exp(-(2 * p * p - 2 * p + 1) / (2 * entropy**2)) / (
                2 * math.pi * entropy**2
            )
            self.assertAlmostEqual(float(table8.binary_gsc(jnp.float32(p))), eq13, delta=1e-6)


class GscTermTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        self.logits = jax.random.normal(jax.random.key(42), (6, 10)) * 2.0

    @chex.variants(with_jit=True, without_jit=True)
    def test_uniform_scores_ten_classes(self):
        value = self.variant(lambda z: gsc_jax.gsc_term(z, top_c=2))(jnp.zeros((3, 10)))
        np.testing.assert_allclose(value, np.exp(-0.01) / (2 * np.pi), rtol=1e-6)
        np.testing.assert_allclose(value, 0.157571, atol=5e-7)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(
        top_c=(1, 2, 5, 10),
        mu=(0.0, 0.3),
        normalize_entropy=(True, False),
        implementation=(None, "reference"),
    )
    def test_matches_numpy_reference(self, top_c, mu, normalize_entropy, implementation):
        fn = self.variant(
            lambda z: gsc_jax.gsc_term(
                z,
                top_c=top_c,
                mu=mu,
                normalize_entropy=normalize_entropy,
                implementation=implementation,
            )
        )
        expected = numpy_gsc(self.logits, top_c, mu, normalize_entropy)
        np.testing.assert_allclose(fn(self.logits), expected, rtol=2e-5, atol=1e-7)

    def test_invariant_to_class_permutation_and_logit_shift(self):
        base = gsc_jax.gsc_term(self.logits, top_c=3)
        permuted = self.logits[:, jax.random.permutation(jax.random.key(1), 10)]
        np.testing.assert_allclose(gsc_jax.gsc_term(permuted, top_c=3), base, rtol=1e-5)
        np.testing.assert_allclose(gsc_jax.gsc_term(self.logits + 7.5, top_c=3), base, rtol=1e-5)

    def test_gsc_part_of_the_loss_does_not_depend_on_labels(self):
        labels_a = jnp.arange(6) % 10
        labels_b = (jnp.arange(6) * 7 + 3) % 10
        for labels in (labels_a, labels_b):
            loss = gsc_jax.gsc_loss(self.logits, labels, gamma=0.7, top_c=2)
            ce = gsc_jax.cross_entropy(self.logits, labels)
            np.testing.assert_allclose(
                loss - ce, 0.7 * gsc_jax.gsc_term(self.logits, top_c=2), rtol=1e-5, atol=1e-7
            )

    @parameterized.parameters(0, 1, 2)
    def test_axis(self, axis):
        logits = jax.random.normal(jax.random.key(3), (4, 5, 6))
        moved = jnp.moveaxis(logits, axis, -1)
        np.testing.assert_allclose(
            gsc_jax.gsc_term(logits, top_c=2, axis=axis),
            gsc_jax.gsc_term(moved, top_c=2),
            rtol=1e-6,
        )

    @parameterized.parameters(None, "reference")
    def test_mask_equals_dropping_the_masked_classes(self, implementation):
        keep = np.array([True, False, True, True, False, True, True, True, True, False])
        where = jnp.broadcast_to(keep, self.logits.shape)
        term = functools.partial(gsc_jax.gsc_term, top_c=3, implementation=implementation)
        masked = term(self.logits, where=where)
        dropped = term(self.logits[:, keep])
        np.testing.assert_allclose(masked, dropped, rtol=1e-5)
        grads = jax.jit(jax.grad(lambda z: term(z, where=where).sum()))(self.logits)
        chex.assert_tree_all_finite(grads)
        np.testing.assert_array_equal(grads[:, ~keep], 0.0)

    @parameterized.parameters(None, "reference")
    def test_rows_with_fewer_than_two_classes_give_zero(self, implementation):
        where = jnp.array([[True, False, False], [False, False, False], [True, True, False]])
        logits = jnp.array([[1.0, 2.0, 3.0]] * 3)
        value, grads = jax.value_and_grad(
            lambda z: gsc_jax.gsc_term(z, top_c=1, where=where, implementation=implementation).sum()
        )(logits)
        expected_last = numpy_gsc(np.array([[1.0, 2.0]]), 1)[0]
        np.testing.assert_allclose(value, expected_last, rtol=1e-5)
        chex.assert_tree_all_finite(grads)

    @parameterized.product(
        stop_gradient_sigma=(True, False),
        normalize_entropy=(True, False),
        top_c=(1, 2, 4),
        implementation=(None, "reference"),
    )
    def test_finite_for_extreme_inputs(
        self, stop_gradient_sigma, normalize_entropy, top_c, implementation
    ):
        rows = jnp.array(
            [
                [1e4, -1e4, 0.0, 3.0, -2.0],
                [5.0, 5.0, 5.0, 5.0, 5.0],
                [1e4, 1e4, -1e4, 0.0, 1.0],
                [80.0, 0.0, 0.0, 0.0, 0.0],
                [-1e4, -1e4, -1e4, -1e4, 1e4],
            ]
        )
        where = jnp.array(
            [[True] * 5, [True] * 5, [True, True, False, True, True]] + [[True] * 5] * 2
        )

        def total(z):
            return gsc_jax.gsc_term(
                z,
                top_c=top_c,
                stop_gradient_sigma=stop_gradient_sigma,
                normalize_entropy=normalize_entropy,
                where=where,
                implementation=implementation,
            ).sum()

        value, grads = jax.value_and_grad(total)(rows)
        chex.assert_tree_all_finite((value, grads))

    @parameterized.parameters(None, "reference")
    def test_dtypes(self, implementation):
        bf16 = gsc_jax.gsc_term(
            self.logits.astype(jnp.bfloat16), top_c=2, implementation=implementation
        )
        self.assertEqual(bf16.dtype, jnp.float32)
        fp16 = gsc_jax.gsc_loss(
            self.logits.astype(jnp.float16),
            jnp.zeros(6, int),
            gamma=1.0,
            top_c=2,
            implementation=implementation,
        )
        self.assertEqual(fp16.dtype, jnp.float32)
        with jax.enable_x64(True):
            value = gsc_jax.gsc_term(
                jnp.asarray(np.asarray(self.logits), jnp.float64),
                top_c=2,
                implementation=implementation,
            )
            self.assertEqual(value.dtype, jnp.float64)


class GscGradientTest(parameterized.TestCase):
    """Autodiff gradients against central finite differences in float64."""

    @parameterized.product(
        stop_gradient_sigma=(False, True),
        normalize_entropy=(True, False),
        top_c=(1, 2, 3),
        implementation=(None, "reference"),
    )
    def test_gradient_matches_finite_differences(
        self, stop_gradient_sigma, normalize_entropy, top_c, implementation
    ):
        with jax.enable_x64(True):
            logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 6)) * 1.5, jnp.float64)
            sigma_ref = gsc_jax.softmax_entropy(logits, normalize=normalize_entropy)

            def total(z):
                if not stop_gradient_sigma:
                    return gsc_jax.gsc_term(
                        z, top_c=top_c, normalize_entropy=normalize_entropy
                    ).sum()
                # Finite differences of the same function with sigma frozen at its value.
                return _gsc_with_fixed_sigma(z, sigma_ref, top_c).sum()

            autodiff = jax.grad(
                lambda z: gsc_jax.gsc_term(
                    z,
                    top_c=top_c,
                    normalize_entropy=normalize_entropy,
                    stop_gradient_sigma=stop_gradient_sigma,
                    implementation=implementation,
                ).sum()
            )(logits)
            step = 1e-6
            deltas = step * jnp.eye(logits.size, dtype=logits.dtype).reshape(-1, *logits.shape)
            central = jax.jit(
                jax.vmap(lambda d: (total(logits + d) - total(logits - d)) / (2 * step))
            )
            numeric = central(deltas).reshape(logits.shape)
            np.testing.assert_allclose(autodiff, numeric, rtol=1e-6, atol=1e-9)

    def test_binary_sigma_fixed_derivative_is_f_times_one_minus_two_p(self):
        with jax.enable_x64(True):
            for p in (0.55, 0.7, 0.9):
                p = jnp.float64(p)
                grad = jax.grad(lambda q: table8.binary_gsc(q, stop_gradient_sigma=True))(p)
                f = table8.binary_gsc(p)
                sigma = -(p * jnp.log(p) + (1 - p) * jnp.log1p(-p))
                np.testing.assert_allclose(grad, f * (1 - 2 * p) / sigma**2, rtol=1e-10)
                step = 1e-6

                def sigma_fixed(q):
                    return (2 * np.pi * sigma**2) ** -1 * jnp.exp(
                        -(q**2 + (1 - q) ** 2) / (2 * sigma**2)
                    )

                numeric = (sigma_fixed(p + step) - sigma_fixed(p - step)) / (2 * step)
                np.testing.assert_allclose(grad, numeric, rtol=1e-7)


def test_reference_supports_second_derivatives_and_agrees_with_the_fused_gradient():
    with jax.enable_x64(True):
        logits = jnp.asarray(np.random.default_rng(4).normal(size=(2, 6)), jnp.float64)
        reference = lambda z: gsc_jax.gsc_term(z, top_c=2, implementation="reference").sum()  # noqa: E731
        fused_grad = jax.jit(
            jax.grad(lambda z: gsc_jax.gsc_term(z, top_c=2, implementation="fused").sum())
        )
        hessian = jax.jit(jax.hessian(reference))(logits)
        assert hessian.shape == 2 * logits.shape and np.isfinite(hessian).all()
        np.testing.assert_allclose(
            fused_grad(logits), jax.jit(jax.grad(reference))(logits), rtol=1e-10, atol=1e-14
        )
        # A column of the Hessian against central differences of the fused gradient.
        step = 1e-5
        direction = jnp.zeros_like(logits).at[0, 1].set(1.0)
        numeric = (
            fused_grad(logits + step * direction) - fused_grad(logits - step * direction)
        ) / (2 * step)
        np.testing.assert_allclose(hessian[:, :, 0, 1], numeric, rtol=1e-6, atol=1e-9)


def _gsc_with_fixed_sigma(logits, sigma, top_c):
    probs = jax.nn.softmax(logits, axis=-1)
    top, _ = jax.lax.top_k(probs, top_c)
    return (2 * np.pi * sigma**2) ** (-top_c / 2) * jnp.exp(-jnp.sum(top**2, -1) / (2 * sigma**2))


class WithGscTest(parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.logits = jax.random.normal(jax.random.key(7), (5, 8)) * 2.0
        self.labels = jnp.array([0, 3, 7, 1, 1])

    @parameterized.named_parameters(
        ("ce", gsc_jax.cross_entropy, {}),
        ("ls", gsc_jax.label_smoothing_cross_entropy, {"alpha": 0.1}),
        ("focal", gsc_jax.focal_loss, {"eta": 2.0}),
        ("entropy", gsc_jax.entropy_regularized_cross_entropy, {"entropy_weight": 0.02}),
        ("ols", gsc_jax.online_label_smoothing_loss, {"soft_labels": jnp.full((8, 8), 1 / 8)}),
    )
    def test_gamma_zero_is_the_base_loss_and_gamma_adds_the_term(self, base_loss, kwargs):
        base = base_loss(self.logits, self.labels, **kwargs)
        wrapped0 = gsc_jax.with_gsc(base_loss, gamma=0.0, top_c=2)(
            self.logits, self.labels, **kwargs
        )
        np.testing.assert_allclose(wrapped0, base, rtol=1e-6)
        wrapped = gsc_jax.with_gsc(base_loss, gamma=0.3, top_c=3)
        value = jax.jit(lambda z: wrapped(z, self.labels, **kwargs))(self.logits)
        np.testing.assert_allclose(
            value, base + 0.3 * gsc_jax.gsc_term(self.logits, top_c=3), rtol=1e-5, atol=1e-7
        )

    def test_user_loss_and_axis_where_are_forwarded(self):
        def my_loss(logits, labels, *, axis=-1, where=None):
            del labels, where
            return jnp.sum(logits**2, axis=axis)

        where = jnp.ones(self.logits.T.shape, bool).at[2].set(False)
        wrapped = gsc_jax.with_gsc(my_loss, gamma=1.0, top_c=2)
        value = wrapped(self.logits.T, self.labels, axis=0, where=where)
        expected = jnp.sum(self.logits**2, axis=1) + gsc_jax.gsc_term(
            self.logits.T, top_c=2, axis=0, where=where
        )
        np.testing.assert_allclose(value, expected, rtol=1e-6)

    def test_gsc_loss_soft_labels_equal_integer_labels(self):
        soft = jax.nn.one_hot(self.labels, 8)
        np.testing.assert_allclose(
            gsc_jax.gsc_loss(self.logits, soft, gamma=0.05, top_c=2),
            gsc_jax.gsc_loss(self.logits, self.labels, gamma=0.05, top_c=2),
            rtol=1e-6,
        )

    def test_traced_gamma(self):
        grad = jax.grad(
            lambda g: gsc_jax.gsc_loss(self.logits, self.labels, gamma=g, top_c=2).sum()
        )(0.1)
        np.testing.assert_allclose(grad, gsc_jax.gsc_term(self.logits, top_c=2).sum(), rtol=1e-5)


class BadInputTest(parameterized.TestCase):
    logits = jnp.zeros((4, 5))
    labels = jnp.zeros(4, jnp.int32)

    @parameterized.parameters(0, 6, -1, 2.0)
    def test_top_c_out_of_range(self, top_c):
        with self.assertRaisesRegex(ValueError, "top_c"):
            gsc_jax.gsc_term(self.logits, top_c=top_c)
        with self.assertRaisesRegex(ValueError, "top_c"):
            jax.jit(lambda z: gsc_jax.gsc_loss(z, self.labels, gamma=0.1, top_c=top_c))(self.logits)

    def test_negative_gamma(self):
        with self.assertRaisesRegex(ValueError, "gamma"):
            gsc_jax.gsc_loss(self.logits, self.labels, gamma=-0.1, top_c=2)
        with self.assertRaisesRegex(ValueError, "gamma"):
            gsc_jax.with_gsc(gsc_jax.cross_entropy, gamma=-1.0, top_c=2)

    @parameterized.parameters(((3,),), ((4, 1),), ((5,),), ((4, 6),))
    def test_labels_of_neither_form(self, shape):
        with self.assertRaisesRegex(ValueError, "labels"):
            gsc_jax.gsc_loss(self.logits, jnp.zeros(shape, jnp.int32), gamma=0.1, top_c=2)

    def test_labels_wrong_dtype(self):
        with self.assertRaisesRegex(TypeError, "labels"):
            gsc_jax.gsc_loss(self.logits, jnp.zeros(4), gamma=0.1, top_c=2)

    def test_unknown_implementation(self):
        for bad in ("autodiff", "FUSED", 0):
            with self.assertRaisesRegex(ValueError, "`implementation` must be"):
                gsc_jax.gsc_term(self.logits, implementation=bad)
            with self.assertRaisesRegex(ValueError, "`implementation` must be"):
                gsc_jax.gsc_loss(self.logits, self.labels, gamma=0.1, top_c=2, implementation=bad)
            with self.assertRaisesRegex(ValueError, "`implementation` must be"):
                gsc_jax.with_gsc(gsc_jax.cross_entropy, gamma=0.1, top_c=2, implementation=bad)

    def test_fewer_than_two_classes(self):
        with self.assertRaisesRegex(ValueError, "at least 2 classes"):
            gsc_jax.gsc_term(jnp.zeros((4, 1)), top_c=1)

    def test_integer_logits_and_bad_mask(self):
        with self.assertRaisesRegex(TypeError, "logits"):
            gsc_jax.gsc_term(jnp.zeros((4, 5), jnp.int32))
        with self.assertRaisesRegex(ValueError, "where"):
            gsc_jax.gsc_term(self.logits, where=jnp.ones((4,), bool))
        with self.assertRaisesRegex(ValueError, "axis"):
            gsc_jax.gsc_term(self.logits, axis=(0, 1))


@functools.partial(jax.jit, static_argnames=("top_c", "normalize_entropy", "implementation"))
def _value_and_grads(logits, top_c, normalize_entropy, implementation):
    def fn(z):
        return gsc_jax.gsc_term(
            z, top_c=top_c, normalize_entropy=normalize_entropy, implementation=implementation
        )

    grads = jax.grad(lambda z: fn(z).sum())(logits)
    return fn(logits), grads, fn(logits[:, ::-1])


@hypothesis.settings(deadline=None, max_examples=30)
@hypothesis.given(
    data=st.data(),
    num_classes=st.sampled_from([2, 5, 12]),
    normalize_entropy=st.booleans(),
    implementation=st.sampled_from((None, "reference")),
)
def test_property_finite_nonnegative_and_permutation_invariant(
    data, num_classes, normalize_entropy, implementation
):
    logits = data.draw(
        hnp.arrays(np.float32, (4, num_classes), elements=st.floats(-1e4, 1e4, width=32))
    )
    top_c = data.draw(st.sampled_from(sorted({1, 2, num_classes})))
    value, grads, flipped = _value_and_grads(
        jnp.asarray(logits), top_c, normalize_entropy, implementation
    )
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grads))
    assert np.all(value >= 0)
    np.testing.assert_allclose(flipped, value, rtol=1e-4, atol=1e-30)


def test_module_cli_prints_table8(capsys):
    print(table8.table8_markdown())
    out = capsys.readouterr().out
    assert "| (0.90, 0.10) | 0.325 [0.325]" in out


def test_docstring_examples_run():
    import doctest

    from gsc_jax import _gsc

    result = doctest.testmod(_gsc, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 1 and result.failed == 0
