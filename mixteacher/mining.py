"""Promising label mining (PLM) by score promotion, MixTeacher Sec. 3.3 (arXiv 2303.09061), as implemented in the
released ``SoftTeacherSimMSI.get_sampling_result_mine``.

Student proposals left *negative* by the assignment to the confident pseudo boxes (score > 0.9) are candidates.
Their regressed boxes at the regular scale ("ref") are matched to the low-confidence pseudo boxes
(``mine_score_thr < score < 0.9``) with a max-IoU assigner (IoU >= 0.5, no low-quality match). For a candidate
matched to a pseudo box of class c, the score promotion is

    delta = p_mixed(c) - p_regular(c)

and candidates with ``delta > diff_thr`` become positives of class c with the pseudo box as target. They enter only
the regular-scale R-CNN classification loss.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

__all__ = ["score_promotion"]


def score_promotion(
    ref_probs: torch.Tensor,
    tgt_probs: torch.Tensor,
    ref_boxes: torch.Tensor,
    low_boxes: torch.Tensor,
    low_labels: torch.Tensor,
    diff_thr: float,
    iou_thr: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which candidates are promoted to positives.

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
    n = ref_probs.shape[0]
    if n == 0 or low_boxes.numel() == 0:
        return (
            torch.zeros(n, dtype=torch.bool, device=ref_probs.device),
            torch.full((n,), -1, dtype=torch.int64, device=ref_probs.device),
        )
    best_iou, best = box_iou(ref_boxes, low_boxes).max(dim=1)
    matched = best_iou >= iou_thr
    cls = low_labels[best].long()
    rows = torch.arange(n, device=ref_probs.device)
    delta = tgt_probs[rows, cls] - ref_probs[rows, cls]
    promoted = matched & (delta > diff_thr)
    return promoted, torch.where(matched, best, torch.full_like(best, -1))
