"""Focal IoU Weight (FIoU), the classification-loss weight of negative anchors of Calibrated Teacher (README,
Method; released ``RetinaHead_adaptivenegweight2_focaliou.loss``).

For a negative anchor (assigned to background, not ignored) whose *predicted* box has maximum IoU u with the image's
training targets (sparse GT and merged pseudo boxes), the focal-loss weight 1 becomes

    w(u) = b + k (1 - b) [ -alpha u^gamma log(1.00001 - u) ],   b = 0.5, k = 3, alpha = 0.25, gamma = 2,

so isolated negatives (likely unannotated objects) get half weight and negatives regressing onto a known object keep
or exceed weight 1. u is not detached by default: the classification loss reaches the regression branch through the
decoded boxes. Positives and ignored anchors are unchanged. The losses are normalised as mmdetection does (the
process's summed losses over its summed positives, ``detector.loss_normalization: batch``, the released one) or as
torchvision does (per image, then averaged: ``image``, the embedded default's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import box_iou

from shared.detection import normalize_loss, retinanet_class_loss_sums

__all__ = ["FIoUParams", "fiou_anchor_weights", "focal_iou_weight", "retinanet_fiou_losses"]


@dataclass(frozen=True)
class FIoUParams:
    """The released constants (``ioufocalbias``, ``ioufocalk``, ``ioufocala``, ``ioufocalgamma``, ``ioudetach``)."""

    bias: float = 0.5
    k: float = 3.0
    alpha: float = 0.25
    gamma: float = 2.0
    detach: bool = False


def focal_iou_weight(u: torch.Tensor, params: FIoUParams = FIoUParams()) -> torch.Tensor:
    """w(u) = b + k (1 - b) (-alpha u^gamma log(1.00001 - u)) for IoUs ``u`` in [0, 1]."""
    focal = -params.alpha * u.pow(params.gamma) * torch.log(1.00001 - u)
    return params.bias + params.k * (1.0 - params.bias) * focal


def fiou_anchor_weights(
    targets: list[dict[str, torch.Tensor]],
    head_outputs: dict[str, torch.Tensor],
    anchors: list[torch.Tensor],
    matched_idxs: list[torch.Tensor],
    box_coder: BoxCoder,
    fiou: FIoUParams | None,
) -> list[torch.Tensor]:
    """Per image, each anchor's classification-loss weight: w(u) on the negatives (``matched_idxs`` -1) with u the
    IoU of the anchor's decoded predicted box with the nearest target, 1 elsewhere (every anchor when ``fiou`` is
    None)."""
    weights = []
    for target, regression, anchors_i, matched in zip(targets, head_outputs["bbox_regression"], anchors, matched_idxs):
        if fiou is None:
            weights.append(regression.new_ones(len(regression)))
            continue
        if target["boxes"].numel():
            predicted = box_coder.decode_single(regression, anchors_i)
            u = box_iou(predicted, target["boxes"].to(predicted.dtype)).amax(dim=1)
        else:
            u = regression.new_zeros(len(regression))
        if fiou.detach:
            u = u.detach()
        weights.append(torch.where(matched == -1, focal_iou_weight(u, fiou), torch.ones_like(u)))
    return weights


def retinanet_fiou_losses(
    targets: list[dict[str, torch.Tensor]],
    head_outputs: dict[str, torch.Tensor],
    anchors: list[torch.Tensor],
    matched_idxs: list[torch.Tensor],
    box_coder: BoxCoder,
    fiou: FIoUParams | None,
    normalization: str = "image",
) -> torch.Tensor:
    """RetinaNet's sigmoid focal classification loss (alpha 0.25, gamma 2) with FIoU on negatives when ``fiou`` is
    given (``fiou=None``: torchvision's loss), normalised per ``image`` (torchvision) or per ``batch`` (mmdetection,
    ``shared.detection.normalize_loss``). ``matched_idxs``: -1 background, -2 ignored, else the target."""
    weights = fiou_anchor_weights(targets, head_outputs, anchors, matched_idxs, box_coder, fiou)
    sums, counts = retinanet_class_loss_sums(targets, head_outputs["cls_logits"], matched_idxs, weights)
    return normalize_loss(sums, counts, normalization)
