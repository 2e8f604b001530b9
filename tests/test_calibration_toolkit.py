"""Selective classification, Brier decomposition, classwise ECE and vector/matrix scaling.

Each metric is checked against a brute-force NumPy formula and for exact accumulation over batches
and devices; the post-hoc fits for finiteness on degenerate held-out sets and for recovering a
known affine distortion of the logits.
"""

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gsc_jax
from gsc_jax import metrics


def random_predictions(seed, n=400, k=5, temperature=2.0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, k)) * temperature).astype(np.float32)
    labels = np.where(rng.random(n) < 0.6, logits.argmax(-1), rng.integers(0, k, n))
    return logits, labels, np.asarray(jax.nn.softmax(logits))


def bin_index(values, num_bins):
    """(lower, upper] equal-width bins in float64, 0 in the first bin."""
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    index = np.searchsorted(edges, values.astype(np.float64), side="left") - 1
    return np.clip(index, 0, num_bins - 1)


def brute_force_aurc(scores, correct):
    """Per-example AURC: each example gets the risk of all examples scored at least as high."""
    risks = [np.mean(~correct[scores >= s]) for s in scores]
    return float(np.mean(risks))


# ----------------------------------------------------------------------------- selective
@pytest.mark.parametrize("num_bins", [1, 10, 4096])
def test_aurc_matches_brute_force_with_binned_ties(num_bins):
    _, labels, probs = random_predictions(0)
    confidence = probs.max(-1)
    correct = probs.argmax(-1) == labels
    expected = brute_force_aurc(bin_index(confidence, num_bins), correct)
    got = metrics.area_under_risk_coverage(probs, labels, num_bins=num_bins)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-7)


def test_aurc_on_fine_bins_is_the_exact_per_example_aurc():
    # Confidences in distinct bins of a 4096-bin histogram: binning loses nothing, and the
    # result is the per-example AURC of the raw confidences.
    rng = np.random.default_rng(1)
    confidence = (rng.choice(np.arange(2048, 4096), size=150, replace=False) + 0.5) / 4096
    probs = np.stack([confidence, 1 - confidence], -1).astype(np.float32)
    labels = rng.integers(0, 2, size=150)
    correct = labels == 0
    assert len(np.unique(bin_index(probs.max(-1), 4096))) == 150
    got = metrics.area_under_risk_coverage(probs, labels)
    np.testing.assert_allclose(float(got), brute_force_aurc(confidence, correct), rtol=1e-5)


def test_risk_coverage_curve_matches_thresholding():
    _, labels, probs = random_predictions(2)
    num_bins = 8
    stats = metrics.calibration_stats(probs, labels, num_bins=num_bins)
    curve = metrics.risk_coverage_curve_from_stats(stats)
    bins = bin_index(probs.max(-1), num_bins)
    wrong = probs.argmax(-1) != labels
    for m in range(num_bins):
        accepted = bins >= m
        np.testing.assert_allclose(float(curve["coverage"][m]), accepted.mean(), rtol=1e-6)
        risk = wrong[accepted].mean() if accepted.any() else 0.0
        np.testing.assert_allclose(float(curve["risk"][m]), risk, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(curve["threshold"], np.arange(num_bins) / num_bins)


def test_aurc_extremes_and_invalid():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], np.float32)
    assert float(metrics.area_under_risk_coverage(probs, probs.argmax(-1))) == 0.0
    assert float(metrics.area_under_risk_coverage(probs, 1 - probs.argmax(-1))) == 1.0
    # The confident error costs more than the unconfident one.
    high = float(metrics.area_under_risk_coverage(probs, np.array([1, 0, 1])))
    low = float(metrics.area_under_risk_coverage(probs, np.array([0, 1, 1])))
    assert high > low > 0.0
    bad = probs.copy()
    bad[0, 0] = np.nan
    assert np.isnan(float(metrics.area_under_risk_coverage(bad, np.array([0, 0, 1]))))
    empty = metrics.calibration_stats(probs, np.zeros(3, int), example_mask=np.zeros(3, bool))
    assert float(metrics.area_under_risk_coverage_from_stats(empty)) == 0.0


