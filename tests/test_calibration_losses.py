"""FLSD-53, MbLS, MDCA, DCA, MMCE against NumPy ports of their reference code; GSC composition."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import gsc_jax

pytestmark = pytest.mark.usefixtures("fast_compile")


# NumPy ports of the reference implementations (float64), each returning the scalar training
# objective the reference returns for a batch.


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_ce(z, y):
    return -np_log_softmax(z)[np.arange(len(y)), y]


def np_flsd53(z, y, gamma=3.0):
    """torrvision/focal_calibration Losses/focal_loss_adaptive_gamma.py, averaged."""
    logpt = np_log_softmax(z)[np.arange(len(y)), y]
    pt = np.exp(logpt)
    gamma_dic = {0.2: 5.0, 0.5: 3.0}
    gammas = []
    for p in pt:
        if p >= 0.5:
            gammas.append(gamma)
            continue
        for key in sorted(gamma_dic):
            if p < key:
                gammas.append(gamma_dic[key])
                break
    return np.mean(-((1 - pt) ** np.array(gammas)) * logpt)


def np_mbls(z, y, margin=10.0, alpha=0.1):
    """by-liu/MbLS calibrate/losses/logit_margin_l1.py (LogitMarginL1)."""
    diff = z.max(1, keepdims=True) - z
    return np_ce(z, y).mean() + alpha * np.maximum(diff - margin, 0).mean()


def np_mdca(z, y, beta=1.0):
    """mdca-loss/MDCA-Calibration solvers/loss.py (MDCA, ClassficationAndMDCA with NLL)."""
    p = np.exp(np_log_softmax(z))
    loss = 0.0
    for c in range(p.shape[1]):
        loss += abs(p[:, c].mean() - (y == c).astype(float).mean())
    return np_ce(z, y).mean() + beta * loss / p.shape[1]


def np_dca(z, y, beta=1.0):
    """mdca-loss/MDCA-Calibration solvers/loss.py (DCA)."""
    p = np.exp(np_log_softmax(z))
    conf, pred = p.max(1), p.argmax(1)
    return np_ce(z, y).mean() + beta * abs(conf.mean() - (pred == y).astype(float).mean())


def _np_kernel(a, b):
    return np.exp(-np.abs(a[:, None] - b[None, :]) / 0.4)


def np_mmce(z, y, beta):
    """torrvision/focal_calibration Losses/mmce.py (MMCE), CE + beta * MMCE_m."""
    p = np.exp(np_log_softmax(z))
    r, pred = p.max(1), p.argmax(1)
    c_minus_r = (pred == y).astype(float) - r
    numerator = np.outer(c_minus_r, c_minus_r) * _np_kernel(r, r)
    return np_ce(z, y).mean() + beta * numerator.sum() / len(y) ** 2


def np_mmce_weighted(z, y, beta):
    """aviralkumar2907/MMCE 20ng_mmce.py calibration_mmce_w_loss (focal_calibration port)."""
    p = np.exp(np_log_softmax(z))
    r, pred = p.max(1), p.argmax(1)
    correct = (pred == y).astype(float)
    k, k_p = int(correct.sum()), int((1 - correct).sum())
    cond = int(k != 0 and k_p != 0)
    if not cond:
        k, k_p = 2, len(y) - 2
    correct_prob = np.sort(r * correct)[::-1][:k]
    incorrect_prob = np.sort(r * (1 - correct))[::-1][:k_p]
    cc = np.mean(
        _np_kernel(correct_prob, correct_prob) * np.outer(1 - correct_prob, 1 - correct_prob)
    )
    ii = np.mean(
        _np_kernel(incorrect_prob, incorrect_prob) * np.outer(incorrect_prob, incorrect_prob)
    )
    ci = np.mean(
        _np_kernel(correct_prob, incorrect_prob) * np.outer(1 - correct_prob, incorrect_prob)
    )
    m, n = correct.sum(), (1 - correct).sum()
    mmd = cc / (m * m + 1e-5) + ii / (n * n + 1e-5) - 2 * ci / (m * n + 1e-5)
    return np_ce(z, y).mean() + beta * max(cond * np.sqrt(mmd + 1e-10), 0.0)


def _losses():
    """``(name, jax loss with its hyper-parameters, NumPy reference objective)``."""
    return (
        ("flsd53", gsc_jax.adaptive_focal_loss, np_flsd53),
        (
            "mbls",
            lambda z, y, **kw: gsc_jax.margin_label_smoothing_loss(z, y, margin=2.0, **kw),
            lambda z, y: np_mbls(z, y, margin=2.0),
        ),
        (
            "mdca",
            lambda z, y, **kw: gsc_jax.mdca_loss(z, y, beta=3.0, **kw),
            lambda z, y: np_mdca(z, y, beta=3.0),
        ),
        (
            "dca",
            lambda z, y, **kw: gsc_jax.dca_loss(z, y, beta=2.0, **kw),
            lambda z, y: np_dca(z, y, beta=2.0),
        ),
        (
            "mmce",
            lambda z, y, **kw: gsc_jax.mmce_loss(z, y, beta=2.0, weighted=False, **kw),
            lambda z, y: np_mmce(z, y, beta=2.0),
        ),
        (
            "mmce_weighted",
            lambda z, y, **kw: gsc_jax.mmce_loss(z, y, beta=4.0, **kw),
            lambda z, y: np_mmce_weighted(z, y, beta=4.0),
        ),
    )


BATCH_LEVEL = ("mdca", "dca", "mmce", "mmce_weighted")


def _batch(seed=0, shape=(10, 4), scale=2.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=shape) * scale
    labels = rng.integers(0, shape[-1], shape[:-1])
    # Half of the examples labelled with their argmax: both correct and incorrect ones.
    labels.reshape(-1)[::2] = logits.reshape(-1, shape[-1]).argmax(-1)[::2]
    return logits, labels


def _value_and_grad(fn, logits, labels, **kwargs):
    def total(z):
        value = fn(z, labels, **kwargs)
        return value.sum(), value

    (_, value), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(jnp.asarray(logits))
    return np.asarray(value), np.asarray(grad)


class AgainstReferenceTest(parameterized.TestCase):
    @parameterized.named_parameters(*_losses())
    def test_batch_mean_is_the_reference_objective(self, fn, reference):
        for seed in range(3):
            logits, labels = _batch(seed)
            value = jax.jit(fn)(logits.astype(np.float32), labels)
            np.testing.assert_allclose(
                np.mean(value),
                reference(logits.astype(np.float32).astype(np.float64), labels),
                rtol=2e-5,
            )

    @parameterized.named_parameters(*_losses())
    def test_gradient_of_the_mean_matches_finite_differences_of_the_reference(self, fn, reference):
        logits, labels = _batch(1, (8, 4))
        with jax.enable_x64(True):
            grad = np.asarray(
                jax.grad(lambda z: jnp.mean(fn(z, labels)))(jnp.asarray(logits, jnp.float64))
            )
        step = 1e-6
        expected = np.zeros_like(logits)
        for index in np.ndindex(logits.shape):
            plus, minus = logits.copy(), logits.copy()
            plus[index] += step
            minus[index] -= step
            expected[index] = (reference(plus, labels) - reference(minus, labels)) / (2 * step)
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-8)

    @parameterized.named_parameters(*_losses())
    def test_float64_stays_float64(self, fn, reference):
        del reference
        logits, labels = _batch(2)
        with jax.enable_x64(True):
            value = fn(jnp.asarray(logits, jnp.float64), labels)
            self.assertEqual(value.dtype, jnp.float64)
        self.assertEqual(fn(logits.astype(np.float16), labels).dtype, jnp.float32)

    @parameterized.named_parameters(*_losses())
    def test_large_finite_logits_give_finite_values_and_gradients(self, fn, reference):
        del reference
        logits = np.array(
            [
                [1e4, -1e4, 0.0, 3.0],
                [-1e4, 1e4, 1e4, -1e4],
                [0.0, 0.0, 0.0, 0.0],
                [1e4, 1e4, -1e4, 0.0],
            ],
            np.float32,
        )
        value, grad = _value_and_grad(fn, logits, np.array([0, 0, 3, 1]))
        chex.assert_tree_all_finite((value, grad))

    @parameterized.named_parameters(*_losses())
    def test_class_axis_and_extra_batch_axes(self, fn, reference):
        del reference
        logits, labels = _batch(3, (2, 5, 4))
        flat = fn(logits.reshape(10, 4), labels.reshape(10))
        np.testing.assert_allclose(fn(logits, labels).reshape(10), flat, rtol=1e-6)
        moved = fn(np.moveaxis(logits, -1, 1), labels, axis=1)
        np.testing.assert_allclose(moved.reshape(10), flat, rtol=1e-6)


class FormulaDetailsTest(parameterized.TestCase):
    def test_flsd53_is_focal_loss_with_the_chosen_eta(self):
        logits, labels = _batch(4, (12, 5))
        p_y = np.exp(np_log_softmax(logits))[np.arange(12), labels]
        self.assertTrue((p_y < 0.2).any() and (p_y >= 0.2).any())
        focal5 = gsc_jax.focal_loss(logits, labels, eta=5.0)
        focal3 = gsc_jax.focal_loss(logits, labels, eta=3.0)
        np.testing.assert_allclose(
            gsc_jax.adaptive_focal_loss(logits, labels),
            np.where(p_y < 0.2, focal5, focal3),
            rtol=1e-6,
        )
        # probability vectors: eta chosen per class from S_i; one-hot gives the same values
        np.testing.assert_allclose(
            gsc_jax.adaptive_focal_loss(logits, np.eye(5)[labels].astype(np.float32)),
            gsc_jax.adaptive_focal_loss(logits, labels),
            rtol=1e-6,
        )

    def test_mbls_penalty_is_a_mean_over_the_classes_taking_part(self):
        logits, labels = _batch(5, (6, 5), scale=6.0)
        per_example = gsc_jax.margin_label_smoothing_loss(logits, labels, margin=3.0, alpha=0.5)
        hinge = np.maximum(logits.max(1, keepdims=True) - logits - 3.0, 0).mean(1)
        self.assertTrue((hinge > 0).any())
        np.testing.assert_allclose(per_example, np_ce(logits, labels) + 0.5 * hinge, rtol=1e-5)
        where = np.ones((6, 5), bool)
        where[:, 4] = False
        labels4 = labels % 4
        np.testing.assert_allclose(
            gsc_jax.margin_label_smoothing_loss(
                logits, labels4, margin=3.0, alpha=0.5, where=where
            ),
            gsc_jax.margin_label_smoothing_loss(logits[:, :4], labels4, margin=3.0, alpha=0.5),
            rtol=1e-6,
        )

    def test_batch_penalty_is_the_same_for_every_example(self):
        logits, labels = _batch(6)
        ce = gsc_jax.cross_entropy(logits, labels)
        for fn in (gsc_jax.mdca_loss, gsc_jax.dca_loss, gsc_jax.mmce_loss):
            penalty = np.asarray(fn(logits, labels) - ce)
            self.assertGreater(penalty[0], 0)
            np.testing.assert_allclose(penalty, penalty[0], rtol=1e-5)
            np.testing.assert_allclose(fn(logits, labels, beta=0.0), ce, rtol=1e-6)

    def test_mdca_and_dca_soft_labels_match_one_hot(self):
        logits, labels = _batch(7)
        one_hot = np.eye(4)[labels].astype(np.float32)
        for fn in (gsc_jax.mdca_loss, gsc_jax.dca_loss):
            np.testing.assert_allclose(fn(logits, one_hot), fn(logits, labels), rtol=1e-6)

    def test_weighted_mmce_is_zero_when_all_correct_or_all_wrong(self):
        logits, _ = _batch(8)
        argmax = logits.argmax(-1)
        ce_right = gsc_jax.cross_entropy(logits, argmax)
        np.testing.assert_allclose(gsc_jax.mmce_loss(logits, argmax), ce_right, rtol=1e-6)
        np.testing.assert_allclose(
            np.mean(gsc_jax.mmce_loss(logits, argmax)),
            np_mmce_weighted(logits, argmax, 4.0),
            rtol=1e-5,
        )
        wrong = (argmax + 1) % 4
        np.testing.assert_allclose(
            gsc_jax.mmce_loss(logits, wrong), gsc_jax.cross_entropy(logits, wrong), rtol=1e-6
        )


class ExampleMaskTest(parameterized.TestCase):
    @parameterized.parameters(*BATCH_LEVEL)
    def test_masked_examples_give_zero_and_take_no_part(self, name):
        fn = dict((n, f) for n, f, _ in _losses())[name]
        logits, labels = _batch(9, (10, 4))
        mask = np.ones(10, bool)
        mask[[1, 6]] = False
        padded_logits, padded_labels = logits.copy(), labels.copy()
        padded_logits[1] = np.nan  # garbage in padding must not leak
        padded_labels[6] = 99
        value, grad = _value_and_grad(fn, padded_logits, padded_labels, example_mask=mask)
        assert np.all(value[~mask] == 0) and np.all(grad[~mask] == 0)
        alone_value, alone_grad = _value_and_grad(fn, logits[mask], labels[mask])
        np.testing.assert_allclose(value[mask], alone_value, rtol=1e-6)
        np.testing.assert_allclose(grad[mask], alone_grad, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(value.sum() / mask.sum(), alone_value.mean(), rtol=1e-6)

    def test_example_mask_checks(self):
        logits, labels = _batch(10)
        with self.assertRaisesRegex(ValueError, "example_mask"):
            gsc_jax.mdca_loss(logits, labels, example_mask=np.ones(9, bool))
        with self.assertRaisesRegex(TypeError, "example_mask"):
            gsc_jax.dca_loss(logits, labels, example_mask=np.ones(10, int))


class IntegerLabelRuleTest(parameterized.TestCase):
    """The rule of `gsc_jax.cross_entropy`; batch-level penalties leave invalid examples out."""

    logits = np.asarray(jax.random.normal(jax.random.key(3), (6, 4)) * 2.0)

    @parameterized.named_parameters(*_losses())
    def test_negative_ids_count_from_the_end(self, fn, reference):
        del reference
        labels = np.array([-1, -2, -3, -4, -1, -4])
        value, grad = _value_and_grad(fn, self.logits, labels)
        expected_value, expected_grad = _value_and_grad(fn, self.logits, labels + 4)
        np.testing.assert_allclose(value, expected_value, rtol=1e-6)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-8)

    @parameterized.named_parameters(*_losses())
    def test_ids_outside_the_range_give_nan_for_their_example_only(self, fn, reference):
        del reference
        labels = np.array([0, -5, 4, 100, -(2**31), 3])
        invalid = np.array([False, True, True, True, True, False])
        value, grad = _value_and_grad(fn, self.logits, labels)
        assert np.isnan(value[invalid]).all(), value
        assert np.isfinite(grad).all(), grad  # no derivative through an invalid label
        alone_value, alone_grad = _value_and_grad(fn, self.logits[~invalid], labels[~invalid])
        np.testing.assert_allclose(value[~invalid], alone_value, rtol=1e-6)
        # The gradient of the mean over the valid examples is that of the batch without the
        # invalid ones (the sum above counts the penalty once per row, NaN rows included).
        mean_grad = jax.grad(
            lambda z: jnp.sum(jnp.where(invalid, 0.0, fn(z, labels))) / (~invalid).sum()
        )(jnp.asarray(self.logits))
        alone_mean_grad = jax.grad(lambda z: fn(z, labels[~invalid]).mean())(
            jnp.asarray(self.logits[~invalid])
        )
        np.testing.assert_allclose(
            np.asarray(mean_grad)[~invalid], alone_mean_grad, rtol=1e-5, atol=1e-8
        )

    @parameterized.named_parameters(*_losses())
    def test_a_masked_out_label_gives_nan_and_a_row_without_classes_zero(self, fn, reference):
        del reference
        where = np.ones((6, 4), bool)
        where[0, 2] = False  # row 0's label
        where[1, 0] = False  # another class of row 1
        where[2] = False  # no class takes part
        labels = np.array([2, 3, 1, -2, 0, 1])
        value, grad = _value_and_grad(fn, self.logits, labels, where=where)
        assert np.isnan(value[0]) and np.isfinite(grad[0]).all()
        assert np.isfinite(value[[1, 3, 4, 5]]).all() and np.isfinite(grad[[1, 3, 4, 5]]).all()
        assert value[2] == 0.0 and np.all(grad[2] == 0.0)

    @parameterized.named_parameters(*_losses())
    def test_a_row_of_minus_infinity_logits_is_nan(self, fn, reference):
        del reference
        logits = self.logits.copy()
        logits[1] = -np.inf
        value, grad = _value_and_grad(fn, logits, np.array([0, 1, 2, 3, 0, 1]))
        assert np.isnan(value[1]) and np.isnan(grad[1]).all()


class WithGscTest(parameterized.TestCase):
    @parameterized.named_parameters(*_losses())
    def test_value_is_base_plus_gamma_gsc_and_jit_grad_work(self, fn, reference):
        del reference
        logits, labels = _batch(11)
        combined = gsc_jax.with_gsc(fn, gamma=0.3, top_c=2)
        expected = fn(logits, labels) + 0.3 * gsc_jax.gsc_term(logits, top_c=2)
        np.testing.assert_allclose(jax.jit(combined)(logits, labels), expected, rtol=1e-5)
        grad = jax.jit(jax.grad(lambda z: combined(z, labels).mean()))(jnp.asarray(logits))
        gsc_grad = jax.grad(lambda z: gsc_jax.gsc_term(z, top_c=2).mean())(jnp.asarray(logits))
        base_grad = jax.grad(lambda z: fn(z, labels).mean())(jnp.asarray(logits))
        np.testing.assert_allclose(grad, base_grad + 0.3 * gsc_grad, rtol=1e-4, atol=1e-7)

    def test_where_and_example_mask_reach_the_base_loss(self):
        logits, labels = _batch(12)
        where = np.ones((10, 4), bool)
        where[:, 3] = False
        labels = labels % 3
        mask = np.arange(10) < 8
        combined = gsc_jax.with_gsc(gsc_jax.mdca_loss, gamma=0.1, top_c=2)
        np.testing.assert_allclose(
            combined(logits, labels, where=where, example_mask=mask),
            gsc_jax.mdca_loss(logits, labels, where=where, example_mask=mask)
            + 0.1 * gsc_jax.gsc_term(logits, top_c=2, where=where) * mask,
            rtol=1e-5,
        )
        # A masked row (padding holding NaN) adds 0 to the value and to the gradient.
        padded = np.array(logits)
        padded[9] = np.nan
        value, grad = jax.value_and_grad(
            lambda z: combined(z, labels, where=where, example_mask=mask).sum()
        )(padded)
        np.testing.assert_allclose(
            value, combined(logits, labels, where=where, example_mask=mask).sum(), rtol=1e-5
        )
        assert np.all(np.asarray(grad)[8:] == 0) and np.all(np.isfinite(np.asarray(grad)))

    def test_poly1_from_optax_composes(self):
        logits, labels = _batch(13)

        def poly1(z, y, **kw):
            return optax.losses.poly_loss_cross_entropy(
                z, jax.nn.one_hot(y, z.shape[-1]), epsilon=2.0, **kw
            )

        combined = gsc_jax.with_gsc(poly1, gamma=0.05, top_c=2)
        p = np.exp(np_log_softmax(logits))
        p_y = p[np.arange(10), labels]
        expected = np_ce(logits, labels) + 2.0 * (1 - p_y)
        np.testing.assert_allclose(poly1(logits, labels), expected, rtol=1e-5)
        np.testing.assert_allclose(
            jax.jit(combined)(logits, labels),
            expected + 0.05 * np.asarray(gsc_jax.gsc_term(logits, top_c=2)),
            rtol=1e-5,
        )
        chex.assert_tree_all_finite(
            jax.jit(jax.grad(lambda z: combined(z, labels).mean()))(jnp.asarray(logits))
        )


class HyperParameterTest(parameterized.TestCase):
    @parameterized.parameters(
        (gsc_jax.adaptive_focal_loss, dict(threshold=1.5), "threshold"),
        (gsc_jax.adaptive_focal_loss, dict(eta_below=-1.0), "eta_below"),
        (gsc_jax.adaptive_focal_loss, dict(eta_above=float("nan")), "eta_above"),
        (gsc_jax.margin_label_smoothing_loss, dict(margin=-1.0), "margin"),
        (gsc_jax.margin_label_smoothing_loss, dict(alpha=-0.1), "alpha"),
        (gsc_jax.mdca_loss, dict(beta=-1.0), "beta"),
        (gsc_jax.dca_loss, dict(beta=float("inf")), "beta"),
        (gsc_jax.mmce_loss, dict(beta=-2.0), "beta"),
        (gsc_jax.mmce_loss, dict(bandwidth=0.0), "bandwidth"),
        (gsc_jax.mmce_loss, dict(weighted="yes"), "weighted"),
    )
    def test_bad_values_raise_naming_the_argument(self, fn, kwargs, name):
        logits, labels = _batch(14)
        with self.assertRaisesRegex(ValueError, name):
            fn(logits, labels, **kwargs)

    def test_mmce_takes_integer_ids_only(self):
        logits, labels = _batch(15)
        with self.assertRaisesRegex(TypeError, "integer class ids"):
            gsc_jax.mmce_loss(logits, np.eye(4, dtype=np.float32)[labels])

    def test_hyper_parameters_are_keyword_only(self):
        logits, labels = _batch(16)
        for fn in (
            gsc_jax.adaptive_focal_loss,
            gsc_jax.margin_label_smoothing_loss,
            gsc_jax.mdca_loss,
            gsc_jax.dca_loss,
            gsc_jax.mmce_loss,
        ):
            with self.assertRaises(TypeError):
                fn(logits, labels, 1.0)

    def test_traced_weights_work_under_jit(self):
        logits, labels = _batch(17)
        fn = jax.jit(lambda b: gsc_jax.mdca_loss(logits, labels, beta=b))
        np.testing.assert_allclose(fn(2.0), gsc_jax.mdca_loss(logits, labels, beta=2.0), rtol=1e-6)
