"""Calibration metrics against brute-force per-example computations; exact accumulation."""

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import gsc_jax
from gsc_jax import metrics


def random_predictions(seed, n=500, k=10, temperature=2.0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, k)) * temperature).astype(np.float32)
    labels = np.where(rng.random(n) < 0.6, logits.argmax(-1), rng.integers(0, k, n))
    return logits, labels, np.asarray(jax.nn.softmax(logits))


def brute_force_ece(probs, labels, num_bins):
    """Guo et al. ECE with (lower, upper] bins, one example at a time, in float64."""
    total = 0.0
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    conf = probs.max(-1).astype(np.float64)
    correct = (probs.argmax(-1) == labels).astype(np.float64)
    gaps = []
    for lower, upper in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lower) & (conf <= upper)
        if lower == 0.0:
            in_bin |= conf == 0.0
        if in_bin.any():
            gap = abs(correct[in_bin].mean() - conf[in_bin].mean())
            total += in_bin.mean() * gap
            gaps.append(gap)
    return total, max(gaps)


class CalibrationTest(parameterized.TestCase):
    @parameterized.parameters(1, 10, 15, 30)
    def test_ece_and_mce_match_brute_force(self, num_bins):
        _, labels, probs = random_predictions(num_bins)
        ece, mce = brute_force_ece(probs, labels, num_bins)
        np.testing.assert_allclose(
            metrics.expected_calibration_error(probs, labels, num_bins=num_bins), ece, atol=2e-6
        )
        np.testing.assert_allclose(
            metrics.maximum_calibration_error(probs, labels, num_bins=num_bins), mce, atol=2e-6
        )

    def test_perfectly_confident_and_correct_is_zero(self):
        probs = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]]
        labels = np.array([0, 1, 2, 3, 0])
        self.assertEqual(float(metrics.expected_calibration_error(probs, labels)), 0.0)

    def test_batched_accumulation_equals_one_shot_exactly(self):
        _, labels, probs = random_predictions(7, n=1003)
        whole = metrics.calibration_stats(probs, labels)
        stats_fn = jax.jit(metrics.calibration_stats)
        parts = [stats_fn(probs[i : i + 128], labels[i : i + 128]) for i in range(0, 1003, 128)]
        merged = parts[0]
        for part in parts[1:]:
            merged = metrics.merge_calibration_stats(merged, part)
        for a, b in zip(whole, merged):
            np.testing.assert_array_equal(a, b)
        self.assertEqual(
            float(metrics.expected_calibration_error_from_stats(whole)),
            float(metrics.expected_calibration_error_from_stats(merged)),
        )

    def test_padding_mask(self):
        _, labels, probs = random_predictions(8, n=100)
        padded_probs = np.concatenate([probs, np.full((28, 10), 0.1, np.float32)])
        padded_labels = np.concatenate([labels, np.zeros(28, int)])
        mask = np.arange(128) < 100
        a = metrics.calibration_stats(padded_probs, padded_labels, example_mask=mask)
        b = metrics.calibration_stats(probs, labels)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)

    def test_adaptive_ece_matches_brute_force_of_its_definition(self):
        _, labels, probs = random_predictions(9, n=800)
        num_fine, num_bins = metrics.ADAPTIVE_FINE_BINS, 10
        conf = probs.max(-1).astype(np.float64)
        correct = (probs.argmax(-1) == labels).astype(np.float64)
        fine = np.clip(np.ceil(conf.astype(np.float32) * num_fine).astype(int) - 1, 0, num_fine - 1)
        counts = np.bincount(fine, minlength=num_fine)
        midpoint = np.cumsum(counts) - 0.5 * counts
        group_of_fine = np.clip(
            np.floor(num_bins * midpoint / len(conf)).astype(int), 0, num_bins - 1
        )
        group = group_of_fine[fine]
        expected = sum(
            abs(correct[group == g].sum() - conf[group == g].sum()) for g in range(num_bins)
        ) / len(conf)
        np.testing.assert_allclose(
            metrics.adaptive_calibration_error(probs, labels, num_bins=num_bins),
            expected,
            atol=2e-6,
        )
        sizes = np.bincount(group, minlength=num_bins)
        self.assertLess(sizes.max() - sizes.min(), 0.1 * len(conf))

    def test_reliability_diagram(self):
        _, labels, probs = random_predictions(10)
        data = metrics.reliability_diagram(metrics.calibration_stats(probs, labels, num_bins=5))
        self.assertEqual(int(data["count"].sum()), 500)
        conf = probs.max(-1)
        in_top_bin = conf > 0.8
        np.testing.assert_allclose(data["confidence"][-1], conf[in_top_bin].mean(), rtol=1e-5)
        np.testing.assert_allclose(
            data["accuracy"][-1], (probs.argmax(-1) == labels)[in_top_bin].mean(), rtol=1e-6
        )

    def test_bad_inputs(self):
        _, labels, probs = random_predictions(11, n=10)
        with self.assertRaisesRegex(ValueError, "num_bins"):
            metrics.expected_calibration_error(probs, labels, num_bins=0)
        with self.assertRaisesRegex(ValueError, "labels"):
            metrics.expected_calibration_error(probs, labels[:5])
        with self.assertRaisesRegex(ValueError, "at least 2 classes"):
            metrics.expected_calibration_error(probs[:, :1], labels)