# ----------------------------------------------------------------------------- classwise stats
def brute_force_classwise(probs, labels, num_bins):
    """Per class, per bin: count, hits and sum of p_k in float64; SCE and Murphy's terms."""
    n, k = probs.shape
    sce = 0.0
    rel = res = unc = binned_brier = 0.0
    for c in range(k):
        p = probs[:, c].astype(np.float64)
        outcome = (labels == c) | (labels == c - k)
        base = outcome.mean()
        unc += base * (1 - base)
        bins = bin_index(p, num_bins)
        forecast = np.zeros(n)
        for m in range(num_bins):
            in_bin = bins == m
            if not in_bin.any():
                continue
            gap = outcome[in_bin].mean() - p[in_bin].mean()
            sce += in_bin.mean() * abs(gap) / k
            rel += in_bin.mean() * gap**2
            res += in_bin.mean() * (outcome[in_bin].mean() - base) ** 2
            forecast[in_bin] = p[in_bin].mean()
        binned_brier += np.mean((forecast - outcome) ** 2)
    return sce, rel, res, unc, binned_brier


@pytest.mark.parametrize("num_bins", [1, 15])
def test_classwise_ece_and_brier_decomposition_match_brute_force(num_bins):
    _, labels, probs = random_predictions(3)
    labels = np.where(np.arange(len(labels)) % 7 == 0, labels - probs.shape[1], labels)
    sce, rel, res, unc, binned_brier = brute_force_classwise(probs, labels, num_bins)
    stats = metrics.classwise_calibration_stats(probs, labels, num_bins=num_bins)
    assert stats.count.shape == (probs.shape[1], num_bins)
    np.testing.assert_allclose(
        float(metrics.classwise_calibration_error_from_stats(stats)), sce, rtol=1e-5, atol=1e-7
    )
    parts = metrics.brier_decomposition_from_stats(stats)
    np.testing.assert_allclose(float(parts["reliability"]), rel, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(float(parts["resolution"]), res, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(parts["uncertainty"]), unc, rtol=1e-5)
    # REL - RES + UNC is the Brier score of the binned forecast, computed independently.
    np.testing.assert_allclose(float(parts["brier"]), binned_brier, rtol=1e-5)


def test_brier_decomposition_tends_to_the_brier_score():
    _, labels, probs = random_predictions(4)
    brier = float(np.mean(metrics.brier_score(probs, labels)))
    parts = metrics.brier_decomposition(probs, labels, num_bins=4096)
    np.testing.assert_allclose(float(parts["brier"]), brier, rtol=1e-3)


def test_classwise_ece_one_class_is_binary_ece():
    # With two classes SCE averages the ECE-like gaps of p_0 and p_1 = 1 - p_0; with a forecast
    # that equals the label frequency in each bin it is 0.
    probs = np.array([[0.25, 0.75]] * 4 + [[1.0, 0.0]] * 2, np.float32)
    labels = np.array([0, 1, 1, 1, 0, 0])
    assert float(metrics.classwise_calibration_error(probs, labels, num_bins=10)) == 0.0
    labels = np.array([1, 1, 1, 1, 0, 0])
    np.testing.assert_allclose(
        float(metrics.classwise_calibration_error(probs, labels, num_bins=10)),
        (4 / 6) * 0.25,
        rtol=1e-6,
    )


def test_classwise_batched_equals_one_shot_bit_for_bit():
    _, labels, probs = random_predictions(5, n=300)
    mask = np.arange(300) % 11 != 0
    one_shot = metrics.classwise_calibration_stats(probs, labels, num_bins=15, example_mask=mask)
    merged = None
    for start in range(0, 300, 70):
        part = metrics.classwise_calibration_stats(
            probs[start : start + 70],
            labels[start : start + 70],
            num_bins=15,
            example_mask=mask[start : start + 70],
        )
        merged = part if merged is None else metrics.merge_classwise_calibration_stats(merged, part)
    for a, b in zip(one_shot, merged):
        np.testing.assert_array_equal(a, b)
    summed = jax.tree_util.tree_map(
        lambda a, b: a + b,
        metrics.classwise_calibration_stats(probs[:150], labels[:150], example_mask=mask[:150]),
        metrics.classwise_calibration_stats(probs[150:], labels[150:], example_mask=mask[150:]),
    )
    for fn in (metrics.classwise_calibration_error_from_stats,):
        assert np.asarray(fn(one_shot)).tobytes() == np.asarray(fn(merged)).tobytes()
        assert np.asarray(fn(one_shot)).tobytes() == np.asarray(fn(summed)).tobytes()
    for key, value in metrics.brier_decomposition_from_stats(one_shot).items():
        for other in (merged, summed):
            got = metrics.brier_decomposition_from_stats(other)[key]
            assert np.asarray(value).tobytes() == np.asarray(got).tobytes(), key


def test_classwise_invalid_rows_and_overflow_give_nan():
    _, labels, probs = random_predictions(6, n=20)
    logits_by_mistake = probs * 3.0
    stats = metrics.classwise_calibration_stats(logits_by_mistake, labels)
    assert int(stats.invalid) == 20 and int(stats.count.sum()) == 0
    assert np.isnan(float(metrics.classwise_calibration_error_from_stats(stats)))
    assert all(np.isnan(float(v)) for v in metrics.brier_decomposition_from_stats(stats).values())
    good = metrics.classwise_calibration_stats(probs, labels)
    overflowed = good._replace(count=good.count.at[0, 0].set(-1))
    assert np.isnan(float(metrics.classwise_calibration_error_from_stats(overflowed)))
    assert (
        float(
            metrics.classwise_calibration_error_from_stats(
                metrics.classwise_calibration_stats(probs, labels, example_mask=np.zeros(20, bool))
            )
        )
        == 0.0
    )


def test_classwise_bad_arguments_raise():
    _, labels, probs = random_predictions(7, n=10)
    with pytest.raises(ValueError, match="num_bins"):
        metrics.classwise_calibration_stats(probs, labels, num_bins=0)
    with pytest.raises(ValueError, match="example_mask"):
        metrics.classwise_calibration_stats(probs, labels, example_mask=np.ones(3, bool))
    with pytest.raises(TypeError, match="labels"):
        metrics.classwise_calibration_stats(probs, labels.astype(np.float32))
    a = metrics.classwise_calibration_stats(probs, labels, num_bins=4)
    b = metrics.classwise_calibration_stats(probs, labels, num_bins=5)
    with pytest.raises(ValueError, match="Cannot merge"):
        metrics.merge_classwise_calibration_stats(a, b)


MULTI_DEVICE_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from gsc_jax import metrics
    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    probs = np.asarray(jax.nn.softmax(rng.normal(size=(8, 40, 5)) * 2.0), np.float32)
    labels = rng.integers(-5, 6, size=(8, 40))

    def per_device(p, y):
        stats = metrics.classwise_calibration_stats(p, y, num_bins=15)
        top = metrics.calibration_stats(p, y, num_bins=64)
        return jax.lax.psum((stats, top), "d")

    stats, top = jax.pmap(per_device, axis_name="d")(probs, labels)
    stats = jax.tree_util.tree_map(lambda x: x[0], stats)
    top = jax.tree_util.tree_map(lambda x: x[0], top)
    one = metrics.classwise_calibration_stats(probs.reshape(-1, 5), labels.reshape(-1))
    one_top = metrics.calibration_stats(probs.reshape(-1, 5), labels.reshape(-1), num_bins=64)
    values = [metrics.classwise_calibration_error_from_stats(s) for s in (stats, one)]
    values += [metrics.brier_decomposition_from_stats(s)["brier"] for s in (stats, one)]
    values += [metrics.area_under_risk_coverage_from_stats(s) for s in (top, one_top)]
    values += [metrics.l2_calibration_error_from_stats(s)["squared_l2_ece"] for s in (top, one_top)]
    values += [metrics.smooth_calibration_error_from_stats(s)["smooth_ece"] for s in (top, one_top)]
    print(json.dumps([np.asarray(v).tobytes().hex() for v in values]))
    """
)


def test_eight_fake_devices_equal_one_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE_SCRIPT], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    values = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(values) == 10
    for device_sum, one_device in zip(values[::2], values[1::2]):
        assert device_sum == one_device


# ----------------------------------------------------------------------------- post-hoc scaling
def softmax_np(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def distorted_held_out(seed, n=3000, k=4):
    """True logits, labels drawn from their softmax, and the true probabilities."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(size=(n, k)) * 2.0
    probs = softmax_np(true_logits)
    labels = (rng.random((n, 1)) > np.cumsum(probs, -1)).sum(-1)
    return true_logits, labels, probs


def test_matrix_scaling_recovers_an_affine_distortion():
    true_logits, labels, probs = distorted_held_out(0)
    distortion = np.diag([0.5, 2.0, 1.0, 3.0])
    distortion[0, 1] = 0.3
    shift = np.array([1.0, -1.0, 0.5, 0.0])
    observed = ((true_logits - shift) @ np.linalg.inv(distortion).T).astype(np.float32)
    weight, bias = gsc_jax.fit_matrix_scaling(observed, labels)
    fitted = softmax_np(observed @ np.asarray(weight, np.float64).T + np.asarray(bias))
    before = np.abs(softmax_np(observed) - probs).mean()
    after = np.abs(fitted - probs).mean()
    assert after < 0.03 < before


def test_vector_scaling_recovers_a_per_class_distortion():
    true_logits, labels, probs = distorted_held_out(1)
    scale = np.array([0.5, 2.0, 1.0, 3.0])
    shift = np.array([1.0, -1.0, 0.5, 0.0])
    observed = ((true_logits - shift) / scale).astype(np.float32)
    fitted_scale, fitted_bias = gsc_jax.fit_vector_scaling(observed, labels)
    fitted = softmax_np(observed * np.asarray(fitted_scale) + np.asarray(fitted_bias))
    assert np.abs(fitted - probs).mean() < 0.03 < np.abs(softmax_np(observed) - probs).mean()
    # Softmax is invariant to a common shift of the bias; the scales are identified.
    np.testing.assert_allclose(np.asarray(fitted_scale), scale, rtol=0.15)


def test_vector_scaling_is_the_nll_minimiser():
    # At the fit, the gradient of the penalised mean NLL (float64 central differences) vanishes.
    logits, labels, _ = random_predictions(8, n=200, k=3)
    scale, bias = gsc_jax.fit_vector_scaling(logits, labels, l2_penalty=1e-2)
    params = np.concatenate([np.asarray(scale), np.asarray(bias)]).astype(np.float64)

    def objective(theta):
        z = logits.astype(np.float64) * theta[:3] + theta[3:]
        logp = np.log(softmax_np(z))
        nll = -np.mean(logp[np.arange(len(labels)), labels])
        return nll + 0.005 * (np.sum((theta[:3] - 1) ** 2) + np.sum(theta[3:] ** 2))

    eps = 1e-5
    grad = [
        (objective(params + eps * e) - objective(params - eps * e)) / (2 * eps) for e in np.eye(6)
    ]
    np.testing.assert_allclose(grad, 0.0, atol=1e-4)


@pytest.mark.parametrize("fit", [gsc_jax.fit_vector_scaling, gsc_jax.fit_matrix_scaling])
@pytest.mark.parametrize("case", ["all_correct", "all_wrong", "one_class", "huge_logits"])
def test_degenerate_held_out_sets_give_finite_parameters(fit, case):
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(60, 4)).astype(np.float32)
    if case == "all_correct":
        labels = logits.argmax(-1)
    elif case == "all_wrong":
        labels = (logits.argmax(-1) + 1) % 4
    elif case == "one_class":
        labels = np.full(60, 2)
    else:
        logits = logits * 1e4
        labels = logits.argmax(-1)
    params = fit(logits, labels)
    for p in params:
        assert np.all(np.isfinite(np.asarray(p))), (case, p)
    calibrated = (
        logits * params[0] + params[1]
        if params[0].ndim == 1
        else logits @ np.asarray(params[0]).T + params[1]
    )
    nll_before = float(np.mean(metrics.negative_log_likelihood(logits, labels)))
    nll_after = float(np.mean(metrics.negative_log_likelihood(calibrated, labels)))
    assert np.isfinite(nll_after) and nll_after <= nll_before + 1e-4
    if case == "one_class":
        assert np.all(np.asarray(jax.nn.softmax(calibrated))[:, 2] > 0.5)


