"""Base losses (CE, LS, focal, entropy, OLS, ArcFace/CosFace) against independent formulas."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import parameterized

import gsc_jax


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


class BaseLossTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        self.logits = np.asarray(jax.random.normal(jax.random.key(0), (6, 5)) * 2.0)
        self.labels = np.array([0, 4, 2, 2, 1, 3])
        self.one_hot = np.eye(5)[self.labels]
        self.log_p = np_log_softmax(self.logits)

    @chex.variants(with_jit=True, without_jit=True)
    def test_cross_entropy_matches_optax(self):
        ce = self.variant(gsc_jax.cross_entropy)
        np.testing.assert_allclose(
            ce(self.logits, self.labels),
            optax.softmax_cross_entropy_with_integer_labels(self.logits, self.labels),
            rtol=1e-6,
        )
        soft = np.abs(np.random.default_rng(0).normal(size=(6, 5)))
        soft = (soft / soft.sum(-1, keepdims=True)).astype(np.float32)
        np.testing.assert_allclose(
            ce(self.logits, soft), optax.softmax_cross_entropy(self.logits, soft), rtol=1e-5
        )

    def test_cross_entropy_mask_has_finite_gradients(self):
        where = np.ones((6, 5), bool)
        where[:, 1] = False
        soft = self.one_hot.copy()
        soft[:, 1] = 0.0
        soft = (soft / np.maximum(soft.sum(-1, keepdims=True), 1)).astype(np.float32)
        ids = np.where(self.labels == 1, 0, self.labels)  # a masked-out id is NaN (see below)
        for labels in (ids, soft):
            grads = jax.grad(lambda z: gsc_jax.cross_entropy(z, labels, where=where).sum())(
                jnp.asarray(self.logits)
            )
            chex.assert_tree_all_finite(grads)

    @chex.variants(with_jit=True, without_jit=True)
    def test_label_smoothing(self):
        alpha = 0.1
        targets = (1 - alpha) * self.one_hot + alpha / 5
        expected = -np.sum(targets * self.log_p, -1)
        fn = self.variant(lambda z, y: gsc_jax.label_smoothing_cross_entropy(z, y, alpha=alpha))
        np.testing.assert_allclose(fn(self.logits, self.labels), expected, rtol=1e-5)

    def test_label_smoothing_mask_counts_only_active_classes(self):
        where = np.ones((6, 5), bool)
        where[:, 4] = False
        labels = np.array([0, 1, 2, 2, 1, 3])
        alpha = 0.2
        expected = gsc_jax.label_smoothing_cross_entropy(self.logits[:, :4], labels, alpha=alpha)
        np.testing.assert_allclose(
            gsc_jax.label_smoothing_cross_entropy(self.logits, labels, alpha=alpha, where=where),
            expected,
            rtol=1e-5,
        )

    @parameterized.parameters(0.0, 1.0, 2.0, 0.5)
    def test_focal_loss(self, eta):
        p = np.exp(self.log_p)
        p_y = p[np.arange(6), self.labels]
        expected = -((1 - p_y) ** eta) * np.log(p_y)
        np.testing.assert_allclose(
            gsc_jax.focal_loss(self.logits, self.labels, eta=eta), expected, rtol=1e-5
        )

    def test_focal_eta_zero_is_cross_entropy_and_soft_labels_agree(self):
        np.testing.assert_allclose(
            gsc_jax.focal_loss(self.logits, self.labels, eta=0.0),
            gsc_jax.cross_entropy(self.logits, self.labels),
            rtol=1e-6,
        )
        np.testing.assert_allclose(
            gsc_jax.focal_loss(self.logits, self.one_hot.astype(np.float32), eta=2.0),
            gsc_jax.focal_loss(self.logits, self.labels, eta=2.0),
            rtol=1e-6,
        )

    def test_focal_extreme_logits_finite_gradients(self):
        logits = jnp.array([[100.0, -100.0, 0.0], [-100.0, 100.0, 0.0]])
        for eta in (0.5, 2.0):
            fn = lambda z: gsc_jax.focal_loss(z, jnp.array([0, 0]), eta=eta).sum()  # noqa: E731
            chex.assert_tree_all_finite((fn(logits), jax.grad(fn)(logits)))

    def test_entropy_regularized(self):
        p = np.exp(self.log_p)
        entropy = -np.sum(p * self.log_p, -1) / math.log(5)
        ce = -self.log_p[np.arange(6), self.labels]
        np.testing.assert_allclose(
            gsc_jax.entropy_regularized_cross_entropy(
                self.logits, self.labels, entropy_weight=0.02
            ),
            ce + 0.02 * entropy,
            rtol=1e-5,
        )
        np.testing.assert_allclose(
            gsc_jax.softmax_entropy(self.logits, normalize=False),
            -np.sum(p * self.log_p, -1),
            rtol=1e-5,
        )

    def test_bad_hyper_parameters(self):
        with self.assertRaisesRegex(ValueError, "alpha"):
            gsc_jax.label_smoothing_cross_entropy(self.logits, self.labels, alpha=1.5)
        with self.assertRaisesRegex(ValueError, "eta"):
            gsc_jax.focal_loss(self.logits, self.labels, eta=-1.0)
        with self.assertRaisesRegex(ValueError, "entropy_weight"):
            gsc_jax.entropy_regularized_cross_entropy(self.logits, self.labels, entropy_weight=-1)


class OnlineLabelSmoothingTest(parameterized.TestCase):
    def test_epoch_statistics_match_numpy(self):
        rng = np.random.default_rng(3)
        num_classes = 4
        batches = [
            (rng.normal(size=(8, num_classes)).astype(np.float32) * 3, rng.integers(0, 4, 8))
            for _ in range(3)
        ]
        state = gsc_jax.ols_init(num_classes)
        np.testing.assert_allclose(state.soft_labels, 0.25)
        update = jax.jit(gsc_jax.ols_update)
        for logits, labels in batches:
            state = update(state, logits, labels)
        state = gsc_jax.ols_finalize_epoch(state)

        sums = np.zeros((num_classes, num_classes))
        counts = np.zeros(num_classes)
        for logits, labels in batches:
            probs = np.exp(np_log_softmax(logits))
            for p, z, y in zip(probs, logits, labels):
                if np.argmax(z) == y:
                    sums[y] += p
                    counts[y] += 1
        expected = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0.25)
        np.testing.assert_allclose(state.soft_labels, expected, rtol=1e-5)
        np.testing.assert_array_equal(state.counts, 0)
        np.testing.assert_allclose(state.soft_labels.sum(-1), 1.0, rtol=1e-5)

    def test_loss_formula_and_zero_init(self):
        logits = np.asarray(jax.random.normal(jax.random.key(1), (5, 3)))
        labels = np.array([0, 1, 2, 2, 0])
        soft = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.0, 0.3, 0.7]], np.float32)
        log_p = np_log_softmax(logits)
        expected = 0.5 * -log_p[np.arange(5), labels] + 0.5 * -np.sum(soft[labels] * log_p, -1)
        np.testing.assert_allclose(
            gsc_jax.online_label_smoothing_loss(logits, labels, soft_labels=soft),
            expected,
            rtol=1e-5,
        )
        zeros = gsc_jax.ols_init(3, init="zeros").soft_labels
        np.testing.assert_allclose(
            gsc_jax.online_label_smoothing_loss(logits, labels, soft_labels=zeros),
            0.5 * -log_p[np.arange(5), labels],
            rtol=1e-5,
        )

    def test_batch_statistics_sum_across_shards(self):
        logits = np.asarray(jax.random.normal(jax.random.key(2), (12, 3))) * 3
        labels = np.arange(12) % 3
        whole = gsc_jax.ols_batch_statistics(logits, labels)
        halves = [
            gsc_jax.ols_batch_statistics(logits[s], labels[s]) for s in (slice(0, 6), slice(6, 12))
        ]
        np.testing.assert_allclose(whole[0], halves[0][0] + halves[1][0], rtol=1e-6)
        np.testing.assert_array_equal(whole[1], halves[0][1] + halves[1][1])

    def test_bad_inputs(self):
        with self.assertRaisesRegex(ValueError, "num_classes"):
            gsc_jax.ols_init(1)
        with self.assertRaisesRegex(ValueError, "soft_labels"):
            gsc_jax.online_label_smoothing_loss(
                np.zeros((2, 3), np.float32), np.zeros(2, int), soft_labels=np.zeros((2, 2))
            )


class MarginLogitsTest(parameterized.TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(5)
        self.cosines = np.clip(rng.normal(size=(6, 4)) * 0.6, -0.999, 0.999).astype(np.float32)
        self.cosines[0, 1] = -0.99  # theta + m > pi: the threshold branch
        self.labels = np.array([1, 0, 3, -1, 2, 2])  # -1 is class 3

    def test_cosface(self):
        out = gsc_jax.cosface_logits(self.cosines, self.labels, scale=30.0, margin=0.35)
        expected = self.cosines.astype(np.float64).copy()
        for i, y in enumerate(self.labels):
            expected[i, y] -= 0.35  # -1: class 3, as NumPy indexing reads it
        np.testing.assert_allclose(out, 30.0 * expected, rtol=1e-5)

    @parameterized.parameters(False, True)
    def test_arcface(self, easy_margin):
        m, s = 0.5, 64.0
        out = gsc_jax.arcface_logits(
            self.cosines, self.labels, scale=s, margin=m, easy_margin=easy_margin
        )
        expected = self.cosines.astype(np.float64).copy()
        for i, y in enumerate(self.labels):
            t = expected[i, y]
            shifted = math.cos(math.acos(t) + m)
            if easy_margin:
                expected[i, y] = shifted if t > 0 else t
            else:
                expected[i, y] = shifted if t > math.cos(math.pi - m) else t - m * math.sin(m)
        np.testing.assert_allclose(out, s * expected, rtol=1e-4, atol=1e-4)

    def test_gradients_finite_at_the_poles_and_gsc_composes(self):
        cosines = jnp.array([[1.0, 0.2, -1.0], [-1.0, 0.0, 1.0]])
        labels = jnp.array([0, 0])
        loss = gsc_jax.with_gsc(gsc_jax.cross_entropy, gamma=0.02, top_c=2)

        def total(c):
            return loss(gsc_jax.arcface_logits(c, labels), labels).sum()

        chex.assert_tree_all_finite(jax.grad(total)(cosines))

    @parameterized.parameters("cosface", "arcface")
    def test_labels_follow_the_rule_of_the_losses(self, name):
        fn = getattr(gsc_jax, f"{name}_logits")
        labels = np.array([1, -4, 4, -5, -1, 2])  # -4 is class 0, -1 class 3; 4 and -5 invalid
        out = np.asarray(fn(self.cosines, labels))
        grad = np.asarray(jax.grad(lambda c: fn(c, labels).sum())(jnp.asarray(self.cosines)))
        valid = np.array([True, True, False, False, True, True])
        # NaN rows without a derivative: a masked loss of these logits has finite gradients.
        assert np.isnan(out[~valid]).all() and np.all(grad[~valid] == 0.0)
        np.testing.assert_array_equal(out[valid], fn(self.cosines[valid], labels[valid] % 4))
        assert np.isfinite(grad[valid]).all()


def _all_losses():
    """Every integer-label loss of the library, as ``(name, fn(logits, labels, **kw))``."""
    soft = jnp.full((4, 4), 0.25)
    return (
        ("ce", gsc_jax.cross_entropy),
        ("ls", lambda z, y, **kw: gsc_jax.label_smoothing_cross_entropy(z, y, alpha=0.1, **kw)),
        ("focal", lambda z, y, **kw: gsc_jax.focal_loss(z, y, eta=2.0, **kw)),
        (
            "entropy",
            lambda z, y, **kw: gsc_jax.entropy_regularized_cross_entropy(
                z, y, entropy_weight=0.1, **kw
            ),
        ),
        (
            "ols",
            lambda z, y, **kw: gsc_jax.online_label_smoothing_loss(z, y, soft_labels=soft, **kw),
        ),
        ("gsc_loss", lambda z, y, **kw: gsc_jax.gsc_loss(z, y, gamma=0.5, top_c=2, **kw)),
        (
            "gsc_loss_reference",
            lambda z, y, **kw: gsc_jax.gsc_loss(
                z, y, gamma=0.5, top_c=2, implementation="reference", **kw
            ),
        ),
        ("with_gsc_focal", gsc_jax.with_gsc(gsc_jax.focal_loss, gamma=0.5, top_c=2)),
        (
            "with_gsc_ls_reference",
            lambda z, y, **kw: gsc_jax.with_gsc(
                gsc_jax.label_smoothing_cross_entropy,
                gamma=0.5,
                top_c=2,
                implementation="reference",
            )(z, y, alpha=0.1, **kw),
        ),
        ("with_gsc_ce", gsc_jax.with_gsc(gsc_jax.cross_entropy, gamma=0.5, top_c=2)),
    )


def _value_and_grad(fn, logits, labels, **kwargs):
    def total(z):
        value = fn(z, labels, **kwargs)
        return value.sum(), value

    (_, value), grad = jax.value_and_grad(total, has_aux=True)(jnp.asarray(logits))
    return np.asarray(value), np.asarray(grad)


class IntegerLabelRuleTest(parameterized.TestCase):
    """One rule for integer labels in every loss (see `gsc_jax.cross_entropy`)."""

    logits = np.asarray(jax.random.normal(jax.random.key(3), (6, 4)) * 2.0)

    @parameterized.named_parameters(*_all_losses())
    def test_negative_ids_count_from_the_end(self, fn):
        labels = np.array([-1, -2, -3, -4, -1, -4])
        value, grad = _value_and_grad(fn, self.logits, labels)
        expected_value, expected_grad = _value_and_grad(fn, self.logits, labels + 4)
        np.testing.assert_allclose(value, expected_value, rtol=1e-6)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-8)
        assert np.all(value > 0)  # focal_loss read -1 as no class at all (-0.0)

    @parameterized.named_parameters(*_all_losses())
    def test_ids_outside_the_range_give_nan_for_their_example_only(self, fn):
        labels = np.array([0, -5, 4, 100, -(2**31), 3])
        invalid = np.array([False, True, True, True, True, False])
        value, grad = _value_and_grad(fn, self.logits, labels)
        assert np.isnan(value[invalid]).all(), value
        assert np.isfinite(grad).all(), grad  # no derivative through an invalid label
        alone_value, alone_grad = _value_and_grad(fn, self.logits[~invalid], labels[~invalid])
        np.testing.assert_allclose(value[~invalid], alone_value, rtol=1e-6)
        np.testing.assert_allclose(grad[~invalid], alone_grad, rtol=1e-6, atol=1e-8)

    @parameterized.named_parameters(*_all_losses())
    def test_a_masked_out_label_gives_nan_and_a_row_without_classes_zero(self, fn):
        where = np.ones((6, 4), bool)
        where[0, 2] = False  # row 0's label
        where[1, 0] = False  # another class of row 1
        where[2] = False  # no class takes part
        labels = np.array([2, 3, 1, -2, 0, 1])
        value, grad = _value_and_grad(fn, self.logits, labels, where=where)
        assert np.isnan(value[0]) and np.isfinite(grad[0]).all()  # was negative for CE
        assert np.isfinite(value[[1, 3, 4, 5]]).all() and np.isfinite(grad[[1, 3, 4, 5]]).all()
        assert value[2] == 0.0 and np.all(grad[2] == 0.0)

    @parameterized.named_parameters(*_all_losses())
    def test_a_row_of_minus_infinity_logits_is_nan(self, fn):
        logits = self.logits.copy()
        logits[1] = -np.inf
        value, grad = _value_and_grad(fn, logits, np.array([0, 1, 2, 3, 0, 1]))
        assert np.isnan(value[1]) and np.isnan(grad[1]).all()
        assert np.isfinite(np.delete(value, 1)).all() and np.isfinite(np.delete(grad, 1, 0)).all()

    def test_focal_loss_and_label_smoothing_regressions(self):
        # focal_loss gave -0.0 for -1 and for out-of-range ids; label smoothing a finite value.
        labels = np.array([-1, 7, 3])
        focal = np.asarray(gsc_jax.focal_loss(self.logits[:3], labels, eta=2.0))
        assert focal[0] > 0
        np.testing.assert_allclose(
            focal[0], gsc_jax.focal_loss(self.logits[:1], np.array([3]), eta=2.0)[0], rtol=1e-6
        )
        assert np.isnan(focal[1])
        smoothed = np.asarray(
            gsc_jax.label_smoothing_cross_entropy(self.logits[:3], labels, alpha=0.1)
        )
        assert np.isnan(smoothed[1]) and np.isfinite(smoothed[[0, 2]]).all()

    def test_optax_reads_negative_ids_the_same_way(self):
        labels = np.array([-1, -4, 0, 3, 2, -2])
        np.testing.assert_allclose(
            gsc_jax.cross_entropy(self.logits, labels),
            optax.softmax_cross_entropy_with_integer_labels(self.logits, labels),
            rtol=1e-6,
        )


class PaddedLabelsTest(parameterized.TestCase):
    """Padding with -100 (PyTorch's convention) and masking: finite gradients, as with optax.

    Both patterns: the per-example values masked by the caller (``jnp.where(mask, loss, 0)``)
    and ``example_mask``. Before, the first gave NaN gradients on every padded row (the loss
    looked finite while one optimiser step made the parameters NaN) and the second did not exist.
    """

    logits = np.asarray(jax.random.normal(jax.random.key(5), (6, 4)) * 2.0)
    labels = np.array([2, -100, 0, 3, -100, 1])
    mask = labels != -100

    def _masked_grads(self, fn):
        z = jnp.asarray(self.logits)
        by_where = jax.grad(lambda z: jnp.where(self.mask, fn(z, self.labels), 0.0).sum())(z)
        by_example_mask = jax.grad(lambda z: fn(z, self.labels, example_mask=self.mask).sum())(z)
        return np.asarray(by_where), np.asarray(by_example_mask)

    @parameterized.named_parameters(*_all_losses())
    def test_both_patterns_give_the_gradient_of_the_examples_taking_part(self, fn):
        by_where, by_example_mask = self._masked_grads(fn)
        alone = np.asarray(
            jax.grad(lambda z: fn(z, self.labels[self.mask]).sum())(
                jnp.asarray(self.logits[self.mask])
            )
        )
        for grad in (by_where, by_example_mask):
            assert np.isfinite(grad).all(), grad
            np.testing.assert_allclose(grad[self.mask], alone, rtol=1e-5, atol=1e-7)
            assert np.all(grad[~self.mask] == 0.0)
        values = np.asarray(fn(self.logits, self.labels, example_mask=self.mask))
        assert np.all(values[~self.mask] == 0.0)
        np.testing.assert_allclose(
            values[self.mask], fn(self.logits[self.mask], self.labels[self.mask]), rtol=1e-6
        )

    def test_cross_entropy_matches_optax_in_both_patterns(self):
        optax_grad = jax.grad(
            lambda z: jnp.where(
                self.mask, optax.softmax_cross_entropy_with_integer_labels(z, self.labels), 0.0
            ).sum()
        )(jnp.asarray(self.logits))
        for fn in (
            gsc_jax.cross_entropy,
            lambda z, y, **kw: gsc_jax.gsc_loss(z, y, gamma=0.0, top_c=2, **kw),
            lambda z, y, **kw: gsc_jax.gsc_loss(
                z, y, gamma=0.0, top_c=2, implementation="reference", **kw
            ),
        ):
            for grad in self._masked_grads(fn):
                np.testing.assert_allclose(grad, optax_grad, rtol=1e-5, atol=1e-7)

    def test_one_optimiser_step_keeps_the_parameters_finite(self):
        # The user's report: a Dense layer, padded labels, a masked mean, one SGD step.
        features = jax.random.normal(jax.random.key(0), (6, 3))
        params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
        loss = gsc_jax.with_gsc(gsc_jax.cross_entropy, gamma=0.05, top_c=2)

        def objective(params):
            per_example = loss(features @ params["w"] + params["b"], self.labels)
            return jnp.where(self.mask, per_example, 0.0).sum() / self.mask.sum()

        grads = jax.grad(objective)(params)
        tx = optax.sgd(0.1)
        updates, _ = tx.update(grads, tx.init(params))
        chex.assert_tree_all_finite(optax.apply_updates(params, updates))

    def test_an_unmasked_invalid_label_still_shows_in_the_value(self):
        assert np.isnan(gsc_jax.cross_entropy(self.logits, self.labels).mean())

    def test_example_mask_is_checked(self):
        with self.assertRaisesRegex(ValueError, "example_mask.*shape"):
            gsc_jax.focal_loss(self.logits, self.labels, example_mask=self.mask[:3])
        with self.assertRaisesRegex(TypeError, "example_mask.*boolean"):
            gsc_jax.gsc_loss(
                self.logits,
                self.labels,
                gamma=0.1,
                top_c=2,
                example_mask=self.mask.astype(np.int32),
            )
