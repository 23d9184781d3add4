"""CREMA's coarse-to-fine credibility modelling (README, Method): credibility, memory, coarse split, memory-based
modulation and the selective label update. Everything is vectorised over samples and stays on the device.

* :func:`credibility`: c_i = 1 - JS(p_i, e_{y_i}) / ln 2 (default), p_i[y_i], 1 - min-max-normalised CE, or
  two-view agreement; p_i from the un-augmented image in eval mode (DivideMix's ``eval_train``).
* :class:`CredibilityMemory`: per-sample ring buffers of the last K credibilities and argmax predictions.
* :func:`coarse_split`: DivideMix's 2-component GMM (max_iter 10, tol 1e-2, reg_covar 5e-4) through
  :func:`shared.noisy.dividemix.gmm_clean_probability` on the divergence 1 - c; clean = P(credible) > 0.5.
* :func:`modulation_weights`: omega_i = mean_K(c_i) (1 - std_K(c_i)) clipped to [weight_min, 1] (the batch
  normalisation happens in :func:`crema.losses.crema_loss`).
* :func:`selective_label_update`: a noisy-set sample takes the network's argmax when max p >= tau, the argmax has
  not changed over the K memory epochs and (two networks) both networks agree; an updated sample whose rule stops
  holding reverts to its given label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shared.noisy.dividemix import gmm_clean_probability

__all__ = [
    "CredibilityMemory",
    "UpdateResult",
    "coarse_split",
    "credibility",
    "js_divergence",
    "modulation_weights",
    "selective_label_update",
]

LN2 = math.log(2.0)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (natural log, in [0, ln 2]) between rows of ``p`` and ``q`` (0 log 0 = 0)."""
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor) -> torch.Tensor:
        return (torch.xlogy(a, a) - torch.xlogy(a, m)).sum(-1)

    return (0.5 * kl(p) + 0.5 * kl(q)).clamp(min=0.0)


def credibility(
    probs: torch.Tensor, labels: torch.Tensor, kind: str = "js", probs_view: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample credibility in [0, 1] (1 = the label is fully credible).

    Args:
        probs: ``N x C`` softmax of the un-augmented inputs.
        labels: ``N`` given labels.
        kind: ``js`` (1 - JS(p, onehot(y)) / ln 2), ``prob`` (p[y]), ``loss`` (1 - min-max-normalised CE over the
            N samples) or ``agreement`` (mean of p[y] over the two views times 1 - JS(p, p_view) / ln 2).
        probs_view: ``agreement`` only: the softmax of a second (augmented) view.
    """
    labels = labels.to(probs.device)
    if kind == "js":
        onehot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
        return 1.0 - js_divergence(probs, onehot) / LN2
    p_y = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    if kind == "prob":
        return p_y
    if kind == "loss":
        loss = -p_y.clamp(min=1e-12).log()
        span = loss.max() - loss.min()
        return 1.0 - (loss - loss.min()) / (span if span > 0 else 1.0)
    if kind == "agreement":
        if probs_view is None:
            raise ValueError("credibility 'agreement' needs the second view's probabilities")
        q_y = probs_view.gather(1, labels.view(-1, 1)).squeeze(1)
        return 0.5 * (p_y + q_y) * (1.0 - js_divergence(probs, probs_view) / LN2)
    raise ValueError(f"unknown credibility {kind!r}; valid: js, prob, loss, agreement")


class CredibilityMemory:
    """Ring buffers of each sample's last ``length`` credibilities and argmax predictions, on ``device``.

    A sample's write position is its own push count modulo K, so samples evaluated in different epochs (Clothing1M
    epoch samples) keep their own histories.
    """

    def __init__(self, num_samples: int, length: int, device: torch.device | str = "cpu"):
        if length < 1:
            raise ValueError(f"memory length must be >= 1, got {length}")
        self.length = length
        self.values = torch.zeros(num_samples, length, device=device)
        self.predictions = torch.full((num_samples, length), -1, dtype=torch.int64, device=device)
        self.count = torch.zeros(num_samples, dtype=torch.int64, device=device)

    def push(self, indices: torch.Tensor, values: torch.Tensor, predictions: torch.Tensor) -> None:
        """Write one epoch's credibility and argmax of the samples ``indices`` (overwrites their oldest entry)."""
        indices = indices.to(self.values.device)
        slot = self.count[indices] % self.length
        self.values[indices, slot] = values.to(self.values)
        self.predictions[indices, slot] = predictions.to(self.predictions)
        self.count[indices] += 1

    def valid(self) -> torch.Tensor:
        """``N x K`` mask of the slots written so far."""
        filled = self.count.clamp(max=self.length).view(-1, 1)
        return torch.arange(self.length, device=self.count.device).view(1, -1) < filled

    def ordered(self) -> torch.Tensor:
        """``N x K`` credibilities, oldest first (slots not yet written come last and hold 0)."""
        full = self.count >= self.length
        start = torch.where(full, self.count % self.length, torch.zeros_like(self.count))
        order = (start.view(-1, 1) + torch.arange(self.length, device=self.count.device)) % self.length
        return self.values.gather(1, order)

    def mean(self) -> torch.Tensor:
        """Mean credibility over the written slots (0 for a sample never evaluated)."""
        valid = self.valid()
        return (self.values * valid).sum(1) / valid.sum(1).clamp(min=1)

    def std(self) -> torch.Tensor:
        """Population standard deviation over the written slots (0 with fewer than two)."""
        valid = self.valid()
        n = valid.sum(1).clamp(min=1)
        mean = (self.values * valid).sum(1) / n
        var = (((self.values - mean.view(-1, 1)) ** 2) * valid).sum(1) / n
        return var.sqrt()

    def last(self) -> torch.Tensor:
        """The most recent credibility of each sample."""
        slot = (self.count - 1).clamp(min=0) % self.length
        return self.values.gather(1, slot.view(-1, 1)).squeeze(1)

    def stable(self) -> torch.Tensor:
        """True where all K slots are written and hold the same argmax."""
        same = (self.predictions == self.predictions[:, :1]).all(1)
        return same & (self.count >= self.length)

    def state_dict(self) -> dict[str, Any]:
        return {"values": self.values.cpu(), "predictions": self.predictions.cpu(), "count": self.count.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["values"].shape) != tuple(self.values.shape):
            raise ValueError(
                f"credibility memory of shape {tuple(state['values'].shape)} does not fit {tuple(self.values.shape)} "
                "(another dataset or memory_length)"
            )
        device = self.values.device
        self.values = state["values"].to(device)
        self.predictions = state["predictions"].to(device)
        self.count = state["count"].to(device)


