"""Score calibration of the teacher (README, Method): Platt scaling fitted by maximum likelihood, the calibration
set built from the sparse annotations only, and the rolling window of detections gathered over the ranks.

* :class:`ScoreCalibrator`: s_hat = sigmoid(a * logit(s) + b) (Platt; netcal ``LogisticCalibration(detection=True)``
  on the confidence alone) or s_hat = sigmoid(logit(s) / T) (temperature scaling), fitted by minimising the binary
  cross-entropy (the negative log-likelihood) with L-BFGS in float64. ``fit="mle"`` is the released fit on the 0/1
  labels; ``fit="robust"`` is for windows of a few pairs (README, Fidelity notes): Platt's (1999) smoothed targets
  (N+ + 1) / (N+ + 2) and 1 / (N- + 2), which keep the maximum-likelihood estimate finite when the pairs are
  separable, at least ``min_pairs`` pairs, and only an increasing map is accepted (otherwise the previous fit stays).
* :func:`calibration_set`: a teacher detection enters the set only if it overlaps a sparse annotation (same-class
  IoU > 0.5, any-class IoU > 0.75, or same-class IoF > 0.9 either way), since detections in unannotated regions may
  be missing annotations; it is labelled correct when a same-class annotation has IoU > 0.75.
* :class:`CalibrationBuffer`: the (score, correct) pairs of the last ``window`` iterations; at a refit every rank
  gathers every rank's pairs and fits the same calibrator (instead of the released "8 newest pickles", which
  hard-wire 8 GPUs x 2 images).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from calibrated_teacher.pseudo_labels import overlaps_annotation
from shared.distributed import all_gather_objects

__all__ = ["CalibrationBuffer", "ScoreCalibrator", "calibration_set", "logit"]


def logit(scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """log(s / (1 - s)) with s clamped to [eps, 1 - eps]."""
    s = scores.clamp(eps, 1 - eps)
    return torch.log(s) - torch.log1p(-s)


class ScoreCalibrator:
    """Platt (``"platt"``) or temperature (``"temperature"``) scaling of detection scores.

    Before the first successful :meth:`fit`, ``fitted`` is False (the training loop then uses the raw threshold).

    Args:
        method: ``"platt"`` or ``"temperature"``.
        fit: ``"mle"`` (released: maximum likelihood on the 0/1 labels) or ``"robust"`` (Platt's smoothed targets,
            at least ``min_pairs`` pairs, increasing maps only).
        min_pairs: with ``fit="robust"``, windows with fewer (score, label) pairs are not fitted.
    """

    def __init__(
        self,
        method: Literal["platt", "temperature"] = "platt",
        fit: Literal["mle", "robust"] = "mle",
        min_pairs: int = 20,
    ):
        if method not in ("platt", "temperature"):
            raise ValueError(f"unknown calibrator {method!r}: platt or temperature")
        if fit not in ("mle", "robust"):
            raise ValueError(f"unknown calibrator fit {fit!r}: mle or robust")
        self.method, self.fit_mode, self.min_pairs = method, fit, min_pairs
        self.a, self.b, self.fitted = 1.0, 0.0, False

    def fit(self, scores: torch.Tensor, correct: torch.Tensor, max_iter: int = 200) -> bool:
        """Maximum-likelihood fit on (score, 0/1 label) pairs; skipped (False) unless both labels are present (and,
        with ``fit="robust"``, unless there are ``min_pairs`` pairs and the fitted map is increasing)."""
        scores = scores.detach().double().flatten().cpu()
        y = correct.detach().double().flatten().cpu()
        if len(scores) != len(y):
            raise ValueError(f"ScoreCalibrator.fit: {len(scores)} scores but {len(y)} labels")
        if len(y) == 0 or bool((y == y[0]).all()):
            return False
        robust = self.fit_mode == "robust"
        if robust:
            if len(y) < self.min_pairs:
                return False
            n_pos = float(y.sum())
            y = torch.where(y > 0, (n_pos + 1) / (n_pos + 2), 1 / (len(y) - n_pos + 2)).double()
        x = logit(scores)
        params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([params], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def nll() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.binary_cross_entropy_with_logits(self._map(x, params[0], params[1]), y)
            loss.backward()
            return loss

        optimizer.step(nll)
        a, b = params.detach().tolist()
        if not (torch.isfinite(torch.tensor([a, b])).all()) or (robust and a <= 0):
            return False
        self.a, self.b, self.fitted = a, (b if self.method == "platt" else 0.0), True
        return True

    def _map(self, x: torch.Tensor, a: Any, b: Any) -> torch.Tensor:
        return a * x + b if self.method == "platt" else a * x  # temperature: a = 1 / T

    @property
    def temperature(self) -> float:
        return 1.0 / self.a

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """Calibrated scores (same shape and dtype)."""
        x = logit(scores.double())
        return torch.sigmoid(self._map(x, self.a, self.b)).to(scores.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method, "a": self.a, "b": self.b, "fitted": self.fitted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["method"] != self.method:
            raise ValueError(f"calibrator state is {state['method']!r}, this run uses {self.method!r}")
        self.a, self.b, self.fitted = float(state["a"]), float(state["b"]), bool(state["fitted"])


def calibration_set(
    det_boxes: torch.Tensor,
    det_labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    overlap_iou: float = 0.5,
    any_class_iou: float = 0.75,
    iof_thr: float = 0.9,
    tp_iou: float = 0.75,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(in_set, correct), two (N,) bool masks over an image's teacher detections: ``in_set`` the detections that
    overlap a sparse annotation, ``correct`` those with a same-class annotation at IoU > ``tp_iou``."""
    in_set = overlaps_annotation(det_boxes, det_labels, gt_boxes, gt_labels, overlap_iou, any_class_iou, iof_thr)
    if len(gt_boxes) == 0 or len(det_boxes) == 0:
        return in_set, torch.zeros_like(in_set)
    same = det_labels[:, None] == gt_labels[None, :]
    correct = ((box_iou(det_boxes, gt_boxes) > tp_iou) & same).any(dim=1)
    return in_set, correct & in_set


class CalibrationBuffer:
    """(iteration, score, correct) of this rank's calibration-set detections; :meth:`window` gathers the last
    ``window`` iterations of every rank."""

    def __init__(self, window: int):
        self.window = window
        self.steps = torch.zeros(0, dtype=torch.int64)
        self.scores = torch.zeros(0, dtype=torch.float32)
        self.correct = torch.zeros(0, dtype=torch.bool)

    def add(self, step: int, scores: torch.Tensor, correct: torch.Tensor) -> None:
        self.steps = torch.cat([self.steps, torch.full((len(scores),), step, dtype=torch.int64)])
        self.scores = torch.cat([self.scores, scores.detach().float().cpu()])
        self.correct = torch.cat([self.correct, correct.detach().bool().cpu()])

    def window_data(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's pairs of iterations ``step - window < t <= step`` (older ones are dropped here)."""
        keep = self.steps > step - self.window
        self.steps, self.scores, self.correct = self.steps[keep], self.scores[keep], self.correct[keep]
        parts = all_gather_objects((self.scores, self.correct))
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def __len__(self) -> int:
        return len(self.scores)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"steps": self.steps, "scores": self.scores, "correct": self.correct}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.steps, self.scores, self.correct = state["steps"], state["scores"], state["correct"]
