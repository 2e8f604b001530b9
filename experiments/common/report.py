"""Run outputs: metrics.jsonl, summary.json, and matplotlib plots (curves, reliability diagram).

JSON is always valid: NaN and infinities are written as null, and the dotted keys of those values
are listed in a "non_finite" field of the record (`json_safe`). Whole files are replaced atomically
(a temporary file, then os.replace), so that a reader never sees half of one.
"""

import json
import logging
import math
import os

import matplotlib.pyplot as plt
import numpy as np

from gsc_jax import plots

logger = logging.getLogger(__name__)


def json_safe(obj, prefix: str = ""):
    """Returns (a copy of `obj` that json.dumps accepts with allow_nan=False, the dotted keys of
    the non-finite numbers it replaced by None).

    NumPy scalars and arrays become Python numbers and lists; tuples become lists.
    """
    bad = []

    def convert(value, key):
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, dict):
            return {k: convert(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, float) and not math.isfinite(value):
            bad.append(key)
            return None
        return value

    return convert(obj, prefix), bad


def _dumps(record, **kwargs) -> str:
    """JSON text of a dict record; non-finite numbers become null, listed under "non_finite"."""
    safe, bad = json_safe(record)
    if bad:
        safe["non_finite"] = bad
    return json.dumps(safe, allow_nan=False, **kwargs)


def _replace(path: str, text: str) -> None:
    """Writes `text` to `path` atomically (temporary file in the same folder, then os.replace)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_summary(workdir: str) -> dict | None:
    """The run's WORKDIR/summary.json, or None when it has none (never started)."""
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_jsonl(path: str) -> list:
    """Returns the records of a JSON-lines file ([] if it does not exist).

    A last line that is not valid JSON (a write cut short by a crash) is dropped with a warning.

    Raises:
      ValueError: naming the file and line, when any other line is not valid JSON.
    """
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
    records = []
    for position, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if position == len(lines) - 1:
                logger.warning(
                    "%s:%d: dropped an incomplete last line (%s), as written by a run "
                    "that was killed mid-write.",
                    path,
                    number,
                    error.msg,
                )
                break
            raise ValueError(
                f"{path}:{number}: not a JSON record ({error.msg}); repair or delete that line."
            ) from error
    return records


def write_jsonl(path: str, records: list) -> None:
    """Writes the records as a JSON-lines file, replacing it atomically.

    On resume this drops the records past the checkpoint; a reader (another process of a multi-host
    run reading it on resume) sees either the old or the new file, never a truncated one.
    """
    _replace(path, "".join(_dumps(r) + "\n" for r in records))


def append_jsonl(path: str, record: dict) -> None:
    """Appends one JSON record as a line."""
    with open(path, "a") as f:
        f.write(_dumps(record) + "\n")


def tensorflow_off_accelerators():
    """TensorFlow with its GPUs and TPUs hidden: it reads data and writes summaries only, and the
    accelerators belong to JAX."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    tf.get_logger().setLevel("ERROR")
    try:
        tf.config.set_visible_devices([], "GPU")
        tf.config.set_visible_devices([], "TPU")
    except (RuntimeError, ValueError):  # already initialised, or no such device type
        pass
    return tf


class TensorBoardScalars:
    """Epoch records as TensorBoard scalars in `logdir`, through clu's metric writers (as the Flax
    examples write theirs): `tensorboard --logdir WORKDIR/tensorboard` follows a run live."""

    def __init__(self, logdir: str):
        tensorflow_off_accelerators()
        from clu import metric_writers  # pylint: disable=import-outside-toplevel

        self._writer = metric_writers.create_default_writer(logdir, asynchronous=False)

    def write(self, record: dict) -> None:
        """Writes every finite number of `record` at its training step (a population's list as
        its mean), then flushes."""
        scalars = {}
        for key, value in record.items():
            if key in ("epoch", "step") or isinstance(value, bool):
                continue
            if (
                isinstance(value, list)
                and value
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            ):
                value = float(np.nanmean(value)) if not all(np.isnan(value)) else math.nan
            if isinstance(value, (int, float)) and math.isfinite(value):
                scalars[key] = value
        self._writer.write_scalars(int(record["step"]), scalars)
        self._writer.flush()


def write_json(path: str, obj) -> None:
    """Writes `obj` as indented JSON, atomically; a dict's non-finite numbers become null."""
    if isinstance(obj, dict):
        text = _dumps(obj, indent=2)
    else:
        text = json.dumps(json_safe(obj)[0], allow_nan=False, indent=2)
    _replace(path, text + "\n")


