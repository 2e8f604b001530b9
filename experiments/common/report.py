"""Run outputs: metrics.jsonl, summary.json, and matplotlib plots (curves, reliability diagram)."""

import json
import os

import matplotlib.pyplot as plt


def read_jsonl(path: str) -> list:
    """Returns the records of a JSON-lines file ([] if it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str, records: list) -> None:
    """Writes the records as a JSON-lines file (on resume: drops records past the checkpoint).

    The file is replaced atomically, so that a reader (another process of a multi-host run reading
    it on resume) sees either the old or the new file, never a truncated one.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)


def append_jsonl(path: str, record: dict) -> None:
    """Appends one JSON record as a line."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def write_json(path: str, obj) -> None:
    """Writes `obj` as indented JSON."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def plot_curves(records: list, path: str, title: str = "") -> None:
    """Plots train loss, test top-1, test NLL and test ECE against epoch into a PNG."""
    epochs = [r["epoch"] for r in records]
    keys = [("train_loss", "train loss"), ("test_top1", "test top-1"),
            ("test_nll", "test NLL"), ("test_ece", "test ECE (15 bins)")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    for ax, (key, name) in zip(axes, keys):
        ax.plot(epochs, [r[key] for r in records], marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(diagram: dict, path: str, title: str = "", ece: float | None = None) -> None:
    """Reliability diagram: per-bin accuracy against the diagonal (metrics.reliability_diagram).

    Args:
      diagram: dict with equal-length lists bin_lower, bin_upper, count, accuracy, confidence.
      path: output PNG.
      title: plot title.
      ece: optional ECE to print in the legend.
    """
    lower, upper = diagram["bin_lower"], diagram["bin_upper"]
    width = [u - lo for lo, u in zip(lower, upper)]
    acc = [a if c > 0 else 0.0 for a, c in zip(diagram["accuracy"], diagram["count"])]
    conf = [a if c > 0 else 0.0 for a, c in zip(diagram["confidence"], diagram["count"])]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.bar(lower, acc, width=width, align="edge", edgecolor="k", alpha=0.8, label="accuracy")
    ax.bar(lower, [c - a for a, c in zip(acc, conf)], bottom=acc, width=width, align="edge",
           color="tab:red", alpha=0.3, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title + (f"  ECE={100 * ece:.2f}%" if ece is not None else ""), fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sweep(xs: list, curves: dict, baseline: float, path: str) -> None:
    """Accuracy (%) against log-scaled strength per curve, CE baseline dashed (paper Fig. 5)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in curves.items():
        ax.plot(xs, [100 * y for y in ys], marker="o", label=name)
    ax.axhline(100 * baseline, color="gray", ls="--", label="CE")
    ax.set_xscale("log")
    ax.set_xlabel("gamma (GSC) / lambda (entropy)")
    ax.set_ylabel("test top-1 %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
