"""Online label smoothing statistics: label and NaN rules, the per-example mask."""

import jax
import numpy as np
from absl.testing import parameterized

import gsc_jax


def numpy_statistics(logits, labels, num_classes):
    """Sums of softmax rows and counts of examples whose argmax is their label, per class."""
    z = logits.astype(np.float64)
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    sums = np.zeros((num_classes, num_classes))
    counts = np.zeros(num_classes, np.int64)
    for p, row, y in zip(probs, logits, labels):
        if np.argmax(row) == y:
            sums[y] += p
            counts[y] += 1
    return sums, counts


class OlsStatisticsTest(parameterized.TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        self.logits = (rng.normal(size=(32, 4)) * 3).astype(np.float32)
        # Most examples correct, so that every class has some counted rows.
        self.labels = np.where(rng.random(32) < 0.7, self.logits.argmax(-1), rng.integers(0, 4, 32))

    def assert_statistics_equal(self, got, want):
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got[1], want[1])

    def test_matches_numpy(self):
        self.assert_statistics_equal(
            gsc_jax.ols_batch_statistics(self.logits, self.labels),
            numpy_statistics(self.logits, self.labels, 4),
        )

    @parameterized.parameters(np.nan, np.inf)
    def test_non_finite_rows_never_count_and_never_poison_the_sums(self, value):
        logits = self.logits.copy()
        logits[0, :] = value  # argmax 0 for NaN (NumPy's rule); label 0 below
        logits[1, 2] = value
        labels = self.labels.copy()
        labels[0], labels[1] = 0, 2
        keep = np.arange(32) >= 2
        got = jax.jit(gsc_jax.ols_batch_statistics)(logits, labels)
        self.assertTrue(np.isfinite(got[0]).all())
        self.assert_statistics_equal(got, numpy_statistics(logits[keep], labels[keep], 4))

    def test_label_rules(self):
        wrapped = gsc_jax.ols_batch_statistics(self.logits, self.labels - 4)
        plain = gsc_jax.ols_batch_statistics(self.logits, self.labels)
        self.assert_statistics_equal(wrapped, plain)
        bad = self.labels.copy()
        bad[:8] = np.array([4, 5, -5, -6, 100, -100, 2**31 - 1, -(2**31)])
        logits = self.logits.copy()
        logits[:8] = 0.0  # every class ties: argmax is class 0, whatever an invalid id is read as
        got = gsc_jax.ols_batch_statistics(logits, bad)
        keep = np.arange(32) >= 8
        self.assert_statistics_equal(got, numpy_statistics(logits[keep], bad[keep], 4))

    def test_example_mask(self):
        mask = np.arange(32) % 3 != 0
        got = gsc_jax.ols_batch_statistics(self.logits, self.labels, example_mask=mask)
        self.assert_statistics_equal(got, numpy_statistics(self.logits[mask], self.labels[mask], 4))
        state = gsc_jax.ols_update(gsc_jax.ols_init(4), self.logits, self.labels, example_mask=mask)
        self.assert_statistics_equal((state.prob_sums, state.counts), got)

    @parameterized.parameters(((1,),), ((31,),), ((32, 1),))
    def test_example_mask_shape_is_checked(self, shape):
        for fn in (
            gsc_jax.ols_batch_statistics,
            lambda z, y, **kw: gsc_jax.ols_update(gsc_jax.ols_init(4), z, y, **kw),
        ):
            with self.assertRaisesRegex(ValueError, r"`example_mask`.*\(32,\).*got shape"):
                fn(self.logits, self.labels, example_mask=np.ones(shape, bool))
        with self.assertRaisesRegex(TypeError, "example_mask"):
            gsc_jax.ols_batch_statistics(
                self.logits, self.labels, example_mask=np.ones(32, np.int32)
            )
