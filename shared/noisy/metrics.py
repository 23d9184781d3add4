"""Metrics of the noisy-label packages: label accuracy of (corrected) labels, best and last test accuracy."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["AccuracyTracker", "label_accuracy", "label_precision_recall"]


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def label_accuracy(labels: Any, clean: Any) -> float:
    """Percentage of ``labels`` equal to the true labels ``clean`` (hard labels, or soft N x C via argmax)."""
    labels, clean = _np(labels), _np(clean)
    if labels.ndim == 2:
        labels = labels.argmax(1)
    if labels.shape != clean.shape:
        raise ValueError(f"labels {labels.shape} and clean labels {clean.shape} differ in shape")
    return float(100.0 * np.mean(labels == clean)) if labels.size else math.nan


def label_precision_recall(selected: Any, labels: Any, clean: Any) -> dict[str, float]:
    """Quality of a clean-sample selection (e.g. DivideMix's labeled set), in percent.

    precision: share of selected samples whose label is correct; recall: share of correctly labelled samples
    that were selected.
    """
    selected, correct = _np(selected).astype(bool), _np(labels) == _np(clean)
    tp = float(np.sum(selected & correct))
    return {"precision": 100 * tp / max(selected.sum(), 1), "recall": 100 * tp / max(correct.sum(), 1)}


@dataclass
class AccuracyTracker:
    """Best and last test accuracy over epochs (the two numbers the noisy-label tables report)."""

    best: float = -math.inf
    best_epoch: int = -1
    last: float = math.nan
    history: list[float] = field(default_factory=list)

    def update(self, accuracy: float, epoch: int) -> bool:
        """Record an epoch's accuracy; returns True when it is a new best."""
        self.last = float(accuracy)
        self.history.append(self.last)
        if self.last > self.best:
            self.best, self.best_epoch = self.last, epoch
            return True
        return False

    def summary(self) -> dict[str, Any]:
        """``best`` (NaN before any test), ``best_epoch`` and ``last``: what a trainer's ``fit`` returns."""
        best = self.best if math.isfinite(self.best) else math.nan
        return {"best": best, "best_epoch": self.best_epoch, "last": self.last}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "last": self.last, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
        self.last, self.history = float(state["last"]), list(state["history"])
