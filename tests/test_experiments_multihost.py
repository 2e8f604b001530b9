"""Two local processes (jax.distributed over CPU, gloo collectives) train like one process.

Each process has one CPU device; the single-process baseline has two, so the global mesh, batch and
sharding are the same. The runs go through `parallel.maybe_initialize_distributed` (configured by
environment variables, as a cluster launcher would) and `loop.train_and_evaluate`, with a checkpointed stop
mid-run and a resume, so that orbax saves and restores across processes too; the stop is a SIGTERM
that only one of the processes receives.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from _experiments_util import REPO
from _experiments_util import _env
from _experiments_util import synthetic_dataset
from _experiments_util import write_npz

pytestmark = pytest.mark.slow

SCRIPT = """
import json, os, signal, sys
import jax
jax.config.update("jax_disable_most_optimizations", True)
# The resume recompiles the run's programs: a per-process persistent cache saves that time.
jax.config.update("jax_compilation_cache_dir", os.environ["JIT_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
from experiments.common import parallel
parallel.maybe_initialize_distributed(False)  # GSC_JAX_MULTIHOST=1 in the multi-process runs
sys.path.insert(0, "tests")
from _experiments_util import tiny_cifar_config
from experiments.common import checkpoint, loop
workdir = os.environ["WORKDIR"]
# 48 training images, batch 16: 3 steps per epoch, 4 epochs: 12 steps.
loss = {"loss__gsc__gamma": 0.5, "loss__gsc__top_c": 2}
config = tiny_cifar_config(os.environ["NPZ"], epochs=4, eval_batch_size=4, **loss)
assert loop.STOP_SYNC_EVERY == 10
enter = checkpoint.StopOnSignal.__enter__
if jax.process_count() > 1:
    # Process 1 alone gets SIGTERM before step 1: both processes must stop at step 10, the first
    # agreement point, and save a checkpoint together.
    def enter_and_signal(self):
        enter(self)
        if jax.process_index() == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return self
    checkpoint.StopOnSignal.__enter__ = enter_and_signal
    part = loop.train_and_evaluate(config, workdir)
    checkpoint.StopOnSignal.__enter__ = enter
else:
    part = loop.train_and_evaluate(tiny_cifar_config(
        os.environ["NPZ"], epochs=4, eval_batch_size=4, run__stop_after_steps=10, **loss),
        workdir)
assert part.status == loop.STOPPED, part.message
result = loop.train_and_evaluate(config, workdir)  # resumes at step 10, mid epoch 4
assert result.status == loop.COMPLETED, result.message
print("RESULT", json.dumps({
    "process": jax.process_index(), "processes": jax.process_count(),
    "devices": jax.device_count(), "local_devices": jax.local_device_count(),
    "stopped_at": int(part.state.step), "interrupted_by": part.interrupted_by,
    "step": int(result.state.step),
    "param_sums": [float(jax.numpy.sum(x)) for x in jax.tree.leaves(result.state.params)],
    "summary": {k: result.summary[k] for k in ("test/top1", "test/nll", "test/ece")}}))
"""
TIMEOUT_S = 1800  # only catches a hang: a correct run on a loaded machine stays far below it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(workdir, cache_dir, devices, npz, extra_env=None):
    env = _env(
        {
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "WORKDIR": str(workdir),
            "JIT_CACHE_DIR": str(cache_dir),
            "NPZ": npz,
            **(extra_env or {}),
        }
    )  # _env drops the proxies: gRPC on localhost
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _finish(procs):
    """Waits for all processes (killing them all on a timeout); returns their RESULT dicts."""
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT_S))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.communicate()
        pytest.fail(f"a process did not finish in {TIMEOUT_S} s")
    results = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
        line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
        results.append((json.loads(line[len("RESULT ") :]), out))
    return results


def _records(workdir):
    return [json.loads(x) for x in open(workdir / "metrics.jsonl")]


def test_two_processes_match_one_process(tmp_path):
    npz = write_npz(tmp_path, synthetic_dataset(n_train=48, n_test=20))
    port = _free_port()
    procs = [
        _start(
            tmp_path / "multi",
            tmp_path / f"cache{i}",
            1,
            npz,
            {
                "GSC_JAX_MULTIHOST": "1",
                "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(i),
            },
        )
        for i in range(2)
    ]
    procs.append(
        _start(tmp_path / "one", tmp_path / "cache_one", 2, npz)
    )  # the baseline, meanwhile
    (m0, out0), (m1, out1), (one, _) = _finish(procs)

    assert (one["processes"], one["devices"]) == (1, 2)
    assert (one["stopped_at"], one["interrupted_by"], one["step"]) == (10, 0, 12)
    for i, m in enumerate((m0, m1)):
        assert (m["process"], m["processes"], m["devices"], m["local_devices"]) == (i, 2, 2, 1)
        # SIGTERM reached process 1 only; both stopped at the same step and report it.
        assert (m["stopped_at"], m["interrupted_by"], m["step"]) == (10, signal.SIGTERM, 12)
    # Same training: every process holds the same parameters, equal to the single process's.
    np.testing.assert_allclose(m1["param_sums"], m0["param_sums"], rtol=0, atol=0)
    np.testing.assert_allclose(m0["param_sums"], one["param_sums"], rtol=1e-4, atol=1e-5)
    assert m0["summary"] == m1["summary"]
    for key in one["summary"]:
        np.testing.assert_allclose(m0["summary"][key], one["summary"][key], rtol=1e-4, atol=1e-5)
    # One metrics record per epoch (written by process 0 only), matching the single process's.
    multi_records, one_records = _records(tmp_path / "multi"), _records(tmp_path / "one")
    assert [r["epoch"] for r in multi_records] == [1, 2, 3, 4]
    for key in (
        "train/loss",
        "train/base_loss",
        "train/gsc_term",
        "test/nll",
        "test/top1",
        "test/ece",
        "learning_rate",
    ):
        np.testing.assert_allclose(
            [r[key] for r in multi_records], [r[key] for r in one_records], rtol=1e-4, atol=1e-5
        )
    assert json.load(open(tmp_path / "multi" / "summary.json"))["num_devices"] == 2
    assert {"10", "12"} <= set(os.listdir(tmp_path / "multi" / "checkpoints"))
    assert "epoch 4/4" in out0 and "Stopped at step 10/12" in out0
    assert "epoch" not in out1 and "Stopped" not in out1  # only process 0 logs
