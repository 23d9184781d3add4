"""SLEEG's evaluation protocol on anomaly-segmentation sets, used by ``train.py`` (at the end of a run and every
``eval_interval`` iterations) and ``eval.py``: pixel-pooled AP, AUROC and FPR95 of max-softmax, energy and SLEEG.

Protocol (released ``OODEvaluation``; README, Fidelity notes): anomaly maps at the original resolution, pixels of all
images pooled, void pixels dropped, anomaly = positive class; AP as sklearn's ``average_precision_score``
(step-wise), AUROC, FPR95 = FPR at the first ROC point with TPR > 0.95 (strict), all x100, computed by
``shared.metrics``. With an output folder it also writes ``curves_<dataset>.png`` and per-image panels
``vis/<dataset>/<name>.png``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from energy_anomaly_seg.config import EvalConfig, SyntheticConfig
from energy_anomaly_seg.data import (
    IGNORE_INDEX,
    AnomalySegmentationDataset,
    parse_dataset_spec,
    synthetic_roots,
)
from energy_anomaly_seg.model import SLEEG
from energy_anomaly_seg.sleeg import SCORE_METHODS, predict_anomaly_maps
from energy_anomaly_seg.visualization import plot_curves, save_anomaly_panel
from shared.logger import RunLogger
from shared.metrics import precision_recall_curve, ranking_metrics, roc_curve

__all__ = [
    "METHOD_NAMES",
    "check_eval_datasets",
    "evaluate_anomaly",
    "evaluate_datasets",
    "format_results",
    "pixel_metrics",
    "resolve_datasets",
]

METHOD_NAMES = {"msp": "max-softmax", "energy": "energy (JEM)", "sleeg": "SLEEG"}


def check_eval_datasets(ecfg: EvalConfig) -> None:
    """Fail early on an ``eval.datasets`` entry with an unknown layout, a missing root or no image/label pairs
    (``train.py`` calls this before training; the error names the path, the layout and the download command)."""
    for spec in ecfg.datasets:
        if spec != "synthetic":
            _, layout, root = parse_dataset_spec(spec)
            AnomalySegmentationDataset(root, layout)  # lists the pairs only; images are read at evaluation


def resolve_datasets(ecfg: EvalConfig, synthetic: SyntheticConfig) -> Iterator[tuple[str, AnomalySegmentationDataset]]:
    for spec in ecfg.datasets:
        if spec == "synthetic":
            root = synthetic_roots(synthetic)["fs_static"]
            yield "synthetic_fs_static", AnomalySegmentationDataset(root, "fs_static")
        else:
            name, layout, root = parse_dataset_spec(spec)
            yield name, AnomalySegmentationDataset(root, layout)


@torch.no_grad()
def evaluate_anomaly(
    model: SLEEG,
    dataset: AnomalySegmentationDataset,
    ecfg: EvalConfig,
    name: str = "dataset",
    out_dir: Path | None = None,
    logger: RunLogger | None = None,
) -> dict[str, float]:
    """AP / AUROC / FPR95 (x100) of every score method on one dataset, pixels pooled over all images."""
    model.eval()
    labels, scores = [], {m: [] for m in SCORE_METHODS}
    iterator = logger.progress(range(len(dataset)), desc=name) if logger else range(len(dataset))
    for i in iterator:
        item = dataset[i]
        maps = predict_anomaly_maps(
            model, item["image"], tuple(ecfg.img_scale), ecfg.scales, ecfg.flip, ecfg.score_formula, ecfg.score_weight
        )
        labels.append(item["label"].flatten())
        for m in SCORE_METHODS:
            scores[m].append(maps[m].flatten().cpu())
        if out_dir is not None and i < ecfg.vis_images:
            save_anomaly_panel(out_dir / "vis" / name / f"{item['name']}.png", item["image"], item["label"], maps)
    label = torch.cat(labels)
    counts = torch.bincount(label.long(), minlength=256)
    if counts[0] == 0 or counts[1] == 0:
        raise ValueError(
            f"{name}: evaluation needs normal (0) and anomaly (1) pixels, found {int(counts[0])} normal "
            f"and {int(counts[1])} anomaly pixels"
        )
    result: dict[str, float] = {
        "pixels": int(counts[0] + counts[1]),
        "anomaly_pixels": int(counts[1]),
        "void_pixels": int(counts[IGNORE_INDEX]),
    }
    curves = {}
    generator = torch.Generator().manual_seed(0)
    valid = (label != IGNORE_INDEX).nonzero()[:, 0]
    subset = valid[torch.randperm(len(valid), generator=generator)[: ecfg.curve_pixels]]
    for m in SCORE_METHODS:
        s = torch.cat(scores[m])
        result.update({f"{m}_{k}": v for k, v in pixel_metrics(s, label).items()})
        if out_dir is not None:
            fpr, tpr, _ = roc_curve(s[subset], label[subset])
            precision, recall, _ = precision_recall_curve(s[subset], label[subset])
            curves[m] = {
                "fpr": _decimate(fpr),
                "tpr": _decimate(tpr),
                "precision": _decimate(precision),
                "recall": _decimate(recall),
                "label": f"{METHOD_NAMES[m]} AP {result[f'{m}_AP']:.1f} FPR95 {result[f'{m}_FPR95']:.1f}",
            }
    if out_dir is not None:
        plot_curves(
            out_dir / f"curves_{name.replace(':', '_')}.png",
            curves,
            f"{name}: {len(dataset)} images, {result['pixels']} pixels (curves from a random subset of {len(subset)})",
        )
    return result


def pixel_metrics(scores: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> dict[str, float]:
    """AP, AUROC and FPR95 (the first ROC point with TPR > 0.95, as the released evaluator) in percent, computed by
    ``shared.metrics.ranking_metrics`` (one sort for the three) over every pixel whose label is not `ignore_index`."""
    values = ranking_metrics(scores, labels, tpr=0.95, strict=True, ignore_index=ignore_index)
    return {
        "AP": 100 * values["average_precision"],
        "AUROC": 100 * values["auroc"],
        "FPR95": 100 * values["fpr_at_tpr"],
    }


def _decimate(x: torch.Tensor | np.ndarray, points: int = 4000) -> np.ndarray:
    x = np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x)
    return x[np.linspace(0, len(x) - 1, min(points, len(x))).astype(np.int64)]


def evaluate_datasets(
    model: SLEEG,
    ecfg: EvalConfig,
    synthetic: SyntheticConfig,
    out_dir: Path | None = None,
    logger: RunLogger | None = None,
) -> dict[str, float]:
    """Evaluate every configured dataset; keys ``<dataset>/<method>_<metric>``, plus unprefixed keys for the first
    dataset (what ``make demo`` reads)."""
    metrics: dict[str, float] = {}
    for index, (name, dataset) in enumerate(resolve_datasets(ecfg, synthetic)):
        result = evaluate_anomaly(model, dataset, ecfg, name, out_dir, logger)
        metrics.update({f"{name}/{k}": v for k, v in result.items()})
        if index == 0:
            metrics.update(result)
            metrics["dataset"] = name
        if logger is not None:
            logger.info(f"{name} ({len(dataset)} images):\n{format_results(result)}")
    return metrics


def format_results(result: dict[str, float]) -> str:
    lines = [f"{'method':<14}{'FPR95 (%)':>10}{'AUROC (%)':>11}{'AP (%)':>9}"]
    for m in SCORE_METHODS:
        lines.append(
            f"{METHOD_NAMES[m]:<14}{result[f'{m}_FPR95']:>10.2f}{result[f'{m}_AUROC']:>11.2f}{result[f'{m}_AP']:>9.2f}"
        )
    return "\n".join(lines)