@pytest.mark.parametrize("fit", [gsc_jax.fit_vector_scaling, gsc_jax.fit_matrix_scaling])
def test_scaling_unusable_inputs_give_nan_and_mask_and_jit(fit):
    logits, labels, _ = random_predictions(10, n=50, k=3)
    bad = logits.copy()
    bad[3, 1] = np.nan
    assert all(np.all(np.isnan(np.asarray(p))) for p in fit(bad, labels))
    assert all(np.all(np.isnan(np.asarray(p))) for p in fit(logits, np.full(50, 3)))
    mask = np.arange(50) != 3
    masked = fit(bad, labels, example_mask=mask)
    dropped = fit(np.delete(logits, 3, 0), np.delete(labels, 3))
    for a, b in zip(masked, dropped):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    jitted = jax.jit(fit)(jnp.asarray(logits), jnp.asarray(labels))
    for a, b in zip(jitted, fit(logits, labels)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="l2_penalty"):
        fit(logits, labels, l2_penalty=0.0)
    with pytest.raises(ValueError, match="num_iterations"):
        fit(logits, labels, num_iterations=0)
    with pytest.raises(ValueError, match="logits"):
        fit(logits[0], labels[0])


# ----------------------------------------------------------------------------- L2 and smooth ECE
def brute_force_l2(confidence, correct, num_bins, debias):
    """Squared L2 calibration error over equal-width bins, per Kumar et al. (2019), in float64."""
    bins = bin_index(confidence, num_bins)
    total = 0.0
    for m in range(num_bins):
        in_bin = bins == m
        size = in_bin.sum()
        if size == 0 or (debias and size < 2):
            continue
        accuracy = correct[in_bin].mean()
        term = (accuracy - confidence[in_bin].astype(np.float64).mean()) ** 2
        if debias:
            term -= accuracy * (1 - accuracy) / (size - 1)
        total += size / len(confidence) * term
    return total


