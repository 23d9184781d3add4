"""PNG outputs of the evaluation: anomaly heat maps, overlays, segmentation colours, ROC / PR curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from energy_anomaly_seg.data import CITYSCAPES_PALETTE, IGNORE_INDEX

__all__ = ["colorize_score", "colorize_segmentation", "plot_curves", "save_anomaly_panel"]


def colorize_score(score: torch.Tensor | np.ndarray) -> np.ndarray:
    """Score (H, W) -> uint8 RGB heat map (jet) of each pixel's rank within the map (histogram-equalised), which is
    what AP / AUROC / FPR95 see; the released ``vis_anomaly`` normalises by min and max instead, which a few extreme
    pixels can flatten into one colour."""
    s = np.asarray(score, dtype=np.float32)
    ranks = np.empty(s.size, np.float64)
    ranks[np.argsort(s, axis=None, kind="stable")] = np.arange(s.size) / max(s.size - 1, 1)
    return (colormaps["jet"](ranks.reshape(s.shape))[..., :3] * 255).astype(np.uint8)


def colorize_segmentation(pred: torch.Tensor | np.ndarray) -> np.ndarray:
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(CITYSCAPES_PALETTE)] = CITYSCAPES_PALETTE
    return palette[np.asarray(pred, dtype=np.int64).clip(0, 255)]


def _ground_truth(label: np.ndarray) -> np.ndarray:
    out = np.zeros((*label.shape, 3), np.uint8)
    out[label == 1] = 255
    out[label == IGNORE_INDEX] = 96
    return out


def save_anomaly_panel(
    path: str | Path, image: torch.Tensor, label: torch.Tensor, maps: dict[str, torch.Tensor]
) -> Path:
    """One PNG: image | ground truth (white anomaly, grey void) | segmentation | per-method heat-map overlays
    (0.5 image + 0.5 heat map), with a second row holding the raw heat maps."""
    img = image.permute(1, 2, 0).cpu().numpy().astype(np.uint8)
    methods = [m for m in ("msp", "energy", "sleeg") if m in maps]
    heats = [colorize_score(maps[m].cpu()) for m in methods]
    top = [img, _ground_truth(label.cpu().numpy()), colorize_segmentation(maps["pred"].cpu())]
    top += [(0.5 * img + 0.5 * h).astype(np.uint8) for h in heats]
    bottom = [np.zeros_like(img)] * 3 + heats
    panel = np.concatenate([np.concatenate(top, axis=1), np.concatenate(bottom, axis=1)], axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(panel).save(path)
    return path


def plot_curves(path: str | Path, curves: dict[str, dict[str, np.ndarray]], title: str) -> Path:
    """ROC and precision-recall curves of each method (dict method -> {fpr, tpr, precision, recall, label})."""
    fig = Figure(figsize=(10, 4.2))  # no pyplot: no global state, no GUI backend
    ax_roc, ax_pr = fig.subplots(1, 2)
    for method, c in curves.items():
        ax_roc.plot(c["fpr"], c["tpr"], label=c.get("label", method))
        ax_pr.plot(c["recall"], c["precision"], label=c.get("label", method))
    ax_roc.axhline(0.95, color="grey", lw=0.6, ls="--")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax_pr.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    for ax in (ax_roc, ax_pr):
        ax.legend(loc="lower right" if ax is ax_roc else "upper right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
