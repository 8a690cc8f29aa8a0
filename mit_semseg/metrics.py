"""Segmentation metrics built on a dataset-level confusion matrix.

Everything is derived from one integer confusion matrix ``conf[label, pred]`` summed over all
images. Because the sum is exact integer arithmetic, splitting a validation set over any number
of processes and adding their matrices gives bit-identical metrics.

Definitions (identical to the original ``mit_semseg`` 1.0.0 ``eval.py``):

* Only labelled pixels count: label ``-1`` (pixel value 0 in ADE annotation PNGs) is ignored.
* ``iou[c] = conf[c, c] / (row_sum[c] + col_sum[c] - conf[c, c] + 1e-10)``: the IoU of class
  ``c`` over the whole dataset, not a mean of per-image IoUs.
* ``miou`` is the mean of ``iou`` over **all** ``num_class`` classes. A class that never occurs,
  neither in the ground truth nor in the predictions, has IoU 0 and still counts in the mean,
  as in the original. ``miou_present`` (mean over classes with a non-empty union) is reported
  alongside for small or partial validation sets.
* ``pixel_acc = trace(conf) / (conf.sum() + 1e-10)``, the dataset-level correct/labelled ratio.
* ``overall = (miou + pixel_acc) / 2``, the "Overall Score" of the original README.

The original helper names ``accuracy`` and ``intersectionAndUnion`` are kept here for code
written against ``mit_semseg.utils`` of the original package (which re-exports them), with
its ``AverageMeter``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "confusion_matrix",
    "intersectionAndUnion",
    "scores_from_confusion",
]

# Added to every denominator, as in the original, so empty classes give 0 instead of NaN.
_EPS = 1e-10


def _as_int_array(x: Any, name: str) -> np.ndarray:
    """Converts a numpy array or a (CPU or GPU) tensor to an int64 numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def confusion_matrix(pred: Any, label: Any, num_class: int) -> np.ndarray:
    """Counts (label, prediction) pairs over the labelled pixels.

    Args:
        pred: predicted class per pixel, values in ``[0, num_class)``; any shape.
        label: ground-truth class per pixel, same shape; ``-1`` (any negative value) = ignore.
        num_class: number of classes.

    Returns:
        ``(num_class, num_class)`` int64 matrix, ``conf[l, p]`` = number of pixels of class ``l``
        predicted as ``p``.

    Raises:
        ValueError: on shape mismatch or class indices outside ``[0, num_class)``.
    """
    if num_class < 1:
        raise ValueError(f"num_class must be >= 1, got {num_class}")
    pred = _as_int_array(pred, "pred")
    label = _as_int_array(label, "label")
    if pred.shape != label.shape:
        raise ValueError(f"pred shape {pred.shape} != label shape {label.shape}")
    valid = label >= 0
    pred = pred[valid]
    label = label[valid]
    if label.size and label.max() >= num_class:
        raise ValueError(
            f"label value {int(label.max())} >= num_class {num_class} (labels must be -1 for "
            f"'ignore' or in [0, {num_class - 1}]; check DATASET.num_class)"
        )
    if pred.size and (pred.min() < 0 or pred.max() >= num_class):
        bad = int(pred.min()) if pred.min() < 0 else int(pred.max())
        raise ValueError(f"prediction value {bad} outside [0, {num_class - 1}]")
    counts = np.bincount(num_class * label + pred, minlength=num_class * num_class)
    return counts.reshape(num_class, num_class).astype(np.int64, copy=False)


def scores_from_confusion(conf: np.ndarray) -> dict[str, Any]:
    """Computes mIoU, pixel accuracy and per-class IoU from a confusion matrix.

    Args:
        conf: ``(C, C)`` matrix with ``conf[label, pred]`` counts (see :func:`confusion_matrix`).

    Returns:
        dict with ``miou``, ``pixel_acc``, ``overall`` (floats in [0, 1]), ``miou_present``
        (mean IoU over classes with a non-empty union; NaN if there is none), ``iou``,
        ``class_acc`` (per-class recall), ``intersection``, ``union`` (``(C,)`` arrays),
        ``present`` (bool ``(C,)``: class occurs in the labels or the predictions) and
        ``num_pixels`` (labelled pixels counted).
    """
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {conf.shape}")
    conf = conf.astype(np.int64, copy=False)
    intersection = np.diag(conf)
    label_area = conf.sum(axis=1)
    pred_area = conf.sum(axis=0)
    union = label_area + pred_area - intersection
    iou = intersection / (union + _EPS)
    total = int(conf.sum())
    pixel_acc = float(intersection.sum() / (total + _EPS))
    miou = float(iou.mean())
    present = union > 0
    miou_present = float(iou[present].mean()) if present.any() else float("nan")
    return {
        "miou": miou,
        "pixel_acc": pixel_acc,
        "overall": (miou + pixel_acc) / 2.0,
        "miou_present": miou_present,
        "iou": iou,
        "class_acc": intersection / (label_area + _EPS),
        "intersection": intersection,
        "union": union,
        "present": present,
        "num_pixels": total,
    }


def accuracy(preds: Any, label: Any) -> tuple[float, int]:
    """Pixel accuracy of one image, original signature.

    Args:
        preds: predicted classes (0-based).
        label: ground truth, negative = ignore.

    Returns:
        ``(accuracy, number_of_labelled_pixels)``.
    """
    preds = _as_int_array(preds, "preds")
    label = _as_int_array(label, "label")
    valid = label >= 0
    valid_sum = int(valid.sum())
    correct = int((valid & (preds == label)).sum())
    return correct / (valid_sum + _EPS), valid_sum


def intersectionAndUnion(  # noqa: N802 - original public name
    imPred: Any,  # noqa: N803
    imLab: Any,  # noqa: N803
    numClass: int,  # noqa: N803
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class intersection and union areas of one image, original signature.

    Args:
        imPred: predicted classes (0-based).
        imLab: ground truth (0-based, negative = ignore).
        numClass: number of classes.

    Returns:
        ``(area_intersection, area_union)``, two ``(numClass,)`` int64 arrays.
    """
    scores = scores_from_confusion(confusion_matrix(imPred, imLab, numClass))
    return scores["intersection"], scores["union"]


class AverageMeter:
    """Running (optionally weighted) average; works for floats and NumPy arrays (the
    original's ``mit_semseg.utils.AverageMeter``)."""

    def __init__(self) -> None:
        self.initialized = False
        self.val: Any = None
        self.avg: Any = None
        self.sum: Any = None
        self.count: Any = None

    def initialize(self, val: Any, weight: float) -> None:
        self.val, self.avg, self.sum, self.count = val, val, val * weight, weight
        self.initialized = True

    def update(self, val: Any, weight: float = 1) -> None:
        if self.initialized:
            self.add(val, weight)
        else:
            self.initialize(val, weight)

    def add(self, val: Any, weight: float) -> None:
        self.val = val
        self.sum = self.sum + val * weight
        self.count = self.count + weight
        self.avg = self.sum / self.count

    def value(self) -> Any:
        return self.val

    def average(self) -> Any:
        return self.avg