def decoded_stats(stats):
    """(count, correct, sum of q = round(2**20 * confidence)) per bin as Python-exact int64."""
    limbs = np.asarray(stats.confidence).astype(np.int64)
    confidence = (limbs[:, 0] << 20) + (limbs[:, 1] << 10) + limbs[:, 2]
    return (
        np.asarray(stats.count).astype(np.int64),
        np.asarray(stats.correct).astype(np.int64),
        confidence,
    )


class InvalidPredictionsTest(parameterized.TestCase):
    """NaN probabilities and probabilities that are not a distribution make calibration NaN."""

    def test_all_nan_probabilities_give_nan(self):
        probs = np.full((6, 4), np.nan, np.float32)
        labels = np.zeros(6, int)
        stats = metrics.calibration_stats(probs, labels)
        self.assertEqual(int(stats.invalid), 6)
        self.assertEqual(int(stats.count.sum()), 0)
        self.assertTrue(np.isnan(metrics.expected_calibration_error(probs, labels)))
        self.assertTrue(np.isnan(metrics.maximum_calibration_error(probs, labels)))
        self.assertTrue(np.isnan(metrics.adaptive_calibration_error(probs, labels)))
        diagram = metrics.reliability_diagram(stats)
        self.assertTrue(np.isnan(diagram["accuracy"]).all())
        self.assertTrue(np.isnan(diagram["confidence"]).all())

    def test_one_nan_row_poisons_merged_stats_unless_masked(self):
        _, labels, probs = random_predictions(20, n=64)
        bad = probs.copy()
        bad[5, 2] = np.nan
        good_stats = metrics.calibration_stats(probs, labels)
        bad_stats = metrics.calibration_stats(bad, labels)
        self.assertEqual(int(bad_stats.invalid), 1)
        merged = metrics.merge_calibration_stats(good_stats, bad_stats)
        self.assertTrue(np.isnan(metrics.expected_calibration_error_from_stats(merged)))
        mask = np.arange(64) != 5
        masked = metrics.calibration_stats(bad, labels, example_mask=mask)
        self.assertEqual(int(masked.invalid), 0)
        reference = metrics.calibration_stats(probs[mask], labels[mask])
        for a, b in zip(masked, reference):
            np.testing.assert_array_equal(a, b)

    def test_logits_passed_as_probabilities_are_invalid(self):
        logits, labels, _ = random_predictions(21, n=50)
        stats = metrics.calibration_stats(logits, labels)
        self.assertEqual(int(stats.invalid), 50)
        self.assertTrue(np.isnan(metrics.expected_calibration_error(logits, labels)))

    @parameterized.parameters(
        ("negative entry", [[-0.1, 0.6, 0.5]]),
        ("entry above 1", [[1.2, 0.0, -0.2]]),
        ("sums to 0.9", [[0.5, 0.3, 0.1]]),
        ("infinite entry", [[np.inf, 0.0, 0.0]]),
    )
    def test_rows_that_are_not_distributions(self, _, probs):
        probs = np.asarray(probs, np.float32)
        self.assertEqual(int(metrics.calibration_stats(probs, np.zeros(1, int)).invalid), 1)

    @parameterized.parameters(np.float32, jnp.bfloat16, np.float16)
    def test_softmax_in_low_precision_is_a_distribution(self, dtype):
        rng = np.random.default_rng(22)
        logits = jnp.asarray(rng.normal(size=(64, 1000)) * 4, dtype)
        probs = jax.nn.softmax(logits, axis=-1)
        stats = metrics.calibration_stats(probs, np.zeros(64, int))
        self.assertEqual(int(stats.invalid), 0)
        self.assertEqual(int(stats.count.sum()), 64)

    def test_out_of_range_labels_count_as_wrong_and_negative_labels_wrap(self):
        _, labels, probs = random_predictions(23, n=300)
        predicted = probs.argmax(-1)
        out_of_range = np.where(
            np.arange(300) % 3 == 0, np.where(np.arange(300) % 2 == 0, 10, -11), labels
        )
        expected = metrics.calibration_stats(
            probs, np.where(out_of_range == labels, labels, (predicted + 1) % 10)
        )
        for a, b in zip(metrics.calibration_stats(probs, out_of_range), expected):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(
            metrics.calibration_stats(probs, labels - 10), metrics.calibration_stats(probs, labels)
        ):
            np.testing.assert_array_equal(a, b)


