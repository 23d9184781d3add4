"""CREMA's training losses (README, Method, step 5).

Roles of the samples in a batch: ``CLEAN`` (coarse clean set, omega-weighted CE on the given label), ``UPDATED``
(selectively updated noisy sample, CE on the new label), ``REST`` (noisy, not updated: consistency term to the
sharpened un-augmented prediction when ``noisy_rest: consistency``, else never in a batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shared.noisy.dividemix import neg_entropy, sharpen, uniform_prior_penalty

__all__ = ["CLEAN", "REST", "UPDATED", "crema_loss", "normalise_batch_weights", "warmup_loss"]

CLEAN, UPDATED, REST = 0, 1, 2


def normalise_batch_weights(weights: torch.Tensor) -> torch.Tensor:
    """omega / mean(omega) over the batch, so the weighted loss keeps the scale of plain CE (all-zero -> zeros)."""
    return weights / weights.mean().clamp(min=1e-12) if weights.numel() else weights


def warmup_loss(logits: torch.Tensor, labels: torch.Tensor, penalty: bool = False) -> torch.Tensor:
    """CE on the given labels (+ DivideMix's negative-entropy penalty for asymmetric noise)."""
    loss = F.cross_entropy(logits, labels)
    return loss + neg_entropy(logits) if penalty else loss


def crema_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    roles: torch.Tensor,
    weights: torch.Tensor,
    rest_probs: torch.Tensor | None = None,
    consistency_weight: float = 1.0,
    temperature: float = 0.5,
    prior_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The fine-level loss of one batch.

    L = (sum_{clean} omega_hat_i CE_i + sum_{updated} CE_i) / n_sup + lambda_c mean_{rest} ||softmax - sharpen(q)||^2
    + lambda_p KL(u || mean softmax), with omega_hat the clean weights normalised to mean 1 within the batch and
    ``q`` the un-augmented prediction of the credibility pass.
    """
    clean, updated, rest = roles == CLEAN, roles == UPDATED, roles == REST
    sup = clean | updated
    w = torch.zeros_like(weights)
    w[clean] = normalise_batch_weights(weights[clean])
    w[updated] = 1.0
    ce = F.cross_entropy(logits[sup], labels[sup], reduction="none") if sup.any() else logits.new_zeros(0)
    sup_loss = (w[sup] * ce).sum() / sup.sum().clamp(min=1)
    loss = sup_loss
    stats = {"sup_loss": float(sup_loss.detach())}
    if rest.any() and rest_probs is not None and consistency_weight > 0:
        target = sharpen(rest_probs[rest], temperature)
        cons = ((F.softmax(logits[rest], 1) - target) ** 2).sum(1).mean()
        loss = loss + consistency_weight * cons
        stats["consistency"] = float(cons.detach())
    if prior_weight > 0:
        prior = uniform_prior_penalty(logits)
        loss = loss + prior_weight * prior
        stats["prior"] = float(prior.detach())
    return loss, stats