@pytest.mark.parametrize("num_bins", [1, 15, 100])
@pytest.mark.parametrize("debias", [True, False])
def test_l2_calibration_error_matches_brute_force(num_bins, debias):
    _, labels, probs = random_predictions(11, n=300)
    probs = probs.copy()
    # One example alone in the top bin: dropped by the debiased estimate, kept by the plug-in one.
    probs[0] = [0.9999, 0.0001, 0.0, 0.0, 0.0]
    probs[1:][probs[1:].max(-1) > 0.99] = [0.313, 0.287, 0.2, 0.1, 0.1]
    confidence, correct = probs.max(-1), probs.argmax(-1) == labels
    expected = brute_force_l2(confidence, correct, num_bins, debias)
    got = metrics.l2_calibration_error(probs, labels, num_bins=num_bins, debias=debias)
    np.testing.assert_allclose(float(got["squared_l2_ece"]), expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        float(got["l2_ece"]), np.sqrt(max(expected, 0.0)), rtol=1e-4, atol=1e-6
    )


def test_debiased_l2_removes_the_sampling_bias():
    # Labels drawn from the top-1 confidence: a calibrated model. The plug-in estimate stays
    # positive (about M/(4N) of binomial noise); the debiased one is centred on 0 and clamped.
    rng = np.random.default_rng(12)
    plug_in, debiased = [], []
    for _ in range(20):
        confidence = rng.uniform(0.5, 1.0, size=200)
        probs = np.stack([confidence, 1 - confidence], -1).astype(np.float32)
        labels = (rng.random(200) >= confidence).astype(int)
        stats = metrics.calibration_stats(probs, labels, num_bins=10)
        plug_in.append(
            float(metrics.l2_calibration_error_from_stats(stats, debias=False)["squared_l2_ece"])
        )
        debiased.append(float(metrics.l2_calibration_error_from_stats(stats)["squared_l2_ece"]))
    assert np.mean(plug_in) > 3 * abs(np.mean(debiased))
    assert min(debiased) < 0.0 < min(plug_in)
    probs = np.array([[0.5, 0.5]], np.float32)
    assert float(metrics.l2_calibration_error(probs, np.array([0]))["l2_ece"]) == 0.0