class ExactAccumulationTest(parameterized.TestCase):
    """Per-bin sums stay exact far beyond 2**31 / 2**10 examples."""

    @staticmethod
    def confident_chunk(rng, n):
        """Two-class predictions, about 80 % of them in the top of 15 bins."""
        u = rng.random(n, dtype=np.float32)
        confidence = np.float32(1) - np.float32(0.5) * u * u
        probs = np.stack([confidence, 1 - confidence], axis=-1)
        labels = (rng.random(n, dtype=np.float32) >= 0.95 * confidence).astype(np.int32)
        return probs, labels

    def test_three_batches_of_a_million_confident_examples(self):
        probs = np.tile(np.array([[1.0, 0.0]], np.float32), (1_000_000, 1))
        labels = np.zeros(1_000_000, np.int32)
        stats = jax.jit(metrics.calibration_stats)(probs, labels)
        merged = metrics.merge_calibration_stats(stats, stats)
        merged = metrics.merge_calibration_stats(merged, stats)
        self.assertEqual(float(metrics.expected_calibration_error_from_stats(merged)), 0.0)
        self.assertEqual(float(metrics.maximum_calibration_error_from_stats(merged)), 0.0)
        np.testing.assert_array_equal(merged.confidence[-1], [3_000_000, 0, 0])

    def test_ten_million_examples_exact_and_equal_to_float64_ece(self):
        rng = np.random.default_rng(24)
        num_bins, chunk, num_chunks = 15, 1_000_000, 10
        stats_fn = jax.jit(metrics.calibration_stats)
        merged = summed = None
        exact = np.zeros((3, num_bins), np.int64)
        brute = np.zeros((3, num_bins))  # count, correct, confidence sum in float64
        edges = np.linspace(0.0, 1.0, num_bins + 1)
        first_three = []
        for _ in range(num_chunks):
            probs, labels = self.confident_chunk(rng, chunk)
            stats = stats_fn(probs, labels)
            if len(first_three) < 3:
                first_three.append((probs, labels))
            merged = stats if merged is None else metrics.merge_calibration_stats(merged, stats)
            summed = stats if summed is None else jax.tree.map(jnp.add, summed, stats)

            confidence = probs.max(-1)
            correct = probs.argmax(-1) == labels
            bins = np.ceil(confidence * np.float32(num_bins)).astype(int) - 1
            bins = np.clip(bins, 0, num_bins - 1)
            quanta = np.round(confidence.astype(np.float64) * 2**20)
            exact[0] += np.bincount(bins, minlength=num_bins)
            exact[1] += np.bincount(bins, weights=correct, minlength=num_bins).astype(np.int64)
            exact[2] += np.bincount(bins, weights=quanta, minlength=num_bins).astype(np.int64)
            confidence64 = confidence.astype(np.float64)
            bins64 = np.clip(np.searchsorted(edges, confidence64, side="left") - 1, 0, num_bins - 1)
            brute[0] += np.bincount(bins64, minlength=num_bins)
            brute[1] += np.bincount(bins64, weights=correct, minlength=num_bins)
            brute[2] += np.bincount(bins64, weights=confidence64, minlength=num_bins)

        self.assertGreater(exact[0, -1], 2**31 // 2**10)  # more than the top bin held before
        for got, want in zip(decoded_stats(merged), exact):
            np.testing.assert_array_equal(got, want)
        self.assertEqual(int(merged.invalid), 0)
        expected_ece = np.abs(brute[1] - brute[2]).sum() / brute[0].sum()
        ece = float(metrics.expected_calibration_error_from_stats(merged))
        np.testing.assert_allclose(ece, expected_ece, atol=1e-6)
        self.assertEqual(ece, float(metrics.expected_calibration_error_from_stats(summed)))
        self.assertEqual(
            float(metrics.maximum_calibration_error_from_stats(merged)),
            float(metrics.maximum_calibration_error_from_stats(summed)),
        )

        probs = np.concatenate([p for p, _ in first_three])
        labels = np.concatenate([y for _, y in first_three])
        one_shot = stats_fn(probs, labels)
        parts = [stats_fn(p, y) for p, y in first_three]
        batched = metrics.merge_calibration_stats(*parts[:2])
        batched = metrics.merge_calibration_stats(batched, parts[2])
        for a, b in zip(one_shot, batched):
            np.testing.assert_array_equal(a, b)

    def test_overflow_is_marked_and_gives_nan(self):
        stats = metrics.calibration_stats(np.eye(3, dtype=np.float32), np.arange(3), num_bins=3)
        big = stats._replace(
            count=stats.count.at[-1].set(2**31 - 2), correct=stats.correct.at[-1].set(2**31 - 2)
        )
        merged = metrics.merge_calibration_stats(big, stats)
        self.assertEqual(int(merged.count[-1]), -1)
        merged = metrics.merge_calibration_stats(merged, stats)
        self.assertEqual(int(merged.count[-1]), -1)
        for metric in (
            metrics.expected_calibration_error_from_stats,
            metrics.maximum_calibration_error_from_stats,
        ):
            self.assertTrue(np.isnan(metric(merged)))

    def test_many_plain_additions_equal_merges(self):
        _, labels, probs = random_predictions(25, n=4000)
        stats_fn = jax.jit(lambda p, y: metrics.calibration_stats(p, y, num_bins=10))
        parts = [stats_fn(probs[i : i + 4], labels[i : i + 4]) for i in range(0, 4000, 4)]
        summed, merged = parts[0], parts[0]
        for part in parts[1:]:
            summed = jax.tree.map(jnp.add, summed, part)
            merged = metrics.merge_calibration_stats(merged, part)
        self.assertGreater(int(summed.confidence[:, 2].max()), 1024)  # not carried
        whole = stats_fn(probs, labels)
        for a, b in zip(whole, merged):
            np.testing.assert_array_equal(a, b)
        for metric in (
            metrics.expected_calibration_error_from_stats,
            metrics.maximum_calibration_error_from_stats,
        ):
            self.assertEqual(float(metric(summed)), float(metric(whole)))


class PerExampleMetricsTest(parameterized.TestCase):
    def test_top_k_nll_brier(self):
        logits, labels, probs = random_predictions(12, n=50)
        rank = (logits > logits[np.arange(50), labels][:, None]).sum(-1)
        for k in (1, 3):
            np.testing.assert_array_equal(metrics.top_k_accuracy(logits, labels, k=k), rank < k)
        np.testing.assert_allclose(
            metrics.negative_log_likelihood(logits, labels),
            -np.log(probs[np.arange(50), labels]),
            rtol=1e-4,
        )
        np.testing.assert_allclose(
            metrics.brier_score(probs, labels),
            ((probs - np.eye(10)[labels]) ** 2).sum(-1),
            rtol=1e-5,
        )
        with self.assertRaisesRegex(ValueError, "k"):
            metrics.top_k_accuracy(logits, labels, k=11)


class LabelAndNaNRulesTest(parameterized.TestCase):
    """Labels in [-K, K) are valid (negative: from the end); others and NaN rows are never right."""

    def setUp(self):
        super().setUp()
        self.logits, self.labels, self.probs = random_predictions(30, n=40)

    def test_nan_logits_are_never_correct(self):
        logits = self.logits.copy()
        logits[:3] = np.nan
        logits[3, 4] = np.nan
        for k in (1, 5, 10):
            accuracy = metrics.top_k_accuracy(logits, self.labels, k=k)
            np.testing.assert_array_equal(accuracy[:4], 0.0)
        np.testing.assert_array_equal(metrics.top_k_accuracy(logits, self.labels, k=10)[4:], 1.0)
        nll = metrics.negative_log_likelihood(logits, self.labels)
        self.assertTrue(np.isnan(nll[:4]).all())
        self.assertTrue(np.isfinite(nll[4:]).all())

    @parameterized.parameters(np.int8, np.int32, np.uint8, np.uint32, np.int64)
    def test_out_of_range_labels(self, dtype):
        info = np.iinfo(dtype)
        bad = np.array([10, 11, info.max] + ([-11, info.min] if info.min < 0 else []), dtype)
        logits = np.zeros((len(bad), 10), np.float32)  # all classes tie: any valid label is top-1
        np.testing.assert_array_equal(metrics.top_k_accuracy(logits, bad, k=10), 0.0)
        self.assertTrue(np.isnan(metrics.negative_log_likelihood(logits, bad)).all())
        self.assertTrue(np.isnan(metrics.brier_score(jax.nn.softmax(logits), bad)).all())
        stats = metrics.calibration_stats(jax.nn.softmax(logits), bad)
        self.assertEqual(int(stats.count.sum()), len(bad))
        self.assertEqual(int(stats.correct.sum()), 0)

    def test_negative_labels_count_from_the_end(self):
        wrapped = self.labels - 10
        for k in (1, 3):
            np.testing.assert_array_equal(
                metrics.top_k_accuracy(self.logits, wrapped, k=k),
                metrics.top_k_accuracy(self.logits, self.labels, k=k),
            )
        np.testing.assert_array_equal(
            metrics.negative_log_likelihood(self.logits, wrapped),
            metrics.negative_log_likelihood(self.logits, self.labels),
        )
        np.testing.assert_array_equal(
            metrics.brier_score(self.probs, wrapped), metrics.brier_score(self.probs, self.labels)
        )
        np.testing.assert_array_equal(
            metrics.brier_score(self.probs, np.full(40, -1, np.int8)),
            metrics.brier_score(self.probs, np.full(40, 9)),
        )

    def test_nan_probabilities_give_nan_brier(self):
        probs = self.probs.copy()
        probs[0, 1] = np.nan
        brier = metrics.brier_score(probs, self.labels)
        self.assertTrue(np.isnan(brier[0]))
        self.assertTrue(np.isfinite(brier[1:]).all())


class ExampleMaskTest(parameterized.TestCase):
    """`example_mask` must have exactly the labels' shape and be boolean."""

    @parameterized.parameters(((1,),), ((3,),), ((4, 1),), ((2, 2),))
    def test_wrong_shape_raises_naming_the_expected_shape(self, shape):
        probs = np.full((4, 3), 1 / 3, np.float32)
        labels = np.zeros(4, int)
        mask = np.ones(shape, bool)
        for fn in (
            metrics.calibration_stats,
            metrics.expected_calibration_error,
            metrics.maximum_calibration_error,
            metrics.adaptive_calibration_error,
        ):
            message = rf"`example_mask`.*\(4,\).*got shape {re.escape(str(shape))}"
            with self.assertRaisesRegex(ValueError, message):
                fn(probs, labels, example_mask=mask)
        with self.assertRaisesRegex(ValueError, r"`example_mask`.*\(4,\)"):
            gsc_jax.fit_temperature(np.log(probs), labels, example_mask=mask)

    def test_non_boolean_mask_raises(self):
        with self.assertRaisesRegex(TypeError, "example_mask"):
            metrics.calibration_stats(
                np.full((4, 3), 1 / 3, np.float32),
                np.zeros(4, int),
                example_mask=np.ones(4, np.float32),
            )

    def test_multi_axis_batch(self):
        _, labels, probs = random_predictions(31, n=60)
        mask = np.arange(60) % 4 != 0
        a = metrics.calibration_stats(
            probs.reshape(6, 10, 10), labels.reshape(6, 10), example_mask=mask.reshape(6, 10)
        )
        b = metrics.calibration_stats(probs[mask], labels[mask])
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)

    def test_where_keyword_is_rejected(self):
        with self.assertRaises(TypeError):
            metrics.calibration_stats(
                np.full((4, 3), 1 / 3, np.float32), np.zeros(4, int), where=np.ones(4, bool)
            )


