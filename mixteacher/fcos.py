"""MixTeacher-FCOS's dense head pieces: FCOS outputs, assignment and losses for the mixed-scale FCOS detector
(:class:`mixteacher.model.MixedScaleFCOS`) on torchvision's FCOS (Tian et al., ICCV 2019, arXiv 1904.01355), the
variant the MixTeacher paper reports on COCO partial (Liu et al., CVPR 2023, arXiv 2303.09061) and the released
code does not contain (README, MixTeacher-FCOS).

* P3-P7 pyramid (``LastLevelP6P7`` on P5, torchvision's ``fcos_resnet50_fpn``), one point per location.
* Mixed pyramid: the "-" pyramid's finest level P3- has the size of the regular P4+, so P3x = P3+ and
  Pix = w+ Pi+ + w- crop(P(i-1)-) for i = 4..7, with the shared :class:`~mixteacher.model.ScaleGate` (the same
  :func:`~mixteacher.model.mix_pyramids` as the Faster R-CNN detector, applied to the five FCOS levels).
* torchvision's :class:`~torchvision.models.detection.fcos.FCOSHead` (4 x conv + GroupNorm(32) + ReLU per branch,
  sigmoid classification with prior 0.01, ltrb regression normalised by the stride, centerness on the regression
  branch), over K foreground classes; labels outside this module stay 1..K (0 = background) as in the package.
* :func:`fcos_match`: torchvision's FCOS assignment (point inside the box, centre sampling radius 1.5 strides,
  max(l, t, r, b) in the level's range, (4s, 8s] by default, the smallest box wins), batched over the images.
* :func:`fcos_losses`: sigmoid focal loss (alpha 0.25, gamma 2) over all points, GIoU and centerness BCE on the
  positives, each divided by the number of positives (torchvision's ``FCOSHead.compute_loss``), with an optional
  set of *classification-only* targets (the mined pseudo boxes of MixTeacher's promising label mining).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxLinearCoder
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

__all__ = ["REGRESS_RANGES", "DenseOutputs", "fcos_losses", "fcos_match"]


@dataclass
class DenseOutputs:
    """FCOS head outputs of a batch, levels concatenated: class logits (N, P, K), ltrb deltas (N, P, 4), centerness
    logits (N, P), the points' anchor boxes (P, 4; centre = point, side = stride) and points per level."""

    cls_logits: torch.Tensor
    bbox_regression: torch.Tensor
    ctrness: torch.Tensor
    anchors: torch.Tensor
    points_per_level: list[int]

    def scores(self) -> torch.Tensor:
        """Detection scores (N, P, K): sqrt(sigmoid(cls) x sigmoid(centerness)) (torchvision's FCOS)."""
        return torch.sqrt(torch.sigmoid(self.cls_logits) * torch.sigmoid(self.ctrness)[..., None])


#: torchvision's FCOS level ranges for strides 8..128: max(l, t, r, b) in (4 s, 8 s], i.e. boundaries 64 ... 512
#: between P3 | P4 | ... | P7 (mmdetection's ``regress_ranges``)
REGRESS_RANGES = (64.0, 128.0, 256.0, 512.0)


def fcos_match(
    anchors: torch.Tensor,
    points_per_level: list[int],
    gt_boxes: list[torch.Tensor],
    center_sampling_radius: float = 1.5,
    regress_ranges: tuple[float, ...] = REGRESS_RANGES,
) -> torch.Tensor:
    """FCOS assignment of the points to the boxes of each image: the box index per point (N, P), -1 for background.

    A point matches a box when it lies inside it, within ``center_sampling_radius`` strides of its centre, and its
    largest distance to the box's sides is in its level's range: ``regress_ranges`` are the boundaries between the
    levels (the first level from 0, the last to infinity; the default is torchvision's (4 s, 8 s] for strides 8-128);
    among several boxes the smallest wins (torchvision's ``FCOS.compute_loss``). The images' boxes are padded to a
    common count, so the whole batch is one tensor computation."""
    if len(regress_ranges) != len(points_per_level) - 1:
        raise ValueError(f"{len(points_per_level)} levels need {len(points_per_level) - 1} regress_ranges boundaries")
    n, p = len(gt_boxes), anchors.shape[0]
    most = max((len(b) for b in gt_boxes), default=0)
    if most == 0:
        return torch.full((n, p), -1, dtype=torch.int64, device=anchors.device)
    boxes = anchors.new_zeros((n, most, 4))
    valid = torch.zeros((n, most), dtype=torch.bool, device=anchors.device)
    for i, b in enumerate(gt_boxes):
        boxes[i, : len(b)], valid[i, : len(b)] = b, True
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2  # (P, 2)
    sizes = anchors[:, 2] - anchors[:, 0]  # the stride of each point's level
    gt_centers = (boxes[..., :2] + boxes[..., 2:]) / 2  # (N, M, 2)
    match = (centers[None, :, None] - gt_centers[:, None]).abs().amax(dim=-1) < center_sampling_radius * sizes[
        None, :, None
    ]
    x, y = centers[None, :, None, 0], centers[None, :, None, 1]
    dist = torch.stack(
        [x - boxes[:, None, :, 0], y - boxes[:, None, :, 1], boxes[:, None, :, 2] - x, boxes[:, None, :, 3] - y], -1
    )  # (N, P, M, 4)
    match &= dist.amin(dim=-1) > 0
    counts = torch.tensor(points_per_level, device=anchors.device)
    bounds = torch.tensor([0.0, *regress_ranges, float("inf")], dtype=anchors.dtype, device=anchors.device)
    lower, upper = bounds[:-1].repeat_interleave(counts), bounds[1:].repeat_interleave(counts)
    reach = dist.amax(dim=-1)
    match &= (reach > lower[None, :, None]) & (reach < upper[None, :, None]) & valid[:, None]
    areas = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # (N, M)
    best, index = (match.float() * (1e8 - areas[:, None])).max(dim=-1)
    return torch.where(best < 1e-5, torch.full_like(index, -1), index)