def test_l2_calibration_error_edge_cases_and_arguments():
    _, labels, probs = random_predictions(13, n=20)
    empty = metrics.calibration_stats(probs, labels, example_mask=np.zeros(20, bool))
    assert all(float(v) == 0.0 for v in metrics.l2_calibration_error_from_stats(empty).values())
    bad = probs.copy()
    bad[2, 0] = np.nan
    assert all(np.isnan(float(v)) for v in metrics.l2_calibration_error(bad, labels).values())
    with pytest.raises(ValueError, match="debias"):
        metrics.l2_calibration_error(probs, labels, debias="yes")
    with pytest.raises(ValueError, match="debias"):
        metrics.l2_calibration_error_from_stats(empty, debias=1)
    with pytest.raises(ValueError, match="num_bins"):
        metrics.l2_calibration_error(probs, labels, num_bins=0)


def reflected_gaussian_smooth_ece(confidence, residual, sigma, num_points=4001):
    """Exact smECE_sigma on the raw points in float64: the integral over [0, 1] of
    |mean_i r_i K(t, f_i)|, K the Gaussian folded onto [0, 1] (images f + 2j and -f + 2j),
    by the trapezoid rule on `num_points` points."""
    t = np.linspace(0.0, 1.0, num_points)
    smoothed = np.zeros(num_points)
    for j in range(-2, 3):
        for image in (confidence + 2 * j, -confidence + 2 * j):
            z = (t[:, None] - image[None, :]) / sigma
            smoothed += np.exp(-0.5 * z * z) @ residual
    smoothed /= len(confidence) * sigma * np.sqrt(2 * np.pi)
    return np.trapezoid(np.abs(smoothed), t)