class TemperatureScalingTest(parameterized.TestCase):
    def test_recovers_the_generating_temperature_and_minimises_nll(self):
        rng = np.random.default_rng(0)
        base = rng.normal(size=(4000, 5)).astype(np.float32) * 3
        true_temperature = 2.5
        probs = np.asarray(jax.nn.softmax(base / true_temperature))
        labels = np.array([rng.choice(5, p=p / p.sum()) for p in probs])
        fitted = float(jax.jit(gsc_jax.fit_temperature)(base, labels))
        self.assertAlmostEqual(fitted, true_temperature, delta=0.25)

        def nll(t):
            return float(metrics.negative_log_likelihood(base / t, labels).mean())

        self.assertLessEqual(nll(fitted), min(nll(fitted * 0.97), nll(fitted * 1.03)))

    def test_nan_logits_give_nan_not_a_bracket_end(self):
        logits = np.full((4, 3), np.nan, np.float32)
        self.assertTrue(np.isnan(gsc_jax.fit_temperature(logits, np.zeros(4, int))))
        rng = np.random.default_rng(1)
        logits = rng.normal(size=(50, 4)).astype(np.float32)
        labels = rng.integers(0, 4, 50)
        fitted = float(gsc_jax.fit_temperature(logits, labels))
        for row, value in ((7, np.nan), (8, np.inf)):
            poisoned = logits.copy()
            poisoned[row, 2] = value
            self.assertTrue(np.isnan(jax.jit(gsc_jax.fit_temperature)(poisoned, labels)))
            mask = np.arange(50) != row
            self.assertAlmostEqual(
                float(gsc_jax.fit_temperature(poisoned, labels, example_mask=mask)),
                float(gsc_jax.fit_temperature(logits[mask], labels[mask])),
                places=5,
            )
        self.assertTrue(np.isfinite(fitted))

    def test_label_rules(self):
        rng = np.random.default_rng(2)
        logits = rng.normal(size=(50, 4)).astype(np.float32) * 2
        labels = rng.integers(0, 4, 50)
        fitted = float(gsc_jax.fit_temperature(logits, labels))
        self.assertEqual(float(gsc_jax.fit_temperature(logits, labels - 4)), fitted)
        for bad in (4, -5):
            one_bad = np.where(np.arange(50) == 3, bad, labels)
            self.assertTrue(np.isnan(gsc_jax.fit_temperature(logits, one_bad)))
        nothing = np.zeros(50, bool)
        self.assertTrue(np.isnan(gsc_jax.fit_temperature(logits, labels, example_mask=nothing)))

    def test_minus_inf_logits(self):
        rng = np.random.default_rng(3)
        logits = rng.normal(size=(80, 5)).astype(np.float32) * 2
        labels = rng.integers(0, 4, 80)  # class 4 is never a label
        masked = logits.copy()
        masked[:, 4] = -np.inf
        very_negative = logits.copy()
        very_negative[:, 4] = -1e4
        np.testing.assert_allclose(
            gsc_jax.fit_temperature(masked, labels),
            gsc_jax.fit_temperature(very_negative, labels),
            rtol=1e-5,
        )
        label_at_minus_inf = np.where(np.arange(80) == 0, 4, labels)
        self.assertTrue(np.isnan(gsc_jax.fit_temperature(masked, label_at_minus_inf)))

    def test_bad_bracket(self):
        with self.assertRaisesRegex(ValueError, "min_temperature"):
            gsc_jax.fit_temperature(
                np.zeros((3, 2), np.float32), np.zeros(3, int), min_temperature=0
            )