def plot_curves(records: list, path: str, title: str = "") -> None:
    """Plots the training loss and every evaluator's top-1, NLL and ECE against epoch into a PNG.

    The evaluators are read off the records' keys ('<evaluator>/top1', ...); each metric's panel
    has one line per evaluator (per member of a population: its mean).
    """
    epochs = [r["epoch"] for r in records]
    names = sorted(
        {k.split("/")[0] for r in records for k in r if "/" in k and not k.startswith("train/")}
    )
    panels = [
        ("train", "loss", "train loss"),
        ("", "top1", "top-1"),
        ("", "nll", "NLL"),
        ("", "ece", "ECE"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5))
    for ax, (group, metric, label) in zip(axes, panels):
        for name in [group] if group else names:
            key = f"{name}/{metric}"
            values = [np.nan if r.get(key) is None else np.nanmean(r[key]) for r in records]
            if not all(np.isnan(values)):
                ax.plot(epochs, values, marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if not group and len(names) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(diagram: dict, path: str, title: str = "", ece: float | None = None) -> None:
    """Reliability diagram with per-bin counts (gsc_jax.plots.reliability_diagram) into a PNG.

    Args:
      diagram: dict with equal-length lists bin_lower, bin_upper, count, accuracy, confidence
        (gsc_jax.metrics.reliability_diagram, as in the evaluation summary; None stands for NaN).
      path: output PNG.
      title: plot title.
      ece: optional ECE to print in the title.
    """
    plots.reliability_diagram(diagram, title=title, ece=ece, path=path)


def plot_risk_coverage(curve: dict, path: str, title: str = "") -> None:
    """Risk-coverage curve with its AURC (gsc_jax.plots.risk_coverage_curve) into a PNG.

    Args:
      curve: dict with equal-length lists threshold, coverage, risk
        (gsc_jax.metrics.risk_coverage_curve_from_stats, as in the evaluation summary).
      path: output PNG.
      title: plot title.
    """
    plots.risk_coverage_curve(curve, title=title, path=path)


def plot_loss_curves(runs: dict, path: str, eval_split: str = "val") -> None:
    """Training and evaluation loss, and evaluation top-1, against epoch for several runs.

    One figure for comparing runs (e.g. CE against CE+GSC, GSC paper Fig. 7): left, each run's
    training loss (solid; the trained objective) and `eval_split` NLL (dashed; cross-entropy of
    the evaluated logits); right, its `eval_split` top-1.

    Args:
      runs: {label: metrics.jsonl records}.
      path: output PNG.
      eval_split: 'val' or 'test' (the records' <split>/nll and <split>/top1).
    """
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for n, (label, records) in enumerate(runs.items()):
        color = f"C{n}"
        epochs = [r["epoch"] for r in records]
        get = lambda key: [np.nan if r.get(key) is None else r[key] for r in records]  # noqa
        ax_loss.plot(epochs, get("train/loss"), color=color, label=f"{label} train loss")
        ax_loss.plot(
            epochs,
            get(f"{eval_split}/nll"),
            color=color,
            ls="--",
            label=f"{label} {eval_split} NLL",
        )
        ax_acc.plot(epochs, get(f"{eval_split}/top1"), color=color, marker="o", label=label)
    for ax, name in ((ax_loss, "loss"), (ax_acc, f"{eval_split} top-1")):
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion: list, class_names, path: str, title: str = "") -> None:
    """The confusion matrix (rows: label, columns: top-1 class) as row-normalised percentages."""
    counts = np.asarray(confusion, np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * k, 0.8 + 0.7 * k))
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{100 * share[i, j]:.0f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
