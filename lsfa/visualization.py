"""Plots of the scoring stage: anomaly-map overlays with the ground-truth contour, and per-class ROC curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from lsfa.data import denormalize
from shared.metrics import roc_curve

__all__ = ["plot_roc", "save_overlays"]


def save_overlays(dataset, maps: torch.Tensor, masks: torch.Tensor, path: Path, count: int = 4) -> Path:
    """Image | heat map over the image with the ground-truth contour, for the ``count`` highest-scoring defects."""
    defect_ids = [i for i in range(len(dataset)) if bool(masks[i].any())]
    chosen = sorted(defect_ids, key=lambda i: -float(maps[i].max()))[:count] or list(range(min(count, len(dataset))))
    lo, hi = float(maps.min()), float(maps.max())
    fig, axes = plt.subplots(2, len(chosen), figsize=(2.6 * len(chosen), 5.2), squeeze=False)
    for col, i in enumerate(chosen):
        item = dataset[i]
        image = denormalize(item["rgb"][None])[0].permute(1, 2, 0).numpy()
        axes[0, col].imshow(image)
        axes[0, col].set_title(item["defect"], fontsize=8)
        axes[1, col].imshow(image)
        axes[1, col].imshow(maps[i].numpy(), cmap="jet", alpha=0.5, vmin=lo, vmax=hi)
        if bool(masks[i].any()):
            axes[1, col].contour(masks[i].numpy(), levels=[0.5], colors="white", linewidths=0.8)
        for ax in axes[:, col]:
            ax.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_roc(curves: list[tuple[str, torch.Tensor, torch.Tensor]], path: Path, title: str) -> Path:
    """Image-level ROC curve of every class (class name, scores, labels)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, scores, labels in curves:
        if bool((labels == 1).any() and (labels == 0).any()):
            fpr, tpr, _ = roc_curve(scores, labels)
            ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set_xlabel("FPR")
    ax.set_ylabel("TPR")
    ax.set_title(f"{title}: image-level ROC")
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