def _gather_targets(
    matched: torch.Tensor, boxes: list[torch.Tensor], labels: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point the matched box (N, P, 4) and its label (N, P; 0 where unmatched)."""
    n, p = matched.shape
    out_boxes = matched.new_zeros((n, p, 4), dtype=torch.float32)
    out_labels = matched.new_zeros((n, p))
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        if len(b):
            out_boxes[i] = b[matched[i].clamp(min=0)].float()
            out_labels[i] = torch.where(matched[i] >= 0, lab.to(torch.int64)[matched[i].clamp(min=0)], 0)
    return out_boxes, out_labels


def fcos_losses(
    outputs: DenseOutputs,
    gt_boxes: list[torch.Tensor],
    gt_labels: list[torch.Tensor],
    center_sampling_radius: float = 1.5,
    cls_only_boxes: list[torch.Tensor] | None = None,
    cls_only_labels: list[torch.Tensor] | None = None,
    regress_ranges: tuple[float, ...] = REGRESS_RANGES,
) -> dict[str, torch.Tensor]:
    """FCOS losses of a batch (labels 1..K): ``{"fcos_cls", "fcos_box", "fcos_ctr"}``.

    Classification: sigmoid focal loss over every point and class against the one-hot targets of the points matched
    to ``gt_boxes`` *and* ``cls_only_boxes`` (matched together, so the smallest box wins as usual); box (GIoU) and
    centerness (BCE) losses on the points matched to ``gt_boxes`` only. All three are divided by the number of
    classification positives (at least 1), as torchvision divides by the number of foreground points."""
    boxes, labels = list(gt_boxes), list(gt_labels)
    n_reg = [len(b) for b in boxes]
    if cls_only_boxes is not None:
        boxes = [torch.cat([b, e.to(b.dtype)]) for b, e in zip(boxes, cls_only_boxes)]
        labels = [torch.cat([lab.to(torch.int64), e.to(torch.int64)]) for lab, e in zip(labels, cls_only_labels)]
    matched = fcos_match(outputs.anchors, outputs.points_per_level, boxes, center_sampling_radius, regress_ranges)
    target_boxes, target_labels = _gather_targets(matched, boxes, labels)
    positive = matched >= 0
    regress = positive & (matched < torch.tensor(n_reg, device=matched.device)[:, None])
    num_pos = max(1, int(positive.sum()))
    logits = outputs.cls_logits.float()
    one_hot = torch.zeros_like(logits)
    one_hot[positive, target_labels[positive] - 1] = 1.0
    loss_cls = sigmoid_focal_loss(logits, one_hot, reduction="sum")
    coder = BoxLinearCoder(normalize_by_size=True)
    anchors = outputs.anchors[None].expand(len(boxes), -1, -1)
    pred = coder.decode(outputs.bbox_regression.float(), anchors)
    loss_box = generalized_box_iou_loss(pred[regress], target_boxes[regress], reduction="sum")
    ltrb = coder.encode(anchors[regress], target_boxes[regress])
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ctr_target = torch.sqrt((lr.amin(-1) / lr.amax(-1)).clamp(min=0) * (tb.amin(-1) / tb.amax(-1)).clamp(min=0))
    loss_ctr = F.binary_cross_entropy_with_logits(outputs.ctrness.float()[regress], ctr_target, reduction="sum")
    return {"fcos_cls": loss_cls / num_pos, "fcos_box": loss_box / num_pos, "fcos_ctr": loss_ctr / num_pos}
