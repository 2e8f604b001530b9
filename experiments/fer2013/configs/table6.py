r"""GSC paper Table 6: FER2013, CE and CE+GSC, with seeds; and the loss curves of its Fig. 7.

    python -m experiments.fer2013 --config experiments/fer2013/configs/table6.py \
        --workdir runs/t6 --config.data.data_dir DIR --seeds 0,1
    python -m experiments.fer2013 --config experiments/fer2013/configs/table6.py \
        --workdir runs/t6s --config.data.data_dir DIR --rows ce,gsc_0.01_2 --seeds 0,1 \
        --config.epochs=8 --config.data.train_crops=1 --config.model.width=8 \
        --config.model.hidden=512

Columns: test and validation top-1 of the final and of the best-validation state, ECE and NLL;
then the per-class test accuracy (mean over seeds) and fig7.png (training loss and validation
NLL of CE against the first GSC row, first seed).
"""

import os

import numpy as np

from experiments.common import grid
from experiments.common import report
from experiments.fer2013 import data
from experiments.fer2013.configs import vgg

# (row id, gamma, top_c, paper test %, paper validation %)
ROWS = (
    ("ce", 0.0, 2, 72.12, 73.82),
    ("gsc_0.01_2", 0.01, 2, 72.72, 73.25),
    ("gsc_0.015_2", 0.015, 2, 72.17, 74.39),
    ("gsc_0.01_3", 0.01, 3, 72.39, 74.17),
    ("gsc_0.02_3", 0.02, 3, 72.25, 74.37),
)


def get_config():
    return vgg.get_config()


def per_class_and_fig7(results, workdir: str) -> str:
    """The per-class test accuracy table; fig7.png (CE against the first GSC row)."""
    lines = [
        "Per-class test accuracy % (final model, mean over seeds):",
        "",
        "| method | " + " | ".join(data.EMOTIONS) + " |",
        "|---|" + "---|" * len(data.EMOTIONS),
    ]
    for r in results:
        if r.status() != "completed":
            continue
        per_class = np.mean([s["test/per_class_accuracy"] for s in r.summaries], axis=0)
        lines.append(f"| {r.label} | " + " | ".join(f"{100 * a:.1f}" for a in per_class) + " |")
    done = [r for r in results if r.status() == "completed"]
    if len(done) > 1:
        curves = {
            r.label: report.read_jsonl(os.path.join(r.workdirs[0], "metrics.jsonl"))
            for r in done[:2]
        }
        report.plot_loss_curves(curves, os.path.join(workdir, "fig7.png"))
    return "\n".join(lines) + "\n"


def get_grid():
    rows = tuple(
        grid.Row(
            i,
            {"loss.name": "ce", "loss.gsc.gamma": g, "loss.gsc.top_c": c},
            {"test/top1@best": test, "val/top1": val},
        )
        for i, g, c, test, val in ROWS
    )
    return grid.Grid(
        name="table6",
        title="GSC paper Table 6: FER2013 test and validation accuracy.",
        rows=rows,
        columns=(
            grid.Column("test/top1", "test % (final)"),
            grid.Column("test/top1@best", "test % (best-val model)"),
            grid.Column("val/top1", "val % (final)"),
            grid.Column("best/value", "best val %"),
            grid.Column("test/ece", "test ECE %"),
            grid.Column("test/nll", "test NLL", "nats"),
        ),
        extra=per_class_and_fig7,
    )
