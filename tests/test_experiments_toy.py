"""Adding an experiment touches no shared file: a toy task and its config, written here into a
temporary package, train through the one loop with the multiview evaluator.

The toy task: 1-D "signals" of 16 samples as [16, 1, 1] images whose class is the position of a
bright bump (4 classes); evaluation sees each signal as two views, as it is and shifted by one
sample, whose logits the multiview evaluator averages.
"""

import json
import os
import sys
import textwrap

import numpy as np
import pytest

from experiments.common import config as cfg
from experiments.common import loop

pytestmark = pytest.mark.usefixtures("fast_compile")

TASK = '''
"""A toy task: bump position on a 16-sample signal; two evaluation views (as is, shifted)."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from experiments.common.data import memory


def _signals(n, seed):
    rng = np.random.RandomState(seed)
    labels = (np.arange(n) % 4).astype(np.int32)
    images = rng.randint(0, 40, (n, 16, 1, 1)).astype(np.uint8)
    for i, k in enumerate(labels):
        images[i, 4 * k:4 * k + 3] += 200
    return images, labels


def _views(images):
    return jnp.stack([images, jnp.roll(images, 1, axis=1)], axis=1)


def make_source(config):
    train, test = _signals(config.data.num_train, 0), _signals(config.data.num_test, 1)
    dataset = memory.Dataset(*train, *test, ("a", "b", "c", "d"), "toy")
    return memory.ArraySource(dataset, eval_views=_views)


class Net(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train=False):
        del train
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def make_model(config, num_classes, mesh):
    del config, mesh
    return Net(num_classes)
'''

CONFIG = """
from experiments.common import config as base


def get_config():
    config = base.base_config()
    config.task = "toy_experiment.task"
    config.data.num_train = 64
    config.data.num_test = 20
    config.epochs = 6
    config.batch_size = 16
    config.eval_batch_size = 8
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 0.05
    config.loss.gsc.gamma = 0.05
    config.loss.gsc.top_c = 2
    config.evals = {"test": {"type": "multiview", "split": "test"}}
    config.run.progress = False
    config.run.compilation_cache = ""
    return config
"""


@pytest.fixture
def toy_config(tmp_path, monkeypatch):
    package = tmp_path / "toy_experiment"
    (package / "configs").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "task.py").write_text(textwrap.dedent(TASK))
    (package / "configs" / "default.py").write_text(textwrap.dedent(CONFIG))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield str(package / "configs" / "default.py")
    for name in [m for m in sys.modules if m.startswith("toy_experiment")]:
        del sys.modules[name]


def test_a_new_task_and_config_train_with_the_multiview_evaluator(toy_config, tmp_path):
    config = cfg.load(toy_config)[0]
    workdir = str(tmp_path / "run")
    result = loop.train_and_evaluate(config, workdir)
    assert result.summary["status"] == loop.COMPLETED
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    # Every evaluation metric the multiview evaluator yields is logged under the eval's name.
    assert 0.9 <= summary["test/top1"] <= 1.0, summary
    assert np.isfinite(summary["test/ece"]) and np.isfinite(summary["test/nll"])
    assert "test/view_top1" in summary
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["epoch"] for r in records] == list(range(1, 7))
    assert all("train/gsc_weighted" in r for r in records)