@pytest.mark.parametrize("seed, temperature", [(14, 2.0), (15, 4.0)])
def test_smooth_ece_matches_the_exact_kernel_estimate(seed, temperature):
    _, labels, probs = random_predictions(seed, n=800, k=4, temperature=temperature)
    confidence = probs.max(-1).astype(np.float64)
    residual = (probs.argmax(-1) == labels) - confidence
    got = metrics.smooth_calibration_error(probs, labels)
    sigma, smooth_ece = float(got["sigma"]), float(got["smooth_ece"])
    # The 4096-bin histogram moves each point by less than a bin width h = 2.4e-4; the bin's mean
    # confidence is kept, so the first-order error cancels and what remains is far below h
    # (measured: ~1e-6 here). Allow h / 4.
    exact = reflected_gaussian_smooth_ece(confidence, residual, sigma)
    np.testing.assert_allclose(smooth_ece, exact, atol=6e-5)
    # sigma is the fixed point of the exact estimator to within 1%: smECE_s - s changes sign.
    assert reflected_gaussian_smooth_ece(confidence, residual, 0.99 * sigma) > 0.99 * sigma
    assert reflected_gaussian_smooth_ece(confidence, residual, 1.01 * sigma) < 1.01 * sigma
    np.testing.assert_allclose(smooth_ece, sigma, rtol=1e-5)


