"""Eight fake CPU devices (data parallel over a 'data' mesh) train like one device."""

import json

import numpy as np

from _experiments_util import run_python

SCRIPT = """
import json, sys
import jax
jax.config.update("jax_disable_most_optimizations", True)
sys.path.insert(0, "tests")
from _experiments_util import synthetic_dataset, tiny_config
from experiments.common import losses
from experiments.cifar10 import train
spec = losses.LossSpec("ce", gsc_gamma=0.05, gsc_top_c=2)
config = tiny_config(spec, epochs=3, eval_batch_size=16)
result = train.run(config, synthetic_dataset(n_train=48, n_test=20), sys.argv[1])
records = [json.loads(x) for x in open(sys.argv[1] + "/metrics.jsonl")]
print("RESULT", json.dumps({"devices": jax.device_count(), "records": records,
                            "summary": {k: result.summary[k] for k in
                                        ("test_accuracy", "test_nll", "test_ece")}}))
"""


def _run(tmp_path, n_devices):
    workdir = tmp_path / f"d{n_devices}"
    proc = run_python(SCRIPT.replace("sys.argv[1]", repr(str(workdir))),
                      {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n_devices}",
                       "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_eight_devices_match_one_device(tmp_path):
    one, eight = _run(tmp_path, 1), _run(tmp_path, 8)
    assert (one["devices"], eight["devices"]) == (1, 8)
    for key in ("train_loss", "test_nll", "test_top1", "test_ece"):
        np.testing.assert_allclose([r[key] for r in eight["records"]],
                                   [r[key] for r in one["records"]], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(eight["summary"]["test_nll"], one["summary"]["test_nll"],
                               rtol=1e-4)
