"""SLEEG's estimators and losses (paper Sec. 3; released code ``core/modeling/losses.py`` / ``uncertainty.py``).

* :func:`jem_energy`: JEM(z) = -log sum_y exp(g(z)[y]) (paper eq. 4, temperature 1). High on anomalies.
* :func:`task_agnostic_loss`: the task-agnostic binary estimator (TAE): 2-class cross-entropy of the OoD head on the
  (refined) self-generated anomaly labels, ignore label 255 (paper eq. 5).
* :func:`task_oriented_residual_loss`: the task-oriented residual estimator (TORE, paper eq. 6-8): per image,
  {E_normal[m] - E_anomaly[m] + margin}_+ with m = h[1] + sg(S); S is the energy-guided score
  (JEM, or w * h[1] + JEM as the released code), so the dynamic margin gamma_hat = gamma + E_normal JEM - E_anomaly JEM
  enters without gradient.
* :func:`segmentation_loss`: decode + 0.4 auxiliary cross-entropy for training the segmentor (mmseg recipe).

Cross-entropy averaging: mmseg 0.27's CrossEntropyLoss (the released code) averages over *all* pixels, ignored ones
counting as zero (``avg_non_ignore=False``); ``average="valid"`` divides by the non-ignored pixels instead.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["cross_entropy", "jem_energy", "segmentation_loss", "task_agnostic_loss", "task_oriented_residual_loss"]

Average = Literal["all", "valid"]


def jem_energy(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """JEM(z) = -logsumexp over the class dimension (paper eq. 4). The released code's ``energy`` is JEM + 1."""
    return -torch.logsumexp(logits, dim=dim)


def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, average: Average = "all"
) -> torch.Tensor:
    """Pixel cross-entropy; `logits` are resized (bilinear, align_corners=False) to the label size first, as mmseg's
    decode heads do. ``average`` is "all" (mmseg 0.27 default) or "valid" (non-ignored pixels only)."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits, labels.long(), ignore_index=ignore_index, reduction="none")
    if average == "all":
        return loss.mean()
    valid = (labels != ignore_index).sum()
    return loss.sum() / valid.clamp(min=1)


def task_agnostic_loss(
    ood_logits: torch.Tensor, ood_labels: torch.Tensor, ignore_index: int = 255, average: Average = "all"
) -> torch.Tensor:
    """TAE: cross-entropy of the 2-class OoD head (B, 2, h, w) against 0 normal / 1 anomaly / 255 ignored labels."""
    return cross_entropy(ood_logits, ood_labels, ignore_index, average)


def task_oriented_residual_loss(
    anomaly_logit: torch.Tensor,
    guide_score: torch.Tensor,
    ood_labels: torch.Tensor,
    margin: float = 15.0,
    eps: float = 1e-10,
) -> torch.Tensor:
    """TORE hinge (paper eq. 6-8; released ``LikelihoodLoss``), averaged over the batch.

    Args:
        anomaly_logit: h[1] at label resolution (B, H, W), with gradient.
        guide_score: the energy-guided score S (B, H, W); it enters under stop-gradient.
        ood_labels: (B, H, W) 0 normal, 1 anomaly, anything else ignored.
        margin: gamma (15 in the paper, 20 in the released code).

    Per image: max(0, mean_{label 0}(h1 + sg(S)) - mean_{label 1}(h1 + sg(S)) + margin); the means divide by
    (count + eps), so an image without anomaly pixels contributes max(0, mean_normal + margin) as in the code.
    """
    m = (anomaly_logit + guide_score.detach()).flatten(1)
    labels = ood_labels.flatten(1)
    normal, anomaly = (labels == 0).to(m.dtype), (labels == 1).to(m.dtype)
    per_image = (m * normal).sum(1) / (normal.sum(1) + eps) - (m * anomaly).sum(1) / (anomaly.sum(1) + eps) + margin
    return per_image.clamp(min=0).mean()


def segmentation_loss(
    seg_logits: torch.Tensor,
    aux_logits: torch.Tensor | None,
    labels: torch.Tensor,
    aux_weight: float = 0.4,
    ignore_index: int = 255,
    average: Average = "all",
) -> dict[str, torch.Tensor]:
    """DeepLabv3 training loss: CE(decode) + aux_weight * CE(auxiliary FCN head). Returns the parts and the total."""
    parts = {"loss_decode": cross_entropy(seg_logits, labels, ignore_index, average)}
    if aux_logits is not None:
        parts["loss_aux"] = aux_weight * cross_entropy(aux_logits, labels, ignore_index, average)
    parts["loss"] = sum(parts.values())
    return parts
