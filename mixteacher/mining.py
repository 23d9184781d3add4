"""Promising label mining (PLM) by score promotion, MixTeacher Sec. 3.3 (arXiv 2303.09061), as implemented in the
released ``SoftTeacherSimMSI.get_sampling_result_mine``.

Student proposals left *negative* by the assignment to the confident pseudo boxes (score > 0.9) are candidates.
Their regressed boxes at the regular scale ("ref") are matched to the low-confidence pseudo boxes
(``mine_score_thr < score < 0.9``) with a max-IoU assigner (IoU >= 0.5, no low-quality match). For a candidate
matched to a pseudo box of class c, the score promotion is

    delta = p_mixed(c) - p_regular(c)

and candidates with ``delta > diff_thr`` become positives of class c with the pseudo box as target. They enter only
the regular-scale R-CNN classification loss.

MixTeacher-FCOS (the paper's FCOS variant; no released code) has no proposals, so :func:`dense_score_promotion`
promotes whole low-confidence boxes: the points FCOS assigns to a box g of class c (:func:`mixteacher.fcos.fcos_match`)
give delta_g = mean over those points of (p_mixed(c) - p_regular(c)), the sigmoid class probabilities of the
teacher's FCOS head on the mixed and on the regular pyramid, and g is promoted when delta_g > ``diff_thr``; a
promoted box becomes a classification-only target of the regular-scale FCOS loss (README, MixTeacher-FCOS).
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

from mixteacher.fcos import REGRESS_RANGES, DenseOutputs, fcos_match

__all__ = ["dense_score_promotion", "match_low_confidence", "promoted_by_score", "score_promotion"]


def match_low_confidence(
    ref_boxes: torch.Tensor,
    low_boxes: torch.Tensor,
    iou_thr: float = 0.5,
    owner: torch.Tensor | None = None,
    low_owner: torch.Tensor | None = None,
) -> torch.Tensor:
    """Max-IoU match of candidate boxes (N, 4) to low-confidence pseudo boxes (M, 4): the matched box index (N,),
    -1 where the best IoU is below ``iou_thr`` (no low-quality match). With ``owner`` (N,) and ``low_owner`` (M,)
    image indices, a batch of images is matched at once, each candidate only to boxes of its own image."""
    n = ref_boxes.shape[0]
    if n == 0 or low_boxes.numel() == 0:
        return torch.full((n,), -1, dtype=torch.int64, device=ref_boxes.device)
    iou = box_iou(ref_boxes, low_boxes)
    if owner is not None and low_owner is not None:
        iou = iou * (owner[:, None] == low_owner[None, :])
    best_iou, best = iou.max(dim=1)
    return torch.where(best_iou >= iou_thr, best, torch.full_like(best, -1))


def promoted_by_score(
    ref_probs: torch.Tensor, tgt_probs: torch.Tensor, classes: torch.Tensor, diff_thr: float
) -> torch.Tensor:
    """The score-promotion rule: ``p_mixed(c) - p_regular(c) > diff_thr`` for each row's class ``c`` in 1..K."""
    rows = torch.arange(ref_probs.shape[0], device=ref_probs.device)
    classes = classes.long()
    return tgt_probs[rows, classes] - ref_probs[rows, classes] > diff_thr


def score_promotion(
    ref_probs: torch.Tensor,
    tgt_probs: torch.Tensor,
    ref_boxes: torch.Tensor,
    low_boxes: torch.Tensor,
    low_labels: torch.Tensor,
    diff_thr: float,
    iou_thr: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which candidates of one image are promoted to positives (:func:`match_low_confidence`, then
    :func:`promoted_by_score`).

    Args:
        ref_probs: (N, K+1) class probabilities of the candidates at the regular scale (background at 0).
        tgt_probs: (N, K+1) class probabilities at the mixed scale.
        ref_boxes: (N, 4) regressed candidate boxes (regular scale, class of the highest foreground score).
        low_boxes: (M, 4) low-confidence pseudo boxes, same coordinates as ``ref_boxes``.
        low_labels: (M,) their classes in 1..K.
        diff_thr: promotion threshold on delta.
        iou_thr: IoU needed to match a low-confidence box.

    Returns:
        (promoted (N,) bool, matched low-confidence box index (N,) int64, -1 where unmatched).
    """
    match = match_low_confidence(ref_boxes, low_boxes, iou_thr)
    matched = match >= 0
    promoted = torch.zeros_like(matched)
    if matched.any():
        promoted[matched] = promoted_by_score(
            ref_probs[matched], tgt_probs[matched], low_labels[match[matched]], diff_thr
        )
    return promoted, match


def dense_score_promotion(
    ref: DenseOutputs,
    tgt: DenseOutputs,
    low_boxes: list[torch.Tensor],
    low_labels: list[torch.Tensor],
    diff_thr: float,
    center_sampling_radius: float = 1.5,
    regress_ranges: tuple[float, ...] = REGRESS_RANGES,
) -> list[torch.Tensor]:
    """Which low-confidence boxes of each image are promoted (MixTeacher-FCOS): a bool tensor per image.

    Args:
        ref: the FCOS head outputs on the regular pyramid (N images).
        tgt: the FCOS head outputs on the mixed pyramid (same points).
        low_boxes: per image (M_i, 4) low-confidence pseudo boxes in the coordinates of those pyramids' image.
        low_labels: per image (M_i,) their classes in 1..K.
        diff_thr: promotion threshold on delta_g.
        center_sampling_radius: FCOS's centre sampling radius of the assignment (in strides).
        regress_ranges: FCOS's level boundaries of the assignment (:func:`mixteacher.fcos.fcos_match`).

    Returns:
        per image (M_i,) bool: mean over the points assigned to the box of p_mixed(c) - p_regular(c) > ``diff_thr``
        (a box no point is assigned to is not promoted).
    """
    counts = [len(b) for b in low_boxes]
    if sum(counts) == 0:
        return [torch.zeros(c, dtype=torch.bool, device=ref.anchors.device) for c in counts]
    matched = fcos_match(ref.anchors, ref.points_per_level, low_boxes, center_sampling_radius, regress_ranges)
    offsets = torch.tensor([0, *counts[:-1]], device=matched.device).cumsum(0)
    image, point = torch.where(matched >= 0)
    box = offsets[image] + matched[image, point]  # index into the boxes of all images
    cls = torch.cat(low_labels).long()[box] - 1
    delta = tgt.cls_logits[image, point, cls].sigmoid() - ref.cls_logits[image, point, cls].sigmoid()
    total = delta.new_zeros(sum(counts)).index_add_(0, box, delta.float())
    hits = torch.bincount(box, minlength=sum(counts))
    promoted = (hits > 0) & (total > diff_thr * hits)
    return list(promoted.split(counts))
