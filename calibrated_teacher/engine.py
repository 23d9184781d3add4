"""Evaluation and analysis shared by train, eval, visualize and evidence (README, Results).

* :func:`evaluate`: COCO bbox AP with the full val annotations (pycocotools through ``shared.detection``).
* :func:`calibration_quality`: ECE (20 equal-width bins, ``shared.metrics.expected_calibration_error``) of the
  teacher's val detections with raw score >= ``ori_thr``, before and after calibration. A detection is correct when
  a same-class full annotation has IoU > 0.75 with it (the calibration target of training, not one-to-one).
* :func:`reliability_diagram`: the two reliability curves as a PNG.
* :func:`pseudo_box_precision`: the precision of the kept pseudo boxes (against the dropped annotations) with the
  calibrated threshold and with a fixed raw threshold keeping the same number of boxes over the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.ops import box_iou

from calibrated_teacher.calibration import ScoreCalibrator
from calibrated_teacher.config import PACKAGE
from shared.checkpoint import load_checkpoint
from shared.detection import CocoDetection, coco_detections, evaluate_detections
from shared.distributed import DistContext, all_gather_objects
from shared.metrics import expected_calibration_error

__all__ = [
    "CHECKPOINT_KEYS",
    "calibration_quality",
    "evaluate",
    "pseudo_box_precision",
    "read_checkpoint",
    "reliability_diagram",
    "val_predictions",
]

ECE_BINS = 20


#: What a calibrated_teacher training checkpoint must hold to be evaluated or drawn.
CHECKPOINT_KEYS = ("config", "student", "teacher", "step", "method_state")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A calibrated_teacher training checkpoint (``CheckpointError`` for a missing, foreign or incomplete file)."""
    return load_checkpoint(path, package=PACKAGE, required=CHECKPOINT_KEYS)


@torch.no_grad()
def val_predictions(model: nn.Module, loader: DataLoader, ctx: DistContext) -> list[tuple[dict, dict]]:
    """(output, target) pairs of this rank's share of the val set, on the CPU."""
    model.eval()
    pairs = []
    for images, targets in loader:
        outputs = model([im.to(ctx.device) for im in images])
        pairs += [({k: v.cpu() for k, v in o.items()}, t) for o, t in zip(outputs, targets)]
    return pairs


def evaluate(
    model: nn.Module, loader: DataLoader, val_set: CocoDetection, ctx: DistContext, label_offset: int
) -> dict[str, Any]:
    """COCO bbox metrics (fractions) of ``model`` on the val set, every rank gets the result."""
    pairs = val_predictions(model, loader, ctx)
    detections = coco_detections([o for o, _ in pairs], [t for _, t in pairs], val_set.cat_ids, label_offset)
    return evaluate_detections(detections, val_set.coco, ctx)


def _correct(output: dict[str, torch.Tensor], target: dict[str, Any], tp_iou: float) -> torch.Tensor:
    if len(target["boxes"]) == 0 or len(output["boxes"]) == 0:
        return torch.zeros(len(output["boxes"]), dtype=torch.bool)
    same = output["labels"][:, None] == target["labels"][None]
    return ((box_iou(output["boxes"], target["boxes"]) > tp_iou) & same).any(1)


def calibration_quality(
    pairs: list[tuple[dict, dict]], calibrator: ScoreCalibrator, ori_thr: float, tp_iou: float = 0.75
) -> dict[str, Any]:
    """ECE before/after calibration of detections with score >= ``ori_thr`` (every rank's pairs gathered)."""
    scores, correct = [], []
    for output, target in pairs:
        keep = output["scores"] >= ori_thr
        scores.append(output["scores"][keep])
        correct.append(_correct({k: v[keep] for k, v in output.items()}, target, tp_iou))
    local = (
        torch.cat(scores) if scores else torch.zeros(0),
        torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool),
    )
    parts = all_gather_objects(local)
    if len(parts) > 1:
        local = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    raw, hit = local
    if len(raw) == 0:
        return {"num": 0, "ece_raw": float("nan"), "ece_calibrated": float("nan"), "scores": raw, "correct": hit}
    cal = calibrator(raw) if calibrator.fitted else raw
    return {
        "num": len(raw),
        "precision": float(hit.float().mean()),
        "ece_raw": expected_calibration_error(raw, hit, n_bins=ECE_BINS),
        "ece_calibrated": expected_calibration_error(cal, hit, n_bins=ECE_BINS),
        "calibrator": calibrator.state_dict(),
        "scores": raw,
        "calibrated": cal,
        "correct": hit,
    }


def reliability_diagram(quality: dict[str, Any], path: str | Path, n_bins: int = ECE_BINS) -> Path | None:
    """Accuracy against mean confidence per equal-width bin, raw and calibrated, with the ECEs in the legend."""
    if not quality["num"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    hit = quality["correct"].double()
    for key, name in (("scores", "raw"), ("calibrated", "calibrated")):
        conf = quality[key].double()
        bins = (torch.searchsorted(edges, conf) - 1).clamp(0, n_bins - 1)
        count = torch.bincount(bins, minlength=n_bins).double()
        filled = count > 0
        mean_conf = torch.bincount(bins, conf, minlength=n_bins)[filled] / count[filled]
        acc = torch.bincount(bins, hit, minlength=n_bins)[filled] / count[filled]
        ece = quality["ece_raw" if key == "scores" else "ece_calibrated"]
        ax.plot(mean_conf.numpy(), acc.numpy(), "o-", ms=3, label=f"{name} (ECE {100 * ece:.1f})")
    ax.set(xlabel="confidence", ylabel="precision (same class, IoU > 0.75)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def pseudo_box_precision(table: torch.Tensor) -> dict[str, float]:
    """From a :class:`~calibrated_teacher.teacher_student.PseudoBoxLog` table (step, raw, calibrated, correct,
    kept): the number and precision of every merged box of the run, and, over the candidates scored by a fitted
    calibrator, the precision of those with calibrated score >= the threshold (the kept ones) and of the same
    number of candidates with the highest raw scores (one fixed raw threshold over the run)."""
    merged = table[:, 4] > 0
    scored = table[~torch.isnan(table[:, 2])]
    kept = scored[:, 4] > 0
    n = int(kept.sum())
    out = {
        "merged_total": float(table[:, 4].sum()),
        "merged_precision": float(table[merged, 3].mean()) if bool(merged.any()) else float("nan"),
        "candidates": float(len(scored)),
        "kept": float(n),
    }
    if n == 0:
        return {**out, "precision_calibrated": float("nan"), "precision_raw_equal_count": float("nan")}
    order = torch.sort(scored[:, 1], descending=True, stable=True).indices[:n]
    out["precision_calibrated"] = float(scored[kept, 3].mean())
    out["precision_raw_equal_count"] = float(scored[order, 3].mean())
    out["raw_threshold_equal_count"] = float(scored[order[-1], 1])
    return out
