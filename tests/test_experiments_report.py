"""Run outputs are valid JSON, written atomically; a torn metrics.jsonl line does not block resume."""

import json
import logging
import os

import numpy as np
import pytest

from experiments.common import report


def test_non_finite_numbers_become_null_and_are_named(tmp_path):
    path = tmp_path / "summary.json"
    report.write_json(
        str(path),
        {
            "status": "completed",
            "test_nll": float("nan"),
            "test_accuracy": np.float32(0.5),
            "curve": [1.0, float("inf")],
            "nested": {"x": -np.inf},
        },
    )
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    summary = json.loads(text)
    assert summary["test_nll"] is None and summary["test_accuracy"] == 0.5
    assert summary["curve"] == [1.0, None] and summary["nested"] == {"x": None}
    assert summary["non_finite"] == ["test_nll", "curve[1]", "nested.x"]
    assert os.listdir(tmp_path) == ["summary.json"]  # no temporary file left behind


def test_jsonl_records_are_valid_json_too(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    report.write_jsonl(path, [{"epoch": 1, "test_nll": 1.5}])
    report.append_jsonl(path, {"epoch": 2, "test_nll": float("nan")})
    assert "NaN" not in open(path).read()
    assert report.read_jsonl(path) == [
        {"epoch": 1, "test_nll": 1.5},
        {"epoch": 2, "test_nll": None, "non_finite": ["test_nll"]},
    ]


def test_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "test_to')
    with caplog.at_level(logging.WARNING):
        assert report.read_jsonl(str(path)) == [{"epoch": 1}, {"epoch": 2}]
    assert f"{path}:3: dropped an incomplete last line" in caplog.text


def test_a_bad_line_elsewhere_names_the_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2\n\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=f"{path}:2: not a JSON record .*repair or delete"):
        report.read_jsonl(str(path))
    assert report.read_jsonl(str(tmp_path / "missing.jsonl")) == []
