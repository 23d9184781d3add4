"""Detection metrics: COCO evaluation through pycocotools, and the expected calibration error."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from shared.metrics._inputs import ArrayLike, to_tensor

# Names of COCOeval.stats for bbox / segm evaluation, in order.
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_GT_KEYS = {
    "bbox": ("image_id", "category_id", "bbox", "area", "iscrowd"),
    "segm": ("image_id", "category_id", "segmentation", "area", "iscrowd"),
}
_DETECTION_KEYS = {
    "bbox": ("image_id", "category_id", "bbox", "score"),
    "segm": ("image_id", "category_id", "segmentation", "score"),
}


def coco_evaluate(
    coco_gt: COCO | dict[str, Any] | str | Path,
    detections: Sequence[dict[str, Any]] | str | Path,
    iou_type: str = "bbox",
    per_class: bool = True,
    verbose: bool = False,
) -> dict[str, Any]:
    """COCO AP / AR with pycocotools' ``COCOeval`` (101-point interpolation, maxDets 1/10/100, COCO area ranges).

    Pitfalls handled: an ``info`` key is added to the ground truth when missing (pycocotools 2.0.9 and 2.0.10 raise
    ``KeyError: 'info'`` in ``loadRes``; a COCO object passed in gets it too), empty detections are evaluated
    without ``loadRes`` (which raises ``IndexError`` on ``[]``), the caller's ground-truth dict and detections are
    copied (``loadRes`` and ``COCOeval`` write ``area``, ``id``, ``iscrowd``, ``ignore`` into them; a COCO object is
    used as is), and for ``"segm"`` a ``bbox`` key is dropped from detections (``loadRes`` would otherwise replace
    the masks by their boxes).

    Args:
        coco_gt: ground truth as a pycocotools ``COCO`` object, a dict in COCO json format, or a json path.
            Annotations need ``area`` and ``iscrowd``.
        detections: list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` (``"segmentation"``
            as RLE instead of ``"bbox"`` for ``iou_type="segm"``), or a path to such a results json.
        iou_type: ``"bbox"`` or ``"segm"``.
        per_class: also return AP@[.5:.95] per category.
        verbose: let pycocotools print its progress and summary table.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}`` as fractions
        (``COCOeval.stats``), where pycocotools' -1 (no ground truth in that area range) becomes ``nan``; with
        ``per_class``, ``"per_class": {category name: AP}``, the mean of ``eval["precision"]`` over IoU thresholds
        and recall points for area "all" and 100 detections, ``nan`` for a category without ground truth. With no
        detection at all, every metric that has ground truth is 0.0.

    Raises:
        ValueError: unknown ``iou_type``, a ground-truth annotation or detection missing a required key, a
            detection whose image or category is not in the ground truth, or a NaN/inf score or box.
    """
    if iou_type not in _GT_KEYS:
        raise ValueError(f"coco_evaluate: iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt = _load_ground_truth(coco_gt, iou_type)
        results = _load_detections(detections, gt, iou_type)
        dt = gt.loadRes(results) if results else _empty_results(gt)
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics: dict[str, Any] = {
        name: math.nan if value == -1 else float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)
    }
    if per_class:
        metrics["per_class"] = _per_class_ap(evaluator, gt)
    return metrics


def _load_ground_truth(coco_gt: COCO | dict[str, Any] | str | Path, iou_type: str) -> COCO:
    """Build a COCO object with an ``info`` key and check the annotation keys pycocotools needs."""
    if isinstance(coco_gt, COCO):
        coco_gt.dataset.setdefault("info", {})
        gt = coco_gt
    else:
        if isinstance(coco_gt, (str, Path)):
            with open(coco_gt) as f:
                coco_gt = json.load(f)
        gt = COCO()
        # COCOeval writes "ignore" (and, for segm, RLE masks) into the annotation dicts: evaluate copies.
        gt.dataset = {
            **coco_gt,
            "info": coco_gt.get("info", {}),
            "annotations": [dict(ann) for ann in coco_gt.get("annotations", [])],
        }
        gt.createIndex()
    for ann in gt.dataset.get("annotations", []):
        missing = [key for key in _GT_KEYS[iou_type] if key not in ann]
        if missing:
            raise ValueError(f"coco_evaluate: ground-truth annotation {ann.get('id')} lacks {missing}")
    return gt


def _load_detections(
    detections: Sequence[dict[str, Any]] | str | Path, gt: COCO, iou_type: str
) -> list[dict[str, Any]]:
    """Read and check detections; return copies that ``loadRes`` may modify."""
    if isinstance(detections, (str, Path)):
        with open(detections) as f:
            detections = json.load(f)
    image_ids, category_ids = set(gt.getImgIds()), set(gt.getCatIds())
    results = []
    for det in detections:
        missing = [key for key in _DETECTION_KEYS[iou_type] if key not in det]
        if missing:
            raise ValueError(f"coco_evaluate: detection {det} lacks {missing}")
        if det["image_id"] not in image_ids:
            raise ValueError(f"coco_evaluate: detection for image_id {det['image_id']}, not in the ground truth")
        if det["category_id"] not in category_ids:
            raise ValueError(
                f"coco_evaluate: detection with category_id {det['category_id']}, not in the ground truth categories"
            )
        _check_finite_detection(det, iou_type)
        result = dict(det)
        if iou_type == "segm":
            result.pop("bbox", None)
        results.append(result)
    return results


def _check_finite_detection(det: dict[str, Any], iou_type: str) -> None:
    """Refuse a NaN/inf score or box: pycocotools gives a NaN box IoU 0 with nothing but counts it in the ranking,
    and an image whose only detection is a NaN box can even score AP 1.0."""
    values = [det["score"]] + (list(det["bbox"]) if iou_type == "bbox" else [])
    if iou_type == "bbox" and len(det["bbox"]) != 4:
        raise ValueError(f"coco_evaluate: detection bbox must be [x, y, w, h], got {det['bbox']}")
    try:
        finite = all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"coco_evaluate: detection with a non-numeric score or box: {det}") from err
    if not finite:
        raise ValueError(f"coco_evaluate: detection with a non-finite score or box (the model diverged?): {det}")


def _empty_results(gt: COCO) -> COCO:
    """A results object with no detection (what ``loadRes([])`` would build if it did not raise)."""
    dt = COCO()
    dt.dataset = {
        "info": {},
        "images": list(gt.dataset["images"]),
        "categories": copy.deepcopy(gt.dataset["categories"]),
        "annotations": [],
    }
    dt.createIndex()
    return dt


def _per_class_ap(evaluator: COCOeval, gt: COCO) -> dict[str, float]:
    """AP@[.5:.95] per category from ``eval["precision"]`` (T x R x K x A x M), as ``summarize`` does overall."""
    params = evaluator.params
    precision = evaluator.eval["precision"][:, :, :, params.areaRngLbl.index("all"), params.maxDets.index(100)]
    per_class = {}
    for k, cat_id in enumerate(params.catIds):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        per_class[gt.cats[cat_id]["name"]] = float(valid.mean()) if valid.size else math.nan
    return per_class


def expected_calibration_error(
    confidences: ArrayLike,
    correct: ArrayLike,
    n_bins: int = 15,
) -> float:
    """Expected calibration error with equal-width bins (Guo et al., ICML 2017, eq. 3).

    Bin m (1-based) is ((m-1)/M, m/M]; ECE = sum_m |acc_m - conf_m| * n_m / N, where acc_m is the fraction of
    correct predictions and conf_m the mean confidence in bin m, n_m its size and N the number of predictions.
    Confidences are compared with the edges m/M in float64, so a confidence exactly on an edge belongs to the lower
    bin; a confidence of exactly 0 is put in the first bin (Guo et al.'s reference ``_ECELoss`` leaves it out of
    every bin while still counting it in N).

    Args:
        confidences: predicted confidences in [0, 1], any shape (flattened).
        correct: whether each prediction is correct (bool or 0/1), same number of entries.
        n_bins: number of bins M (15 in Guo et al.).

    Returns:
        ECE in [0, 1].

    Raises:
        ValueError: empty input, size mismatch, confidences outside [0, 1] or NaN, non-binary ``correct``, or
            ``n_bins`` < 1.
    """
    confidences = to_tensor(confidences, "confidences").reshape(-1).double()
    correct = to_tensor(correct, "correct").to(confidences.device).reshape(-1)
    if confidences.numel() == 0 or confidences.numel() != correct.numel():
        raise ValueError(
            f"expected_calibration_error: need as many confidences ({confidences.numel()}) as "
            f"correctness flags ({correct.numel()}), at least one"
        )
    if n_bins < 1:
        raise ValueError(f"expected_calibration_error: n_bins must be at least 1, got {n_bins}")
    if not ((confidences >= 0) & (confidences <= 1)).all():
        raise ValueError("expected_calibration_error: confidences must lie in [0, 1] (NaN is not allowed)")
    if not ((correct == 0) | (correct == 1)).all():
        raise ValueError("expected_calibration_error: correct must be bool or 0/1")
    edges = torch.arange(n_bins + 1, dtype=torch.float64, device=confidences.device) / n_bins
    bins = (torch.searchsorted(edges, confidences) - 1).clamp_(min=0)
    gaps = torch.zeros(n_bins, dtype=torch.float64, device=confidences.device)
    gaps.index_add_(0, bins, correct.double() - confidences)
    # |acc_m - conf_m| * n_m / N = |sum over bin m of (correct - confidence)| / N
    return float(gaps.abs().sum()) / confidences.numel()
