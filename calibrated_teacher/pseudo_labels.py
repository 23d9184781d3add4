"""Which teacher detections become hard pseudo boxes (README, Method; released ``merge_boxes`` and
``split_sparse_dt``), all vectorised over the detections x annotations pairs.

A teacher detection d (raw score >= ``ori_thr``, mapped to the student's view) is merged into the sparse GT when

1. it is larger than ``min_size`` pixels in width and in height, and
2. no annotation g "already annotates" it: none of (a) same-class IoU(g, d) > 0.6, (b) any-class IoU(g, d) > 0.75,
   (c) same-class IoF(g in d) = inter / area(g) > 0.9, (d) same-class IoF(d in g) = inter / area(d) > 0.9, and
3. once a calibrator exists, its calibrated score is >= ``strict_thr`` (0.7).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import box_area, box_iou

__all__ = ["MergeRules", "box_intersection", "box_iof", "merge_pseudo_boxes", "overlaps_annotation"]


@dataclass(frozen=True)
class MergeRules:
    """Thresholds of the merge rules (released values)."""

    ori_thr: float = 0.4
    strict_thr: float = 0.7
    min_size: float = 10.0
    same_class_iou: float = 0.6
    any_class_iou: float = 0.75
    iof_thr: float = 0.9


def box_intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) intersection areas of xyxy boxes."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    return (rb - lt).clamp(min=0).prod(dim=-1)


def box_iof(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) intersection over the area of the *first* box (mmdet's ``iof`` mode), 0 for empty boxes."""
    return box_intersection(a, b) / box_area(a).clamp(min=1e-12)[:, None]


def overlaps_annotation(
    det_boxes: torch.Tensor,
    det_labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    same_class_iou: float,
    any_class_iou: float,
    iof_thr: float,
) -> torch.Tensor:
    """(N,) bool: detection i overlaps an annotation by one of the four rules (same-class IoU, any-class IoU,
    same-class IoF either way)."""
    if len(gt_boxes) == 0 or len(det_boxes) == 0:
        return torch.zeros(len(det_boxes), dtype=torch.bool, device=det_boxes.device)
    iou = box_iou(det_boxes, gt_boxes)
    same = det_labels[:, None] == gt_labels[None, :]
    gt_in_det = box_iof(gt_boxes, det_boxes).T
    det_in_gt = box_iof(det_boxes, gt_boxes)
    hit = (same & (iou > same_class_iou)) | (iou > any_class_iou)
    hit |= same & ((gt_in_det > iof_thr) | (det_in_gt > iof_thr))
    return hit.any(dim=1)


def merge_pseudo_boxes(
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    det_boxes: torch.Tensor,
    det_labels: torch.Tensor,
    det_scores: torch.Tensor,
    calibrated: torch.Tensor | None,
    rules: MergeRules = MergeRules(),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge teacher detections into the sparse GT of one image.

    Args:
        gt_boxes, gt_labels: the sparse annotations (student view).
        det_boxes, det_labels, det_scores: the teacher's detections mapped to the student view, raw scores.
        calibrated: calibrated scores, or None before the first calibrator fit (then only the raw threshold).

    Returns:
        (boxes, labels, kept, candidate): the merged targets, and two (N,) masks over the detections: ``kept`` the
        merged ones, ``candidate`` those passing every rule except the calibrated threshold (for the analysis of
        kept pseudo boxes: README, Evidence).
    """
    size = det_boxes[:, 2:] - det_boxes[:, :2]
    candidate = (det_scores >= rules.ori_thr) & (size > rules.min_size).all(dim=1)
    candidate &= ~overlaps_annotation(
        det_boxes, det_labels, gt_boxes, gt_labels, rules.same_class_iou, rules.any_class_iou, rules.iof_thr
    )
    kept = candidate if calibrated is None else candidate & (calibrated >= rules.strict_thr)
    boxes = torch.cat([gt_boxes, det_boxes[kept].to(gt_boxes.dtype)])
    labels = torch.cat([gt_labels, det_labels[kept].to(gt_labels.dtype)])
    return boxes, labels, kept, candidate
