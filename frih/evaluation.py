"""The saic-vul iHarmony4 evaluation protocol (README, "Results") and before/after grids.

Per test image, at the evaluation size (256 x 256 resize of composite, real image and soft mask): the prediction is
clamped to [0, 1] and scaled to 0-255 without rounding, then `shared.metrics.harmonization_metrics` gives MSE, fMSE
(soft mask), PSNR with peak max(gt)^2 (primary), PSNR with 255^2, fPSNR and the foreground ratio ((m > 0.5)
fraction), plus the fMSE with a binarised mask. Reported: per subset means, the image-weighted mean over all images
("All"), and the foreground-ratio bins [0, 5 %], (5 %, 15 %], (15 %, 100 %] of `scripts/evaluate_model_fg_ratios.py`.

Rows: "composite" (the composite used as the output: the do-nothing baseline), "stage1" (FRIH's coarse stage-1
output, or the whole network for a stage-1-only model) and "frih" (FRIH's final output).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from frih.inference import Harmonizer
from shared.logger import write_json

__all__ = [
    "FG_BINS",
    "METRICS",
    "evaluate_harmonizer",
    "evaluate_model",
    "flat_metrics",
    "format_table",
    "row_names",
    "save_grid",
    "summarize",
    "write_evaluation",
    "write_per_image",
]

METRICS = ("mse", "fmse", "psnr", "psnr_255", "fpsnr", "fmse_binary")
FG_BINS = (("fg0-5", 0.0, 0.05), ("fg5-15", 0.05, 0.15), ("fg15-100", 0.15, 1.0))


def image_metrics(pred01: torch.Tensor, target01: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image metrics of a batch: images (B, 3, H, W) in [0, 1] (scaled to 0-255 here), mask (B, 1, H, W).

    `shared.metrics.harmonization_metrics` (soft-mask fMSE, the reference) plus "fmse_binary", the fMSE with the
    mask binarised at 0.5 (the variant other codebases use; README, "Fidelity notes").
    """
    from shared.metrics import harmonization_metrics

    pred255, target255 = pred01.float() * 255.0, target01.float() * 255.0
    metrics = harmonization_metrics(pred255, target255, mask.float())
    metrics["fmse_binary"] = harmonization_metrics(pred255, target255, (mask > 0.5).float())["fmse"]
    return metrics


def _bin_of(ratio: float) -> str:
    for name, lo, hi in FG_BINS:
        if (lo == 0.0 and ratio <= hi) or lo < ratio <= hi:
            return name
    raise ValueError(f"foreground ratio {ratio} outside [0, 1]")


@torch.no_grad()
def evaluate_harmonizer(
    harmonizer: Harmonizer, loader: Iterable[dict[str, Any]], stage1_name: str = "stage1", num_grid: int = 8
) -> tuple[list[dict[str, Any]], list[dict[str, np.ndarray]]]:
    """Score every image of `loader` for each row; returns (per-image records, grid samples).

    A record: {"row", "subset", "name", "fg_ratio", "mse", "fmse", "psnr", "psnr_255", "fpsnr"}.
    """
    records: list[dict[str, Any]] = []
    grid: list[dict[str, np.ndarray]] = []
    for batch in loader:
        comp, mask, target = batch["composite"], batch["mask"], batch["target"]
        out = harmonizer.predict(comp, mask)
        comp, mask, target = (t.to(out["images"].device) for t in (comp, mask, target))
        rows = {"composite": comp}
        if "coarse" in out:
            rows[stage1_name] = out["coarse"]
            rows["frih"] = out["images"]
        else:
            rows[stage1_name] = out["images"]
        for row, pred in rows.items():
            metrics = {k: v.detach().float().cpu() for k, v in image_metrics(pred, target, mask).items()}
            for i in range(comp.shape[0]):
                rec = {"row": row, "subset": batch["subset"][i], "name": batch["name"][i]}
                rec.update({k: float(metrics[k][i]) for k in ("fg_ratio", *METRICS)})
                records.append(rec)
        for i in range(comp.shape[0]):
            if len(grid) >= num_grid:
                break
            grid.append(
                {
                    "title": f"{batch['subset'][i]}/{batch['name'][i]}",
                    "mask": mask[i, 0].cpu().numpy(),
                    **{row: pred[i].permute(1, 2, 0).cpu().numpy() for row, pred in rows.items()},
                    "target": target[i].permute(1, 2, 0).cpu().numpy(),
                }
            )
    return records, grid


