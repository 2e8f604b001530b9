"""Figures: input | baseline | GSC (| ground truth) side by side, and labels per iteration."""

import matplotlib.pyplot as plt
import numpy as np


def colorize(labels: np.ndarray) -> np.ndarray:
    """``[H, W]`` int labels -> ``[H, W, 3]`` float RGB, one distinct colour per label.

    Labels are ranked by size, largest first, and take the tab20 colours in that order (then fixed
    pseudo-random colours), so two maps of the same scene get comparable colours.
    """
    values, inverse, counts = np.unique(labels.ravel(), return_inverse=True, return_counts=True)
    rank = np.empty(len(values), np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(len(values))
    palette = np.asarray(plt.get_cmap("tab20").colors)
    extra = np.random.default_rng(0).uniform(0.1, 0.9, (max(0, len(values) - len(palette)), 3))
    palette = np.concatenate([palette, extra])
    return palette[rank[inverse]].reshape(*labels.shape, 3)


def save_comparison(
    path: str, image: np.ndarray, panels: list[tuple[str, np.ndarray]], width_inches: float = 3.2
) -> None:
    """Saves the input next to each ``(title, [H, W] labels)`` panel, all in one row.

    Args:
      path: output PNG path.
      image: ``[H, W, 3]`` uint8 RGB input (any size; panels are drawn at the same extent).
      panels: titles and label maps, e.g. baseline and GSC segmentations.
      width_inches: width of each panel.
    """
    height, width = image.shape[:2]
    n = 1 + len(panels)
    fig, axes = plt.subplots(1, n, figsize=(width_inches * n, width_inches * height / width + 0.5))
    extent = (0, width, height, 0)
    axes[0].imshow(image, extent=extent)
    axes[0].set_title("input", fontsize=10)
    for axis, (title, labels) in zip(axes[1:], panels):
        axis.imshow(colorize(labels), extent=extent, interpolation="nearest")
        axis.set_title(title, fontsize=10)
    for axis in axes:
        axis.set_axis_off()
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_label_curves(path: str, curves: dict[str, list[int]], min_labels: int) -> None:
    """Plots the number of labels per iteration of each run, with the stopping threshold."""
    fig, axis = plt.subplots(figsize=(5, 3.2))
    for name, counts in curves.items():
        axis.plot(np.arange(1, len(counts) + 1), counts, label=f"{name} (end {counts[-1]})")
    axis.axhline(min_labels, color="grey", linestyle=":", label=f"min_labels = {min_labels}")
    axis.set_xlabel("iteration")
    axis.set_ylabel("labels (argmax, before refinement)")
    axis.set_yscale("log")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