MULTI_DEVICE_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import gsc_jax
    from gsc_jax import metrics
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(256, 10)) * 2).astype(np.float32)
    labels = rng.integers(0, 10, 256)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = NamedSharding(mesh, P("data"))
    z, y = jax.device_put(logits, sharded), jax.device_put(labels, sharded)

    @jax.jit
    def evaluate(z, y):
        stats = metrics.calibration_stats(jax.nn.softmax(z), y)
        loss = gsc_jax.gsc_loss(z, y, gamma=0.05, top_c=2)
        grads = jax.grad(lambda z: gsc_jax.gsc_loss(z, y, gamma=0.05, top_c=2).mean())(z)
        return stats, loss, grads

    stats, loss, grads = evaluate(z, y)
    print(json.dumps({
        "stats": [np.asarray(s).tolist() for s in stats],
        "ece": float(metrics.expected_calibration_error_from_stats(stats)),
        "loss": np.asarray(loss).tolist(),
        "grads": np.asarray(grads).tolist(),
    }))
    """
)


def _run(device_count):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={device_count}"
    script = MULTI_DEVICE_SCRIPT.replace("== 8", f"== {device_count}")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_eight_fake_devices_equal_one_device():
    eight, one = _run(8), _run(1)
    assert eight["stats"] == one["stats"]
    assert eight["ece"] == one["ece"]
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-6)
    np.testing.assert_allclose(eight["grads"], one["grads"], rtol=1e-5, atol=1e-9)


# --- logits where probabilities are expected, and the reverse: caught where it can be ---------


def _logits_and_probs():
    logits = jax.random.normal(jax.random.key(7), (300, 10)) * 3.0
    labels = jax.random.randint(jax.random.key(8), (300,), 0, 10)
    return logits, jax.nn.softmax(logits), labels


def test_probabilities_passed_as_logits_warn():
    logits, probs, labels = _logits_and_probs()
    for fn in (metrics.negative_log_likelihood, gsc_jax.fit_temperature):
        with pytest.warns(UserWarning, match="look like probabilities"):
            fn(probs, labels)
    with pytest.warns(UserWarning, match="stopped at `m.._temperature`"):  # at a bracket end
        temperature = float(gsc_jax.fit_temperature(probs, labels))
    assert temperature == pytest.approx(0.01, rel=1e-3) or temperature == pytest.approx(100.0)


def test_logits_passed_as_probabilities_give_nan_and_warn():
    logits, probs, labels = _logits_and_probs()
    with pytest.warns(UserWarning, match="not probability distributions"):
        assert np.isnan(metrics.brier_score(logits, labels)).all()  # was 144-ish, silently
    with pytest.warns(UserWarning, match="not probability distributions"):
        assert np.isnan(metrics.expected_calibration_error(logits, labels))
    # Under jit nothing can warn; the value is NaN all the same.
    assert np.isnan(jax.jit(metrics.brier_score)(logits, labels)).all()


def test_the_right_inputs_do_not_warn():
    logits, probs, labels = _logits_and_probs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics.negative_log_likelihood(logits, labels)
        metrics.brier_score(probs, labels)
        metrics.expected_calibration_error(probs, labels)
        gsc_jax.fit_temperature(logits, labels)


def test_stats_add_field_by_field_not_with_plus():
    _, probs, labels = _logits_and_probs()
    a = metrics.calibration_stats(probs[:100], labels[:100])
    b = metrics.calibration_stats(probs[100:], labels[100:])
    added = jax.tree.map(jnp.add, a, b)
    merged = metrics.merge_calibration_stats(a, b)
    assert float(metrics.expected_calibration_error_from_stats(added)) == float(
        metrics.expected_calibration_error_from_stats(merged)
    )
    assert len(a + b) == 2 * len(a)  # `+` concatenates the named tuples (what the docs warn of)