def coarse_split(
    scores: torch.Tensor,
    p_threshold: float = 0.5,
    max_iter: int = 10,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse level: (P(credible component | c_i), clean mask) from a 2-component GMM on the divergence 1 - c.

    The divergence is min-max normalised and fitted exactly as DivideMix fits its losses (shared helper), so the
    posterior of the low-divergence component is the clean probability.
    """
    divergence = (1.0 - scores).detach().float().cpu()
    prob = gmm_clean_probability(divergence, max_iter=max_iter, tol=tol, reg_covar=reg_covar, seed=seed)
    prob = torch.from_numpy(np.asarray(prob, dtype=np.float32)).to(scores.device)
    return prob, prob > p_threshold


def modulation_weights(memory: CredibilityMemory, kind: str = "mean_std", weight_min: float = 0.0) -> torch.Tensor:
    """omega_i from each sample's credibility history, clipped to [weight_min, 1] (``N``).

    ``mean_std``: mean (1 - std); ``mean``: mean; ``last``: the latest credibility; ``none``: 1.
    """
    if kind == "mean_std":
        omega = memory.mean() * (1.0 - memory.std())
    elif kind == "mean":
        omega = memory.mean()
    elif kind == "last":
        omega = memory.last()
    elif kind == "none":
        omega = torch.ones_like(memory.count, dtype=memory.values.dtype)
    else:
        raise ValueError(f"unknown modulation {kind!r}; valid: mean_std, mean, last, none")
    return omega.clamp(min=weight_min, max=1.0)


@dataclass
class UpdateResult:
    """Selective label update of one epoch: ``labels`` (N, -1 = not updated) and counts."""

    labels: torch.Tensor
    updated: int
    changed: int
    reverted: int


def selective_label_update(
    probs: torch.Tensor,
    given: torch.Tensor,
    candidates: torch.Tensor,
    previous: torch.Tensor,
    threshold: float,
    stable: torch.Tensor | None = None,
    other_prediction: torch.Tensor | None = None,
) -> UpdateResult:
    """Fine level, noisy set: which samples take the network's argmax as their label this epoch.

    Args:
        probs: ``N x C`` un-augmented softmax of the network.
        given: ``N`` given (noisy) labels.
        candidates: ``N`` bool, the noisy set of the coarse split.
        previous: ``N`` last epoch's updated labels (-1 = not updated).
        threshold: tau, the minimum max-probability.
        stable: ``N`` bool, argmax unchanged over the K memory epochs (None: not required).
        other_prediction: ``N`` argmax of the second network (None: not required).

    Returns:
        the new labels (argmax where the rule holds, -1 elsewhere) and the counts: updated, changed (updated to a
        label different from the given one) and reverted (updated last epoch, not any more).
    """
    confidence, prediction = probs.max(1)
    rule = candidates & (confidence >= threshold)
    if stable is not None:
        rule &= stable
    if other_prediction is not None:
        rule &= prediction == other_prediction
    labels = torch.where(rule, prediction, torch.full_like(prediction, -1))
    previous = previous.to(labels.device)
    return UpdateResult(
        labels=labels,
        updated=int(rule.sum()),
        changed=int((rule & (prediction != given.to(labels.device))).sum()),
        reverted=int(((previous >= 0) & ~rule).sum()),
    )
