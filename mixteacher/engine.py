"""What training, evaluation and visualisation share: reading a checkpoint, rebuilding its detectors, COCO evaluation
of the teacher and the student at the test scales, and the metrics/report of a run (README, Quick start).

Imports flow ``config -> data -> model -> mix_teacher -> engine -> train / eval / visualize``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from mixteacher.config import PACKAGE, TrainConfig
from mixteacher.model import MixedScaleFasterRCNN, build_detector
from shared.checkpoint import load_checkpoint
from shared.config import parse_eval_config
from shared.detection import COCO_METRIC_KEYS as COCO_KEYS
from shared.detection import CocoDetection, coco_detections, evaluate_detections
from shared.distributed import DistContext
from shared.training import AmpDtype, autocast

__all__ = [
    "COCO_KEYS",
    "MODEL_KEYS",
    "RESUME_KEYS",
    "add_supervised",
    "comparison_table",
    "config_from_checkpoint",
    "evaluate",
    "evaluate_detector",
    "headline",
    "load_models",
    "read_checkpoint",
    "result_metrics",
]

#: what evaluation and visualisation read from a checkpoint
MODEL_KEYS = ("student", "teacher", "config", "num_classes", "categories", "step")
#: what ``--resume`` reads
RESUME_KEYS = (*MODEL_KEYS, "optimizer", "scheduler", "scaler", "best", "rng")


def read_checkpoint(path: str | Path, required: Sequence[str] = RESUME_KEYS) -> dict[str, Any]:
    """A MixTeacher checkpoint (CPU tensors, safe unpickler), checked before anything else happens.

    Raises:
        shared.checkpoint.CheckpointError: ``not a mixteacher checkpoint: <why>`` for a missing file, a file that is
            not a checkpoint (text, a truncated or foreign pickle), another package's checkpoint or one that lacks
            any of ``required``.
    """
    return load_checkpoint(path, "cpu", package=PACKAGE, required=required)


def config_from_checkpoint(
    state: Mapping[str, Any], argv: Sequence[str] = (), description: str | None = None
) -> TrainConfig:
    """The training config stored in a checkpoint (in today's keys: ``TrainConfig.upgrade_stored``), ``-c`` /
    ``--key value`` overrides in ``argv`` on top."""
    return parse_eval_config(TrainConfig, TrainConfig.upgrade_stored(state["config"]), list(argv), description)


def load_models(state: Mapping[str, Any], cfg: TrainConfig) -> dict[str, MixedScaleFasterRCNN]:
    """The checkpoint's teacher and student (supervised runs: the student only), on the CPU."""
    models = {}
    for name in ("teacher", "student"):
        if name == "teacher" and cfg.method == "supervised":
            continue
        model = build_detector(state["num_classes"], cfg.detector)
        model.load_state_dict(state[name])
        models[name] = model
    return models


@torch.no_grad()
def evaluate_detector(
    model: MixedScaleFasterRCNN,
    loader: DataLoader,
    dataset: CocoDetection,
    ctx: DistContext,
    scale: str = "regular",
    amp: AmpDtype = "off",
) -> dict[str, Any]:
    """COCO bbox metrics (pycocotools via ``shared.detection.evaluate_detections``) of ``model`` at a test scale."""
    was_training = model.training
    model.eval()
    detections: list[dict[str, Any]] = []
    for images, targets in loader:
        with autocast(ctx.device, amp):
            outputs = model.predict([im.to(ctx.device) for im in images], scale)
        detections += coco_detections(outputs, targets, dataset.cat_ids, label_offset=1)
    model.train(was_training)
    return evaluate_detections(detections, dataset.coco, ctx)


def evaluate(
    models: Mapping[str, nn.Module], loader: DataLoader, dataset: CocoDetection, ctx: DistContext, cfg: TrainConfig
) -> dict[str, dict[str, Any]]:
    """``{"teacher_regular": ..., "teacher_mixed": ..., "student_regular": ...}``: every model at every test scale."""
    return {
        f"{name}_{scale}": evaluate_detector(model, loader, dataset, ctx, scale, cfg.amp)
        for name, model in models.items()
        for scale in cfg.test_scales
    }


def headline(results: dict[str, dict[str, Any]], cfg: TrainConfig) -> tuple[str, dict[str, Any]]:
    """The model/scale whose numbers head metrics.json: the teacher at ``report_scale`` (student if supervised)."""
    name = f"{'student' if cfg.method == 'supervised' else 'teacher'}_{cfg.report_scale}"
    if name not in results:  # report_scale is checked against test_scales when the config is read (TrainConfig)
        raise ValueError(f"report_scale {cfg.report_scale!r} was not evaluated (results: {', '.join(results)})")
    return name, results[name]


def result_metrics(results: dict[str, dict[str, Any]], cfg: TrainConfig, **extra: Any) -> dict[str, Any]:
    """metrics.json: the headline's COCO keys, ``headline``, ``extra``, ``last`` and one block per model and scale
    (without per-class APs), then ``per_class_AP`` of the headline."""
    name, main_metrics = headline(results, cfg)
    strip = {k: {n: v for n, v in m.items() if n != "per_class"} for k, m in results.items()}
    return {
        **{k: main_metrics[k] for k in COCO_KEYS},
        "headline": name,
        **extra,
        "last": strip[name],
        **strip,
        "per_class_AP": main_metrics.get("per_class", {}),
    }


def add_supervised(metrics: dict[str, Any], supervised_last: dict[str, Any]) -> None:
    """Put the supervised baseline's numbers (its ``last`` block) next to the teacher's."""
    metrics["supervised"] = supervised_last
    metrics.update({f"supervised_{k}": supervised_last[k] for k in COCO_KEYS})


def comparison_table(metrics: dict[str, Any]) -> str:
    """MixTeacher's teacher next to the supervised-only run of the same length (COCO AP x100)."""
    rows = [("MixTeacher teacher (" + metrics["headline"] + ")", metrics["last"])]
    if "supervised" in metrics:
        rows.append(("supervised only (same iterations)", metrics["supervised"]))
    lines = [f"{'model':<40}" + "".join(f"{k:>7}" for k in ("AP", "AP50", "APs", "APm", "APl"))]
    for name, m in rows:
        lines.append(
            f"{name:<40}"
            + "".join(
                f"{100 * m[k]:7.1f}" if m.get(k) is not None and m[k] == m[k] else f"{'n/a':>7}"
                for k in ("AP", "AP50", "APs", "APm", "APl")
            )
        )
    return "\n".join(lines)
