"""Teacher-student machinery shared by SSOD methods built on a mean teacher (SoftTeacher, MixTeacher, ...).

* :func:`ema_update`: the mean teacher, theta_t <- m theta_t + (1 - m) theta_s with the effective momentum
  m = min(momentum, 1 - 1 / (step + 1)) (mmdet ``MeanTeacher`` hook with ``warm_up=0``: the teacher is a copy of
  the student at step 0); buffers are copied.
* :func:`unsup_weight`: 0 before the burn-in, linear ramp, constant after (``unsup_start``/``unsup_warmup`` of the
  released ``SoftTeacherSimMSI``).
* :func:`box_jitter_uncertainty`: SoftTeacher's box-jittering regression uncertainty (Sec. 3.3 of arXiv 2106.09018).
* :class:`PseudoLabels` and :func:`map_boxes`: pseudo boxes with scores and uncertainty, moved between views.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mixteacher.augment import transform_boxes

__all__ = ["PseudoLabels", "box_jitter", "box_jitter_uncertainty", "ema_update", "map_boxes", "unsup_weight"]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float, step: int) -> float:
    """Update ``teacher`` in place from ``student``; returns the effective momentum used.

    Parameters: ``t = m t + (1 - m) s`` with ``m = min(momentum, 1 - 1 / (step + 1))``; buffers are copied (the
    released hook averages parameters only; frozen BN makes the buffers constant anyway).
    """
    m = min(momentum, 1.0 - 1.0 / (step + 1))
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_mul_(t_params, m)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - m)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        t_buf.copy_(s_buf)
    return m


def unsup_weight(step: int, start: int, warmup: int, weight: float) -> float:
    """Unsupervised loss weight: 0 for ``step < start``, ``weight (step - start) / warmup`` during the ramp,
    ``weight`` from ``start + warmup`` on."""
    if step < start:
        return 0.0
    if warmup <= 0 or step >= start + warmup:
        return weight
    return weight * (step - start) / warmup


def box_jitter(boxes: torch.Tensor, times: int, scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``times`` Gaussian copies of each box: offsets with std ``scale`` x (w, h, w, h) (w, h at least 1).
    Returns (times, N, 4)."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0).repeat(1, 2)
    noise = torch.randn((times, *boxes.shape), generator=generator, device=boxes.device, dtype=boxes.dtype)
    return boxes[None] + noise * wh[None] * scale


def box_jitter_uncertainty(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    regress: Callable[[torch.Tensor], torch.Tensor],
    times: int = 10,
    scale: float = 0.06,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SoftTeacher regression uncertainty of each pseudo box.

    The box is jittered ``times`` times (:func:`box_jitter`), every copy is refined by ``regress`` (N', 4) ->
    (N', K+1, 4) class-specific boxes, the refined box of the box's class is taken, and the uncertainty is the std
    over the copies divided by the box's (w, h, w, h), averaged over the four coordinates. A head whose output does
    not depend on its input box gives exactly 0.
    """
    if boxes.numel() == 0:
        return boxes.new_zeros(0)
    jittered = box_jitter(boxes, times, scale, generator)  # (T, N, 4)
    refined = regress(jittered.reshape(-1, 4)).reshape(times, boxes.shape[0], -1, 4)
    picked = refined[:, torch.arange(boxes.shape[0], device=boxes.device), labels]  # (T, N, 4)
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0).repeat(1, 2)
    return (picked.std(dim=0) / wh).mean(dim=-1)


@dataclass
class PseudoLabels:
    """Pseudo boxes of one image (xyxy in the coordinates of the view they were predicted on), labels 1..K,
    detection scores and box-jitter uncertainty."""

    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    uncertainty: torch.Tensor

    def select(self, keep: torch.Tensor) -> PseudoLabels:
        return PseudoLabels(self.boxes[keep], self.labels[keep], self.scores[keep], self.uncertainty[keep])

    def __len__(self) -> int:
        return self.boxes.shape[0]


def map_boxes(boxes: torch.Tensor, matrix: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Move boxes into another view with a 3x3 matrix and clip them to that view's (height, width)."""
    return transform_boxes(boxes, matrix.to(boxes.device), clip_to=image_size).to(boxes.dtype)
