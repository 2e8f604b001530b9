"""The quickstart trains all six losses x seeds in one vmapped program and writes its table."""

import jax
import numpy as np
from tqdm import tqdm

from experiments import quickstart
from experiments.common import data


def test_train_all_and_table():
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)  # tiny model: compile dominates
    try:
        full = data.load_digits()
        ds = full._replace(train_images=full.train_images[:512],
                           train_labels=full.train_labels[:512],
                           test_images=full.test_images[:64], test_labels=full.test_labels[:64])
        with tqdm(total=3, disable=True) as bar:
            out = quickstart.train_all(ds, num_seeds=2, epochs=3, batch_size=64,
                                       learning_rate=1e-2, bar=bar)
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
    assert out["count"].shape == (len(quickstart.LOSSES), 2)
    assert np.all(out["count"] == 64)
    rows = [quickstart.summarize(spec, jax.tree.map(lambda a, i=i: a[i], out))
            for i, spec in enumerate(quickstart.LOSSES)]
    assert all(0.0 <= r["accuracy"]["mean"] <= 1.0 and np.isfinite(r["nll"]["mean"]) for r in rows)
    assert np.mean([r["accuracy"]["mean"] for r in rows]) > 0.5  # learns digits in 24 steps
    table = quickstart.markdown_table(rows, "t")
    assert "| CE+GSC(0.05,2) |" in table and "±" in table
