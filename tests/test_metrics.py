"""Calibration metrics against brute-force per-example computations; exact accumulation."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
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
        a = metrics.calibration_stats(padded_probs, padded_labels, where=mask)
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
        group_of_fine = np.clip(np.floor(num_bins * midpoint / len(conf)).astype(int), 0, num_bins - 1)
        group = group_of_fine[fine]
        expected = sum(
            abs(correct[group == g].sum() - conf[group == g].sum()) for g in range(num_bins)
        ) / len(conf)
        np.testing.assert_allclose(
            metrics.adaptive_calibration_error(probs, labels, num_bins=num_bins), expected, atol=2e-6
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

    def test_bad_bracket(self):
        with self.assertRaisesRegex(ValueError, "min_temperature"):
            gsc_jax.fit_temperature(np.zeros((3, 2), np.float32), np.zeros(3, int), min_temperature=0)


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
