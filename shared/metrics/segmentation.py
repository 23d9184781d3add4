"""Semantic-segmentation metrics: aAcc, mIoU and mAcc from a confusion matrix (mmsegmentation's ``IoUMetric``).

The convention of mmseg's ``eval_metrics`` (the evaluation of the ADE20K / Cityscapes tables of the papers that use
mmseg): one confusion matrix over every evaluated pixel of the whole split (not a mean of per-image scores); pixels
whose label is ``ignore_index`` (255 after ADE20K's reduce-zero-label) are left out;

- ``IoU[c] = TP_c / (TP_c + FP_c + FN_c)`` and ``Acc[c] = TP_c / (TP_c + FN_c)`` (the per-class recall);
- ``mIoU`` / ``mAcc`` = the mean over the classes whose value is defined: a class absent from the labels has
  ``Acc = NaN`` and, unless predicted somewhere, ``IoU = NaN``; NaNs are skipped (mmseg's ``np.nanmean``);
- ``aAcc`` = the fraction of evaluated pixels predicted correctly.
"""

from __future__ import annotations

import torch

from shared.metrics._inputs import ArrayLike, to_tensor

__all__ = ["confusion_matrix", "segmentation_metrics"]


def confusion_matrix(pred: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """The (num_classes, num_classes) int64 confusion matrix, rows = ground truth, columns = prediction.

    Args:
        pred: predicted class indices, any shape (e.g. (N, H, W)), integers in [0, num_classes).
        target: ground-truth labels of the same shape: [0, num_classes) or ``ignore_index``.
        num_classes: number of classes.
        ignore_index: label of pixels that are not evaluated.

    Raises:
        ValueError: shapes that differ, or a value outside the allowed range (the message names it).
    """
    pred = to_tensor(pred, "pred")
    target = to_tensor(target, "target").to(pred.device)
    if pred.shape != target.shape:
        raise ValueError(f"confusion_matrix: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("confusion_matrix: pred and target must hold integer class indices")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    valid = target != ignore_index
    pred, target = pred[valid], target[valid]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        bad = target[(target < 0) | (target >= num_classes)][0].item()
        raise ValueError(
            f"confusion_matrix: label {bad} outside [0, {num_classes}) and not ignore_index {ignore_index}"
        )
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        bad = pred[(pred < 0) | (pred >= num_classes)][0].item()
        raise ValueError(f"confusion_matrix: predicted class {bad} outside [0, {num_classes})")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def segmentation_metrics(confusion: ArrayLike) -> dict[str, float | list[float]]:
    """aAcc, mIoU, mAcc (fractions) and the per-class IoU / Acc lists of a confusion matrix (see the module doc).

    Args:
        confusion: (K, K) counts, rows = ground truth, columns = prediction (:func:`confusion_matrix`, summed over a
            split).

    Returns:
        ``{"aAcc", "mIoU", "mAcc", "IoU", "Acc"}``; ``IoU`` / ``Acc`` hold K floats (NaN where undefined). With no
        evaluated pixel at all every number is NaN.
    """
    confusion = to_tensor(confusion, "confusion").double()
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"segmentation_metrics: confusion must be square (K, K), got {tuple(confusion.shape)}")
    intersect = confusion.diagonal()
    area_label = confusion.sum(1)
    area_pred = confusion.sum(0)
    union = area_label + area_pred - intersect
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=confusion.device)
    iou = torch.where(union > 0, intersect / union.clamp(min=1), nan)
    acc = torch.where(area_label > 0, intersect / area_label.clamp(min=1), nan)
    total = area_label.sum()
    return {
        "aAcc": (intersect.sum() / total).item() if total > 0 else float("nan"),
        "mIoU": iou.nanmean().item(),
        "mAcc": acc.nanmean().item(),
        "IoU": iou.tolist(),
        "Acc": acc.tolist(),
    }
