r"""Kanezaki's unsupervised segmentation, baseline against + GSC, on one image (GSC paper Fig. 8).

    python -m experiments.segmentation --workdir runs/seg --config.data.image=photo.jpg \
        [--config.data.ground_truth=regions.png]
    python -m experiments.segmentation --workdir runs/seg_chelsea   # a scikit-image sample
    python -m experiments.segmentation --workdir runs/seg_syn --config.data.image=synthetic

Both rows start from the same initial weights (the seed); the GSC row adds gamma f_top_c per pixel
(paper: gamma 0.1-0.5, top_c 7 or 9). Writes comparison.png (input | baseline | GSC | ground
truth), labels_per_iteration.png and segmentation.md/.json.

Defaults are the reference's (kanezaki/pytorch-unsupervised-segmentation@478e67e demo.py): p = 100
channels, 2 conv blocks, SGD lr 0.1 momentum 0.9, at most 1000 iterations, stop at <= 3 labels,
SLIC with 10000 segments (scaled with the downscale) and compactness 100. Runtime on a 2-core CPU:
one iteration at the reference's image size (chelsea, 300 x 451) takes about 5 s, so images are
downscaled to config.data.max_side (48 by default, under 2 minutes an image for both runs).
"""

import os

import ml_collections
import numpy as np

from experiments.common import config as base
from experiments.common import grid
from experiments.segmentation import plots


def get_config():
    config = base.base_config()
    config.task = "experiments.segmentation.task"
    config.data.image = "chelsea"  # image file, a scikit-image sample name, or 'synthetic'
    config.data.ground_truth = ""  # region image (.png ids/colours or .npy) for an image file
    config.data.max_side = 48  # downscale so the longer side is at most this (0 = keep)
    config.data.iterations = 1000  # at most this many iterations (maxIter)
    config.data.min_labels = 3  # stop after the first iteration with <= this many labels
    config.data.slic_n_segments = 10000  # SLIC superpixels at the original resolution
    config.data.slic_compactness = 100.0  # SLIC compactness
    config.data.bgr = False  # feed BGR to the net and SLIC, as the reference does
    config.model.n_channel = 100  # p, channels (= possible labels)
    config.model.n_conv = 2  # M, 3x3 conv blocks
    config.loss.gsc.gamma = 0.0
    config.loss.gsc.top_c = 7
    config.batch_size = 1
    config.eval_batch_size = 1
    config.epochs = 1
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.evals = ml_collections.ConfigDict(
        {"image": {"type": "experiments.segmentation.task.Segmentation"}}
    )
    return config


def figures(results, workdir: str) -> str:
    """comparison.png and labels_per_iteration.png of the rows that ran."""
    done = [r for r in results if r.status() == "completed"]
    if not done:
        return ""
    from experiments.segmentation import task  # pylint: disable=import-outside-toplevel

    saved = done[0].summaries[0]["config"]["data"]
    config = base.apply_overrides(
        get_config(),
        {f"data.{k}": tuple(v) if isinstance(v, list) else v for k, v in saved.items()},
    )
    _, rgb, truth, _ = task.load(config)
    panels = []
    for r in done:
        s = r.summaries[0]
        title = f"{r.label}: {s['image/final_labels']} labels"
        if "image/mean_iou" in s:
            title += f", mIoU {s['image/mean_iou']:.2f}"
        panels.append((title, np.asarray(s["image/labels"])))
    if truth is not None:
        panels.append((f"ground truth: {len(np.unique(truth))} regions", truth))
    plots.save_comparison(os.path.join(workdir, "comparison.png"), rgb, panels)
    plots.save_label_curves(
        os.path.join(workdir, "labels_per_iteration.png"),
        {r.label: r.summaries[0]["image/n_labels_per_iteration"] for r in done},
        config.data.min_labels,
    )
    return "comparison.png, labels_per_iteration.png\n"


def get_grid():
    return grid.Grid(
        name="segmentation",
        title="Kanezaki's segmentation, baseline against + GSC.",
        rows=(
            grid.Row("baseline", {"loss.gsc.gamma": 0.0}),
            grid.Row("gsc", {"loss.gsc.gamma": 0.3}),
        ),
        columns=(
            grid.Column("image/final_labels", "labels", "raw"),
            grid.Column("image/iterations", "iterations", "raw"),
            grid.Column("image/mean_iou", "mIoU", "raw"),
            grid.Column("image/covering", "covering", "raw"),
        ),
        extra=figures,
    )