def row_names(arch: str) -> tuple[str, str]:
    """(stage-1 row, main row) of the result table: ("stage1", "frih") for FRIH, (arch, arch) for iSSAM / iDIH."""
    return ("stage1", "frih") if arch == "frih" else (arch, arch)


def evaluate_model(
    harmonizer: Harmonizer, loader: Iterable[dict[str, Any]], arch: str, num_grid: int = 8
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, np.ndarray]]]:
    """The protocol on `loader` for a network of architecture `arch`: (summary, per-image records, grid samples)."""
    records, grid = evaluate_harmonizer(harmonizer, loader, stage1_name=row_names(arch)[0], num_grid=num_grid)
    return summarize(records), records, grid


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{row: {group: {metric: mean, "count": n}}}; groups: each subset, "All" (image-weighted), the fg-ratio bins."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in dict.fromkeys(r["row"] for r in records):
        recs = [r for r in records if r["row"] == row]
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in recs:
            groups.setdefault(r["subset"], []).append(r)
        groups["All"] = recs
        for name, _, _ in FG_BINS:
            groups[name] = [r for r in recs if _bin_of(r["fg_ratio"]) == name]
        out[row] = {
            g: {"count": len(rs), **{m: (float(np.mean([r[m] for r in rs])) if rs else math.nan) for m in METRICS}}
            for g, rs in groups.items()
        }
    return out


def format_table(summary: dict[str, dict[str, dict[str, float]]], groups: list[str] | None = None) -> str:
    """Markdown table: one line per (row, group) with the image count and every metric."""
    lines = [
        "| output | group | images | MSE | fMSE | PSNR (max gt) | PSNR (255) | fPSNR | fMSE (binary mask) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row, by_group in summary.items():
        for group, vals in by_group.items():
            if groups is not None and group not in groups:
                continue
            if not vals["count"]:
                continue
            lines.append(
                f"| {row} | {group} | {vals['count']} | {vals['mse']:.2f} | {vals['fmse']:.2f} | "
                f"{vals['psnr']:.2f} | {vals['psnr_255']:.2f} | {vals['fpsnr']:.2f} | "
                f"{vals['fmse_binary']:.2f} |"
            )
    return "\n".join(lines)


def flat_metrics(summary: dict[str, dict[str, dict[str, float]]], main_row: str) -> dict[str, Any]:
    """Top-level keys for metrics.json: the main row's "All" metrics unprefixed, every row's "All" as <row>_<metric>,
    and the full nested summary under "summary"."""
    flat: dict[str, Any] = {m: summary[main_row]["All"][m] for m in METRICS}
    for row, by_group in summary.items():
        flat.update({f"{row}_{m}": by_group["All"][m] for m in METRICS})
    flat["num_images"] = summary[main_row]["All"]["count"]
    flat["summary"] = summary
    return flat


def write_per_image(records: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["row", "subset", "name", "fg_ratio", *METRICS])
        writer.writeheader()
        writer.writerows(records)
    return path


def save_grid(samples: list[dict[str, np.ndarray]], path: str | Path, tile: int = 128) -> Path | None:
    """Before/after PNG grid: one line per sample, columns composite | mask | stage 1 | FRIH | target."""
    if not samples:
        return None
    columns = [c for c in ("composite", "mask", "stage1", "issam", "idih", "frih", "target") if c in samples[0]]
    header = 16
    canvas = Image.new("RGB", (tile * len(columns), header + tile * len(samples)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, col in enumerate(columns):
        draw.text((j * tile + 4, 2), col, fill=(0, 0, 0))
    for i, sample in enumerate(samples):
        for j, col in enumerate(columns):
            arr = sample[col]
            arr = np.repeat(arr[..., None], 3, axis=-1) if arr.ndim == 2 else arr
            im = Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8)).resize((tile, tile))
            canvas.paste(im, (j * tile, header + i * tile))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def write_evaluation(
    out_dir: Path,
    summary: dict[str, Any],
    records: list[dict[str, Any]],
    grid: list[dict[str, np.ndarray]],
    main_row: str,
    extra: dict[str, Any],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """metrics.json, per_image.csv, results.md and before_after.png into `out_dir`; logs the table. Returns the
    metrics (:func:`flat_metrics` plus `extra`)."""
    metrics = {**flat_metrics(summary, main_row), **extra}
    write_json(metrics, out_dir / "metrics.json")
    write_per_image(records, out_dir / "per_image.csv")
    save_grid(grid, out_dir / "before_after.png")
    table = format_table(summary)
    log("\n" + table)
    (out_dir / "results.md").write_text(table + "\n")
    return metrics
