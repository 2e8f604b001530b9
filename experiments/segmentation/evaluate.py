"""Scores of a segmentation against ground-truth regions: Hungarian mean IoU and covering.

Both treat every predicted label as one segment (Kanezaki's labels need not be connected) and every
ground-truth id as one region.
"""

import numpy as np
import scipy.optimize


def intersection_over_union(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of every ground-truth region with every predicted segment, ``[R, S]``.

    Args:
      prediction: ``[H, W]`` int segment ids (any values).
      truth: ``[H, W]`` int region ids (any values), same shape.
    """
    if prediction.shape != truth.shape:
        raise ValueError(f"Shapes differ: prediction {prediction.shape}, truth {truth.shape}.")
    _, pred = np.unique(prediction.ravel(), return_inverse=True)
    _, true = np.unique(truth.ravel(), return_inverse=True)
    num_pred, num_true = pred.max() + 1, true.max() + 1
    inter = np.bincount(true * num_pred + pred, minlength=num_true * num_pred)
    inter = inter.reshape(num_true, num_pred).astype(np.float64)
    union = inter.sum(1, keepdims=True) + inter.sum(0, keepdims=True) - inter
    return inter / union


def hungarian_mean_iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean over ground-truth regions of the IoU with the segment matched one-to-one to it.

    The matching maximises the total IoU (`scipy.optimize.linear_sum_assignment`); regions left
    without a segment (more regions than segments) count as IoU 0.
    """
    iou = intersection_over_union(prediction, truth)
    rows, cols = scipy.optimize.linear_sum_assignment(iou, maximize=True)
    return float(iou[rows, cols].sum() / iou.shape[0])


def segmentation_covering(prediction: np.ndarray, truth: np.ndarray) -> float:
    r"""Covering of the ground truth by the prediction (Arbelaez et al., PAMI 2011, Eq. 10).

    .. math::
        C = \frac{1}{N} \sum_{R \in \mathrm{truth}} |R| \max_{S \in \mathrm{prediction}} IoU(R, S)
    """
    iou = intersection_over_union(prediction, truth)
    _, sizes = np.unique(truth, return_counts=True)
    return float((sizes * iou.max(axis=1)).sum() / truth.size)
