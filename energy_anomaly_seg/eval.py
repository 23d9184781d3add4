"""Evaluate SLEEG on anomaly-segmentation sets: pixel-pooled AP, AUROC and FPR95 of max-softmax, energy and SLEEG.

    python eval.py --checkpoint runs/.../last.pt [--output_dir DIR] [-c configs/NAME.yaml] [--key value ...]

The evaluation settings (datasets, test scales, score formula) come from the checkpoint's config, then the YAML file
given with ``-c``, then the command line. ``--checkpoint`` also accepts the authors' trained SLEEG file (mmseg
layout with ``patch_head.*``); its settings then come from ``-c`` (default ``configs/cityscapes_r101.yaml``).

Protocol (released ``OODEvaluation``): anomaly maps at the original resolution, pixels of all images pooled,
void pixels dropped, anomaly = positive class; AP as sklearn's ``average_precision_score`` (step-wise), AUROC,
FPR95 = FPR at the first ROC point with TPR > 0.95 (strict), all x100 — computed by ``shared.metrics``.
Writes ``metrics.json``, ``curves_<dataset>.png`` and per-image panels ``vis/<dataset>/<name>.png``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import yaml

from energy_anomaly_seg.data import (
    IGNORE_INDEX,
    AnomalySegmentationDataset,
    ensure_synthetic_data,
    parse_dataset_spec,
)
from energy_anomaly_seg.mmseg_checkpoint import load_mmseg_checkpoint, read_checkpoint
from energy_anomaly_seg.model import SLEEG, create_sleeg
from energy_anomaly_seg.sleeg import SCORE_METHODS, predict_anomaly_maps
from energy_anomaly_seg.train_segmentor import SyntheticConfig
from energy_anomaly_seg.visualization import plot_curves, save_anomaly_panel
from shared.config import parse_config
from shared.distributed import init_distributed
from shared.logger import RunLogger
from shared.metrics import precision_recall_curve, ranking_metrics, roc_curve

__all__ = ["EvalConfig", "check_eval_datasets", "evaluate_anomaly", "evaluate_datasets", "format_results", "main",
           "pixel_metrics", "resolve_datasets"]

METHOD_NAMES = {"msp": "max-softmax", "energy": "energy (JEM)", "sleeg": "SLEEG"}


@dataclass
class EvalConfig:
    datasets: list[str] = field(default_factory=lambda: ["synthetic"], metadata={
        "help": "'layout:path' or 'name=layout:path' per set (layouts: fs_static, fs_laf, fs_laf_official, "
                "road_anomaly, smiyc, synboost), or 'synthetic' for the embedded anomaly set"})
    img_scale: tuple[int, int] = field(default=(2048, 1024), metadata={"help": "(W, H) test scale, keep ratio"})
    scales: list[float] = field(default_factory=lambda: [0.75, 1.0, 1.25, 1.5])
    flip: bool = True
    score_formula: str = field(default="paper", metadata={"help": "'paper' (eq. 9) or 'code' (released)"})
    score_weight: float = field(default=0.5, metadata={"help": "lambda (paper 0.5; code 0.3 static / 0.0 LAF)"})
    vis_images: int = field(default=8, metadata={"help": "per-image PNG panels written per dataset"})
    curve_pixels: int = field(default=2_000_000, metadata={"help": "random valid pixels drawn for the curve plots"})


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
            root = ensure_synthetic_data(synthetic.root, synthetic.height, synthetic.width, synthetic.n_train,
                                         synthetic.n_val, synthetic.n_anomaly, synthetic.seed)["fs_static"]
            yield "synthetic_fs_static", AnomalySegmentationDataset(root, "fs_static")
        else:
            name, layout, root = parse_dataset_spec(spec)
            yield name, AnomalySegmentationDataset(root, layout)


@torch.no_grad()
def evaluate_anomaly(model: SLEEG, dataset: AnomalySegmentationDataset, ecfg: EvalConfig, name: str = "dataset",
                     out_dir: Path | None = None, logger: RunLogger | None = None) -> dict[str, float]:
    """AP / AUROC / FPR95 (x100) of every score method on one dataset, pixels pooled over all images."""
    model.eval()
    labels, scores = [], {m: [] for m in SCORE_METHODS}
    iterator = logger.progress(range(len(dataset)), desc=name) if logger else range(len(dataset))
    for i in iterator:
        item = dataset[i]
        maps = predict_anomaly_maps(model, item["image"], tuple(ecfg.img_scale), ecfg.scales, ecfg.flip,
                                    ecfg.score_formula, ecfg.score_weight)
        labels.append(item["label"].flatten())
        for m in SCORE_METHODS:
            scores[m].append(maps[m].flatten().cpu())
        if out_dir is not None and i < ecfg.vis_images:
            save_anomaly_panel(out_dir / "vis" / name / f"{item['name']}.png", item["image"], item["label"], maps)
    label = torch.cat(labels)
    counts = torch.bincount(label.long(), minlength=256)
    if counts[0] == 0 or counts[1] == 0:
        raise ValueError(f"{name}: evaluation needs normal (0) and anomaly (1) pixels, found {int(counts[0])} normal "
                         f"and {int(counts[1])} anomaly pixels")
    result: dict[str, float] = {"pixels": int(counts[0] + counts[1]), "anomaly_pixels": int(counts[1]),
                                "void_pixels": int(counts[IGNORE_INDEX])}
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
            curves[m] = {"fpr": _decimate(fpr), "tpr": _decimate(tpr), "precision": _decimate(precision),
                         "recall": _decimate(recall),
                         "label": f"{METHOD_NAMES[m]} AP {result[f'{m}_AP']:.1f} FPR95 {result[f'{m}_FPR95']:.1f}"}
    if out_dir is not None:
        plot_curves(out_dir / f"curves_{name.replace(':', '_')}.png", curves,
                    f"{name}: {len(dataset)} images, {result['pixels']} pixels (curves from a random subset of "
                    f"{len(subset)})")
    return result


def pixel_metrics(scores: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> dict[str, float]:
    """AP, AUROC and FPR95 (the first ROC point with TPR > 0.95, as the released evaluator) in percent, computed by
    ``shared.metrics.ranking_metrics`` (one sort for the three) over every pixel whose label is not `ignore_index`."""
    values = ranking_metrics(scores, labels, tpr=0.95, strict=True, ignore_index=ignore_index)
    return {"AP": 100 * values["average_precision"], "AUROC": 100 * values["auroc"],
            "FPR95": 100 * values["fpr_at_tpr"]}


def _decimate(x: torch.Tensor | np.ndarray, points: int = 4000) -> np.ndarray:
    x = np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x)
    return x[np.linspace(0, len(x) - 1, min(points, len(x))).astype(np.int64)]


def evaluate_datasets(model: SLEEG, ecfg: EvalConfig, synthetic: SyntheticConfig, out_dir: Path | None = None,
                      logger: RunLogger | None = None) -> dict[str, float]:
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
        lines.append(f"{METHOD_NAMES[m]:<14}{result[f'{m}_FPR95']:>10.2f}{result[f'{m}_AUROC']:>11.2f}"
                     f"{result[f'{m}_AP']:>9.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, float]:
    from energy_anomaly_seg.train import DEFAULT_CONFIG, TrainConfig  # train.py imports this module

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--checkpoint", help="train.py checkpoint or the authors' SLEEG mmseg file")
    pre.add_argument("--output_dir", default=None, help="default: <checkpoint folder>/eval")
    known, rest = pre.parse_known_args(argv)
    if known.checkpoint is None:
        if {"-h", "--help"} & set(rest):  # the config keys' help (exits)
            parse_config(TrainConfig, rest, description=f"{__doc__.splitlines()[0]} (--checkpoint PATH required)")
        pre.error("the following argument is required: --checkpoint PATH")
    raw = read_checkpoint(known.checkpoint)
    ours = isinstance(raw, dict) and "config" in raw and "model" in raw
    if ours and raw.get("phase") != "ood_head":
        raise ValueError(f"{known.checkpoint} is a '{raw.get('phase')}'-phase checkpoint: its OoD head is not trained "
                         "yet; resume train.py with --resume to finish the run")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "checkpoint_config.yaml"
        if ours:
            base.write_text(yaml.safe_dump(raw["config"]))
        cfg = parse_config(TrainConfig, rest, description="evaluate a SLEEG checkpoint",
                           default_config=base if ours else Path(DEFAULT_CONFIG).parent / "cityscapes_r101.yaml")
    ctx = init_distributed(None if cfg.device == "auto" else cfg.device)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    out = Path(known.output_dir) if known.output_dir else Path(known.checkpoint).resolve().parent / "eval"
    logger = RunLogger(out, tensorboard=False, name="eval")
    model = create_sleeg(cfg.model.variant, cfg.model.num_classes)
    if ours:
        model.load_state_dict(raw["model"], strict=True)
    else:
        load_mmseg_checkpoint(model, raw, allow_missing_ood_head=False)
    model.to(ctx.device)
    logger.info(f"checkpoint {known.checkpoint}: sleeg_{cfg.model.variant}, score '{cfg.eval.score_formula}' "
                f"(weight {cfg.eval.score_weight}), scales {cfg.eval.scales}, flip {cfg.eval.flip}")
    metrics = evaluate_datasets(model, cfg.eval, cfg.synthetic, out, logger)
    metrics["checkpoint"] = str(known.checkpoint)
    logger.write_metrics(metrics)
    logger.close()
    return metrics


if __name__ == "__main__":
    main()