def test_smooth_ece_extremes():
    # Every bin calibrated (3 of 4 right at 0.75, 1 of 2 at 0.5): the smoothed residual is 0.
    probs = np.array([[0.75, 0.25]] * 4 + [[0.5, 0.5]] * 2, np.float32)
    labels = np.array([0, 0, 0, 1, 0, 1])
    got = metrics.smooth_calibration_error(probs, labels)
    assert float(got["smooth_ece"]) < 1e-6 and float(got["sigma"]) < 1e-6
    # Certain and always wrong: the residual is -1 everywhere, smECE_s = 1 for all s, so s* = 1.
    got = metrics.smooth_calibration_error(np.array([[1.0, 0.0]] * 3, np.float32), np.ones(3, int))
    np.testing.assert_allclose([float(got["smooth_ece"]), float(got["sigma"])], 1.0, rtol=1e-5)
    empty = metrics.calibration_stats(probs, labels, num_bins=64, example_mask=np.zeros(6, bool))
    assert all(float(v) == 0.0 for v in metrics.smooth_calibration_error_from_stats(empty).values())
    bad = probs * 3.0
    assert all(np.isnan(float(v)) for v in metrics.smooth_calibration_error(bad, labels).values())
    with pytest.raises(ValueError, match="num_bins"):
        metrics.smooth_calibration_error(probs, labels, num_bins=0)


def test_l2_and_smooth_ece_batched_equal_one_shot_bit_for_bit():
    _, labels, probs = random_predictions(16, n=300)
    mask = np.arange(300) % 13 != 0
    for num_bins in (15, 4096):
        one_shot = metrics.calibration_stats(probs, labels, num_bins=num_bins, example_mask=mask)
        merged = None
        for start in range(0, 300, 70):
            part = metrics.calibration_stats(
                probs[start : start + 70],
                labels[start : start + 70],
                num_bins=num_bins,
                example_mask=mask[start : start + 70],
            )
            merged = part if merged is None else metrics.merge_calibration_stats(merged, part)
        summed = jax.tree_util.tree_map(
            lambda a, b: a + b,
            metrics.calibration_stats(
                probs[:150], labels[:150], num_bins=num_bins, example_mask=mask[:150]
            ),
            metrics.calibration_stats(
                probs[150:], labels[150:], num_bins=num_bins, example_mask=mask[150:]
            ),
        )
        for fn in (
            metrics.l2_calibration_error_from_stats,
            functools.partial(metrics.l2_calibration_error_from_stats, debias=False),
            metrics.smooth_calibration_error_from_stats,
        ):
            for key, value in fn(one_shot).items():
                for other in (merged, summed):
                    assert np.asarray(value).tobytes() == np.asarray(fn(other)[key]).tobytes()
        masked = metrics.smooth_calibration_error(
            probs, labels, num_bins=num_bins, example_mask=mask
        )
        dropped = metrics.smooth_calibration_error(probs[mask], labels[mask], num_bins=num_bins)
        assert float(masked["smooth_ece"]) == float(dropped["smooth_ece"])


# ----------------------------------------------------------------------------- plots
def test_reliability_diagram_plot_shows_accuracy_gap_and_counts(tmp_path):
    pytest.importorskip("matplotlib")
    from gsc_jax import plots

    _, labels, probs = random_predictions(17, n=300)
    stats = metrics.calibration_stats(probs, labels, num_bins=10)
    diagram = {k: np.asarray(v) for k, v in metrics.reliability_diagram(stats).items()}
    # The lists of a JSON summary, with null for NaN, draw the same.
    as_json = json.loads(json.dumps({k: v.tolist() for k, v in diagram.items()}))
    path = tmp_path / "reliability.png"
    for data in (stats, as_json):
        fig, ax, counts_ax = plots.reliability_diagram(data, title="t", ece=0.1, path=str(path))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(fig.axes) == 2 and "ECE=10.00%" in ax.get_title()
        shown = diagram["count"] > 0
        accuracy_bars = ax.containers[0]
        np.testing.assert_allclose(
            [b.get_height() for b in accuracy_bars], diagram["accuracy"][shown], rtol=1e-6
        )
        gap_bars = ax.containers[1]
        np.testing.assert_allclose(
            [b.get_y() + b.get_height() for b in gap_bars], diagram["confidence"][shown], rtol=1e-6
        )
        # Opacity grows with the count: the fullest bin is opaque, a sparse one is faint.
        alphas = np.array([b.get_facecolor()[3] for b in accuracy_bars])
        counts = diagram["count"][shown]
        assert alphas[np.argmax(counts)] == 1.0
        assert np.all(np.diff(alphas[np.argsort(counts)]) >= 0)
        np.testing.assert_array_equal([b.get_height() for b in counts_ax.patches], diagram["count"])
        assert {t.get_text() for t in counts_ax.texts} == {str(int(c)) for c in counts}


