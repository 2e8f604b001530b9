"""The shared evaluation summary against NumPy, over padded and masked batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.common import evaluators
from experiments.common import parallel
from experiments.common.data import memory
from experiments.common.evaluators import classification as evaluation

pytestmark = pytest.mark.usefixtures("fast_compile")


def _numpy_summary(logits, labels, num_bins=15):
    """Top-1, top-5, NLL and ECE (Guo et al. 2017: bins (m/M, (m+1)/M]) in float64 NumPy."""
    z = logits.astype(np.float64)
    log_probs = z - z.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    probs = np.exp(log_probs)
    n = len(labels)
    rank = (z > z[np.arange(n), labels][:, None]).sum(-1)
    confidence, prediction = probs.max(-1), probs.argmax(-1)
    bins = np.clip(np.ceil(confidence * num_bins).astype(int) - 1, 0, num_bins - 1)
    ece = sum(
        abs(np.mean(prediction[bins == m] == labels[bins == m]) - np.mean(confidence[bins == m]))
        * np.sum(bins == m)
        / n
        for m in range(num_bins)
        if np.any(bins == m)
    )
    return {
        "top1": np.mean(rank < 1),
        "top5": np.mean(rank < 5),
        "nll": -np.mean(log_probs[np.arange(n), labels]),
        "ece": ece,
    }


def _classification(logits, labels, batch_size, population=0):
    """The 'classification' evaluator of a test split whose example i has logits `logits[i]`:
    the split's images are the indices i (uint8 [M, 1, 1, 1]), the model looks them up and
    scales them by the state (a population's state holds one scale per member)."""
    n = len(labels)
    index = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)
    source = memory.ArraySource(
        memory.Dataset(index, labels, index, labels, tuple(f"c{k}" for k in range(logits.shape[1])))
    )
    table = jnp.asarray(logits)

    def lookup(state, images):
        return state * table[images[:, 0, 0, 0].astype(jnp.int32)]

    if population:
        lookup = jax.vmap(lookup, in_axes=(0, None))
    mesh = parallel.make_mesh()
    context = evaluators.Context(
        None,
        source,
        None,
        lookup,
        mesh,
        parallel.replicated(mesh),
        logits.shape[1],
        15,
        batch_size,
        population,
        "",
    )
    return evaluators.TYPES["classification"](
        "test", {"type": "classification", "split": "test"}, context
    )


def test_padded_batches_equal_numpy_on_the_real_examples():
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(37, 10)) * 3).astype(np.float32)
    labels = rng.integers(0, 10, 37).astype(np.int32)
    images, padded_labels, mask = memory.pad_to_multiple(logits, labels, 8)
    assert images.shape == (40, 10) and mask.sum() == 37 and not padded_labels[37:].any()
    # The split of 37 examples in batches of 8: the last batch holds 3 examples and 5 padding.
    got, details = _classification(logits, labels, batch_size=8).run(jnp.float32(1.0))
    want = _numpy_summary(logits, labels)
    assert got["count"] == 37 and got["nonfinite"] == 0
    for key in ("top1", "top5", "nll", "ece"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert sum(details["reliability"]["count"]) == 37
    # The same sums in one unpadded batch.
    whole = evaluation.finalize(jax.device_get(evaluation.batch_sums(logits, labels)))
    for key in ("top1", "top5", "nll", "ece"):
        np.testing.assert_allclose(whole[key], got[key], rtol=1e-6, err_msg=key)


def test_a_population_reports_each_member_and_pools_the_details():
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(21, 5)) * 2).astype(np.float32)
    labels = rng.integers(0, 5, 21).astype(np.int32)
    scales = jnp.array([1.0, 0.25])
    got, details = _classification(logits, labels, batch_size=4, population=2).run(scales)
    for i, scale in enumerate(np.asarray(scales)):
        want = _numpy_summary(scale * logits, labels)
        for key in ("top1", "top5", "nll", "ece"):
            np.testing.assert_allclose(got[key][i], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert got["count"] == [21, 21]
    assert details["pooled"]["count"] == 42 and sum(details["reliability"]["count"]) == 42


def test_nonfinite_logits_are_never_correct_and_are_counted():
    logits = jnp.array([[5.0, 0.0, 0.0], [jnp.nan, jnp.nan, jnp.nan], [0.0, jnp.inf, 0.0]])
    labels = jnp.array([0, 0, 1])
    out = evaluation.finalize(jax.device_get(evaluation.batch_sums(logits, labels)))
    assert out["count"] == 3 and out["nonfinite"] == 2
    assert out["top1"] == pytest.approx(1 / 3) and out["top5"] == pytest.approx(1 / 3)
    assert np.isnan(out["nll"])
    padding = evaluation.batch_sums(logits, labels, example_mask=jnp.array([True, False, False]))
    out = evaluation.finalize(jax.device_get(padding))  # masked rows count for nothing
    assert (out["count"], out["nonfinite"], out["top1"]) == (1, 0, 1.0)
    assert np.isfinite(out["nll"])


def test_no_examples_gives_nan_not_an_error():
    out = evaluation.finalize(jax.device_get(evaluation.zeros(4)))
    assert out["count"] == 0 and np.isnan(out["top1"]) and np.isnan(out["nll"])
