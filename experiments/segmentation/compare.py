"""Baseline vs GSC on one image: both runs, scores, figures and a JSON record in a directory."""

import dataclasses
import json
import logging
import os

import numpy as np

from experiments.segmentation import data
from experiments.segmentation import evaluate
from experiments.segmentation import plots
from experiments.segmentation import train


def _summary(result: train.Result, truth) -> dict:
    """JSON-ready numbers of one run; with scores at the ground truth's resolution if given."""
    summary = {
        "iterations": len(result.n_labels),
        "final_labels": int(len(np.unique(result.labels))),
        "n_labels_per_iteration": result.n_labels,
        "last_metrics": result.last_metrics,
        "seconds": round(result.seconds, 2),
    }
    if truth is not None:
        labels = data.upscale_labels(result.labels, truth.shape)
        summary["mean_iou"] = evaluate.hungarian_mean_iou(labels, truth)
        summary["covering"] = evaluate.segmentation_covering(labels, truth)
    return summary


def _title(name: str, summary: dict) -> str:
    """Panel title: run name, label count, and the mean IoU when there is one."""
    title = f"{name}: {summary['final_labels']} labels"
    return title + (f", mIoU {summary['mean_iou']:.2f}" if "mean_iou" in summary else "")


def compare(name: str, image: np.ndarray, truth, config: train.Config, *, gamma: float,
            top_c: int, max_side: int, workdir: str) -> dict:
    """Segments `image` with Kanezaki's loss and with the GSC term added, and writes the results.

    Writes ``workdir/name/{comparison.png, labels_per_iteration.png, results.json}``.

    Args:
      name: image name (sub-directory of `workdir`).
      image: ``[H, W, 3]`` uint8 RGB.
      truth: ``[H, W]`` int ground-truth regions, or None.
      config: hyper-parameters shared by both runs (same seed: same initial weights).
      gamma: GSC weight of the second run; top_c: its number of top scores.
      max_side: downscale so that the longer side is at most this (0: full resolution).
      workdir: output root.

    Returns:
      The dict written to results.json.
    """
    small = data.downscale(image, max_side)
    scale = small.shape[0] / image.shape[0]
    pixels = small[..., ::-1] if config.bgr else small
    segment_ids, num_segments = train.superpixels(pixels, config, scale)
    logging.info("%s: %s -> %s, %d superpixels.", name, image.shape, small.shape, num_segments)
    runs = {}
    for run, run_gamma in (("baseline", 0.0), (f"GSC (gamma={gamma}, top_c={top_c})", gamma)):
        result = train.segment(
            pixels, segment_ids, num_segments, config, gamma=run_gamma, top_c=top_c, desc=run
        )
        runs[run] = _summary(result, truth)
        runs[run]["labels_map"] = result.labels
        logging.info("%s %s: %d iterations, %d labels, %.1f s.", name, run,
                     len(result.n_labels), runs[run]["final_labels"], result.seconds)
    out = os.path.join(workdir, name)
    os.makedirs(out, exist_ok=True)
    panels = [(_title(run, s), s.pop("labels_map")) for run, s in runs.items()]
    if truth is not None:
        panels.append((f"ground truth: {len(np.unique(truth))} regions", truth))
    plots.save_comparison(os.path.join(out, "comparison.png"), small, panels)
    plots.save_label_curves(
        os.path.join(out, "labels_per_iteration.png"),
        {run: s["n_labels_per_iteration"] for run, s in runs.items()},
        config.min_labels,
    )
    record = {
        "image": name,
        "input_shape": list(image.shape),
        "working_shape": list(small.shape),
        "num_superpixels": num_segments,
        "config": dataclasses.asdict(config),
        "gsc_gamma": gamma,
        "gsc_top_c": top_c,
        "runs": runs,
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(record, f, indent=1)
    return record