def test_reliability_diagram_on_given_axes_and_unusable_stats():
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from gsc_jax import plots

    del matplotlib
    _, labels, probs = random_predictions(18, n=100)
    ax = Figure().subplots()
    stats = metrics.calibration_stats(probs, labels, num_bins=5)
    fig, got_ax, counts_ax = plots.reliability_diagram(stats, ax)
    assert got_ax is ax and counts_ax is None and fig is ax.figure
    assert {t.get_text() for t in ax.texts} == {str(int(c)) for c in stats.count if c > 0}
    bad = metrics.calibration_stats(probs * 3.0, labels, num_bins=5)
    _, ax, _ = plots.reliability_diagram(bad)
    assert any("no usable" in t.get_text() for t in ax.texts)
    with pytest.raises(TypeError, match="stats_or_diagram"):
        plots.reliability_diagram([0.1, 0.2])
    with pytest.raises(ValueError, match="confidence"):
        plots.reliability_diagram(
            {"bin_lower": [0.0], "bin_upper": [1.0], "count": [1], "accuracy": [1.0]}
        )


def test_risk_coverage_plot_reports_the_aurc(tmp_path):
    pytest.importorskip("matplotlib")
    from gsc_jax import plots

    _, labels, probs = random_predictions(19, n=300)
    stats = metrics.calibration_stats(probs, labels, num_bins=64)
    aurc = float(metrics.area_under_risk_coverage_from_stats(stats))
    curve = metrics.risk_coverage_curve_from_stats(stats)
    fig, ax = plots.risk_coverage_curve(stats, label="a")
    # From the curve alone the AURC is rebuilt from the coverage steps; the two labels agree.
    plots.risk_coverage_curve(
        {k: np.asarray(v).tolist() for k, v in curve.items()},
        ax,
        label="b",
        path=str(tmp_path / "rc.png"),
    )
    labels_shown = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels_shown == [f"a (AURC={aurc:.4f})", f"b (AURC={aurc:.4f})"]
    held = np.asarray(stats.count) > 0
    line = ax.get_lines()[0]
    np.testing.assert_allclose(
        sorted(line.get_xdata()), sorted(np.asarray(curve["coverage"])[held])
    )
    assert (tmp_path / "rc.png").exists() and len(fig.axes) == 1
    with pytest.raises(TypeError, match="stats_or_curve"):
        plots.risk_coverage_curve(np.zeros(3))


def test_plots_without_matplotlib_name_the_extra(monkeypatch):
    from gsc_jax import plots

    for name in ("matplotlib", "matplotlib.figure", "matplotlib.colors"):
        monkeypatch.setitem(sys.modules, name, None)
    stats = metrics.calibration_stats(np.array([[0.7, 0.3]], np.float32), np.array([0]))
    with pytest.raises(ImportError, match=r"gsc-jax\[plots\]"):
        plots.reliability_diagram(stats)
    with pytest.raises(ImportError, match=r"gsc-jax\[plots\]"):
        plots.risk_coverage_curve(stats)


@pytest.mark.parametrize("case", ["all_correct", "all_wrong", "one_class", "huge_logits"])
def test_temperature_of_degenerate_held_out_sets_is_a_bracket_end(case):
    """All correct (the NLL falls as T -> 0): the lower end; all wrong or one class with random
    logits (it falls as T grows): the upper end; never negative, zero or non-finite."""
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(60, 4)).astype(np.float32)
    if case == "huge_logits":
        logits = logits * 1e4
    labels = {
        "all_correct": logits.argmax(-1),
        "huge_logits": logits.argmax(-1),
        "all_wrong": (logits.argmax(-1) + 1) % 4,
        "one_class": np.full(60, 2),
    }[case]
    temperature = float(
        gsc_jax.fit_temperature(logits, labels, min_temperature=0.05, max_temperature=20.0)
    )
    expected = 0.05 if case in ("all_correct", "huge_logits") else 20.0
    np.testing.assert_allclose(temperature, expected, rtol=1e-5)
