"""The benchmark suite end to end: one `--smoke` run, its JSON, and `--render` into the docs."""

import json
import math
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = (
    "loss_overhead",
    "top_c_selection",
    "train_step",
    "resnet_step",
    "lm_head",
    "face_step",
    "fer2013_step",
)
HANG_TIMEOUT_S = 1800  # only against a hang: no assertion on wall time


def _suite(*args):
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.suite", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT_S,
    )


def _timed_numbers(tree, path=""):
    """(path, value) of every time and ratio in the records: keys ending in '_s' or '_ms',
    'median_ms' entries, keys starting with 'ratio', and the images/s."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            sub = f"{path}.{key}"
            timed = key.endswith(("_s", "_ms")) or key.startswith("ratio") or key.endswith("_per_s")
            if timed and isinstance(value, (int, float)) and not isinstance(value, bool):
                yield sub, value
            elif key == "median_ms" and isinstance(value, dict):
                yield from ((f"{sub}.{k}", v) for k, v in value.items())
            else:
                yield from _timed_numbers(value, sub)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _timed_numbers(value, f"{path}[{i}]")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    result = _suite("--out", str(out), "--smoke")
    assert result.returncode == 0, result.stderr[-4000:]
    return out, json.loads((out / "suite.json").read_text()), result.stderr


@pytest.mark.slow
def test_smoke_run_has_every_benchmark_with_finite_positive_times(smoke):
    out, payload, log = smoke
    assert payload["suite"]["backend"] == "cpu" and payload["suite"]["smoke"]
    done = {it["benchmark"] for it in payload["items"] if it["status"] == "done"}
    assert done == set(BENCHMARKS), (payload["skipped"], payload["failed"])
    for it in payload["items"]:
        assert it["records"], it["name"]
        numbers = list(_timed_numbers(it["records"]))
        assert numbers, it["name"]
        bad = [(p, v) for p, v in numbers if not (math.isfinite(v) and v > 0)]
        assert not bad, (it["name"], bad)
        assert f"[{it['priority']}/" in log and it["name"] in log  # progress per item
    md = (out / "suite.md").read_text()
    for name in BENCHMARKS:
        assert f"## {name}" in md


@pytest.mark.slow
def test_render_rewrites_only_the_blocks_of_a_copy_of_the_docs(smoke, tmp_path):
    out, payload, _ = smoke
    original = (REPO / "docs" / "performance.md").read_text()
    doc = tmp_path / "performance.md"
    doc.write_text(original)
    result = _suite("--render", str(out / "suite.json"), "--doc", str(doc))
    assert result.returncode == 0, result.stderr
    rendered = doc.read_text()
    block = re.compile(r"(<!-- suite:([\w/]+) -->\n).*?(\n<!-- /suite:\2 -->)", re.S)
    for name in BENCHMARKS:
        match = re.search(
            rf"<!-- suite:cpu/{name} -->\n(.*?)\n<!-- /suite:cpu/{name} -->", rendered, re.S
        )
        assert match, name
        assert "smoke run" in match.group(1) and "|---|" in match.group(1), name
    # outside the cpu blocks nothing changed (gpu blocks included)
    strip = lambda text: block.sub(  # noqa: E731
        lambda m: m.group(1) + m.group(3) if m.group(2).startswith("cpu/") else m.group(0), text
    )
    assert strip(rendered) == strip(original)
    assert "suite:gpu/lm_head" in rendered


def test_bad_flags_are_refused_with_a_message(tmp_path):
    result = _suite("--out", str(tmp_path), "--budget_s", "-3")
    assert result.returncode == 2 and "--budget_s: must be > 0" in result.stderr
    result = _suite("--out", str(tmp_path), "--only", "resnet,face_step")
    assert result.returncode == 2 and "unknown benchmark(s) ['resnet']" in result.stderr
    result = _suite("--smoke")
    assert result.returncode == 2 and "--out DIR is required" in result.stderr
    result = _suite("--render", str(tmp_path / "missing.json"))
    assert result.returncode == 2 and "is not a suite.json" in result.stderr
