"""Evaluate a Calibrated Teacher checkpoint: COCO AP of the student and the teacher on val2017 with full annotations,
and the ECE of the teacher's scores before/after the checkpoint's calibrator (+ reliability.png).

    python -m calibrated_teacher.eval --checkpoint runs/calibrated_teacher/default/<time>/last.pt
    python -m calibrated_teacher.eval --checkpoint last.pt --data.root data/coco --output_dir eval_out

The configuration is the one stored in the checkpoint, then ``-c`` / ``--key value`` overrides. Only the val split
is read (``data.val_images`` and ``data.val_annotations`` under ``data.root``; no train images or jsons), and the
checkpoint's category ids must be the val json's. Prints the summary and writes ``metrics.json`` and
``reliability_eval.png`` to ``<checkpoint folder>/eval/`` (or ``--output_dir``), so the training run's own
``metrics.json`` is never replaced.
"""

from __future__ import annotations

from typing import Any

import torch

from calibrated_teacher.config import PACKAGE, TrainConfig
from calibrated_teacher.data import build_val_set, val_loader
from calibrated_teacher.engine import (
    CHECKPOINT_KEYS,
    calibration_quality,
    evaluate,
    reliability_diagram,
    val_predictions,
)
from calibrated_teacher.model import build_detector, label_offset
from calibrated_teacher.teacher_student import CalibratedTeacher
from shared.detection import check_checkpoint_categories, coco_summary
from shared.distributed import DistContext
from shared.entrypoints import Evaluation, checkpoint_parser, run_distributed
from shared.logger import write_json

__all__ = ["main", "parse_args"]


parse_args = checkpoint_parser(
    TrainConfig,
    __doc__,
    PACKAGE,
    required=CHECKPOINT_KEYS,
    checkpoint_help="last.pt / best.pt of a calibrated_teacher run",
)


def main(ev: Evaluation) -> dict[str, Any]:
    """Evaluate; returns and writes the metrics (``<output_dir>/metrics.json`` and ``reliability_eval.png``)."""
    return run_distributed(ev.config, lambda ctx: _evaluate(ev, ctx))


def _evaluate(ev: Evaluation, ctx: DistContext) -> dict[str, Any]:
    path, cfg, state = ev.checkpoint, ev.config, ev.state
    val_set = build_val_set(cfg.data, label_offset(cfg.detector), ctx.is_main)  # no train split needed
    check_checkpoint_categories(state, path, val_set)  # the same ids, so the same labels as in training
    if state["num_classes"] != val_set.num_classes:
        raise ValueError(f"{path} has {state['num_classes']} classes, the val set {val_set.num_classes}")
    method = CalibratedTeacher(build_detector(state["num_classes"], cfg.detector), cfg.teacher, cfg.method)
    method.student.load_state_dict(state["student"])
    method.teacher.load_state_dict(state["teacher"])
    method.calibrator.load_state_dict(state["method_state"]["calibrator"])
    method.to(ctx.device)
    loader = val_loader(val_set, cfg.data, ctx)
    offset = label_offset(cfg.detector)
    metrics: dict[str, Any] = {"checkpoint": str(path), "step": state["step"]}
    for name in ("student", "teacher"):
        result = evaluate(getattr(method, name), loader, val_set, ctx, offset)
        metrics[name] = {k: result[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
        print(f"{name} COCO bbox (x100): {coco_summary(result)}")
    quality = calibration_quality(
        val_predictions(method.teacher, loader, ctx),
        method.calibrator,
        cfg.teacher.ori_thr,
        cfg.teacher.calib_tp_iou,
    )
    metrics["calibration"] = {k: v for k, v in quality.items() if not isinstance(v, torch.Tensor)}
    metrics.update(  # flat headline keys (make demo's table reads top-level keys)
        student_AP=metrics["student"]["AP"],
        teacher_AP=metrics["teacher"]["AP"],
        ece_raw=quality["ece_raw"],
        ece_calibrated=quality["ece_calibrated"],
    )
    print(
        f"teacher ECE (20 bins, correct = same class and IoU > {cfg.teacher.calib_tp_iou}): raw "
        f"{quality['ece_raw']:.4f} -> calibrated {quality['ece_calibrated']:.4f} ({quality['num']} detections)"
    )
    if ctx.is_main:
        ev.output_dir.mkdir(parents=True, exist_ok=True)
        reliability_diagram(quality, ev.output_dir / "reliability_eval.png")
        write_json(metrics, ev.output_dir / "metrics.json")
    return metrics


if __name__ == "__main__":
    main(parse_args())
