"""Losses of MixTeacher's detector: the Faster R-CNN R-CNN loss with SoftTeacher's per-RoI classification weights.

Source: SoftTeacher (Xu et al., ICCV 2021, arXiv 2106.09018, Sec. 3.2 "soft teacher", Eq. 3-4), as inherited by the
released MixTeacher code (``ssod/models/soft_teacher_simple_msi.py``): every negative RoI of the unsupervised
classification loss is weighted by the teacher's background probability, positives by 1, and the loss is normalised
by the sum of the weights:

    L_cls = sum_i w_i CE(p_i, y_i) / max(sum_i w_i, 1)

The regression loss is summed over the positives and divided by the number of sampled RoIs (mmdetection's
``avg_factor = num_samples``, torchvision's ``fastrcnn_loss``), smooth L1 with ``beta`` (torchvision 1/9) or L1
(``beta = 0``, mmdetection's ``L1Loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["fast_rcnn_loss", "soft_teacher_weights"]


def fast_rcnn_loss(
    class_logits: torch.Tensor,
    box_regression: torch.Tensor,
    labels: torch.Tensor,
    regression_targets: torch.Tensor,
    cls_weights: torch.Tensor | None = None,
    beta: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """R-CNN classification and box losses.

    Args:
        class_logits: (N, K+1) logits, background at index 0.
        box_regression: (N, 4(K+1)) class-specific deltas.
        labels: (N,) targets in 0..K.
        regression_targets: (N, 4) encoded targets (only the positives' rows are used).
        cls_weights: (N,) per-RoI classification weights; None: plain mean cross entropy.
        beta: smooth-L1 transition point; 0 gives L1.

    Returns:
        (classification loss, box loss).
    """
    if class_logits.shape[0] == 0:
        zero = class_logits.sum() + box_regression.sum()
        return zero, zero
    ce = F.cross_entropy(class_logits, labels, reduction="none")
    if cls_weights is None:
        cls_loss = ce.mean()
    else:
        cls_loss = (cls_weights * ce).sum() / cls_weights.sum().clamp(min=1.0)
    pos = torch.where(labels > 0)[0]
    deltas = box_regression.reshape(box_regression.shape[0], -1, 4)[pos, labels[pos]]
    if beta > 0:
        box = F.smooth_l1_loss(deltas, regression_targets[pos], beta=beta, reduction="sum")
    else:
        box = F.l1_loss(deltas, regression_targets[pos], reduction="sum")
    return cls_loss, box / labels.numel()


def soft_teacher_weights(labels: torch.Tensor, background_prob: torch.Tensor) -> torch.Tensor:
    """SoftTeacher classification weights: the teacher's background probability for negatives, 1 for positives."""
    return torch.where(labels > 0, torch.ones_like(background_prob), background_prob)
