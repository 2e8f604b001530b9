"""Eight fake CPU devices (data parallel over a 'data' mesh) train like one device."""

import json

import numpy as np
import pytest
from _experiments_util import run_python
from _experiments_util import synthetic_dataset
from _experiments_util import write_npz

pytestmark = pytest.mark.slow

SCRIPT = """
import json, sys
import jax
jax.config.update("jax_disable_most_optimizations", True)
sys.path.insert(0, "tests")
from _experiments_util import tiny_cifar_config
from experiments.common import loop
config = tiny_cifar_config(NPZ, epochs=3, eval_batch_size=16, loss__gsc__gamma=0.05,
                           loss__gsc__top_c=2)
result = loop.train_and_evaluate(config, WORKDIR)
assert result.status == loop.COMPLETED, result.message
records = [json.loads(x) for x in open(WORKDIR + "/metrics.jsonl")]
print("RESULT", json.dumps({"devices": jax.device_count(), "records": records,
                            "num_devices": result.summary["num_devices"],
                            "summary": {k: result.summary[k] for k in
                                        ("test/top1", "test/nll", "test/ece")}}))
"""


def _run(tmp_path, npz, n_devices):
    workdir = tmp_path / f"d{n_devices}"
    proc = run_python(
        SCRIPT.replace("NPZ", repr(npz)).replace("WORKDIR", repr(str(workdir))),
        {
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={n_devices}",
            "JAX_PLATFORMS": "cpu",
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def test_eight_devices_match_one_device(tmp_path):
    npz = write_npz(tmp_path, synthetic_dataset(n_train=48, n_test=20))  # batch 16: 3 steps
    one, eight = _run(tmp_path, npz, 1), _run(tmp_path, npz, 8)
    assert (one["devices"], eight["devices"]) == (1, 8)
    assert (one["num_devices"], eight["num_devices"]) == (1, 8)
    assert [r["epoch"] for r in eight["records"]] == [1, 2, 3]
    for key in ("train/loss", "train/gsc_term", "test/nll", "test/top1", "test/ece"):
        np.testing.assert_allclose(
            [r[key] for r in eight["records"]],
            [r[key] for r in one["records"]],
            rtol=1e-4,
            atol=1e-5,
        )
    for key in ("test/nll", "test/ece"):
        np.testing.assert_allclose(eight["summary"][key], one["summary"][key], rtol=1e-4, atol=1e-6)
