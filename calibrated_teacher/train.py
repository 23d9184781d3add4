"""Train Calibrated Teacher (or the supervised-on-sparse baseline) on sparse COCO / the embedded synthetic set.

    cd calibrated_teacher && python train.py                     # embedded default: synthetic COCO, 50 % dropped
    python -m calibrated_teacher.train -c calibrated_teacher/configs/miss50p.yaml --data.root data/coco \\
        --pretrained_backbone resnet101_caffe.pth
    torchrun --nproc_per_node=8 -m calibrated_teacher.train -c calibrated_teacher/configs/miss50p.yaml ...

From Python: ``main(parse_args(["-c", "calibrated_teacher/configs/miss50p.yaml", "--max_iters", "10"]))``.

Iteration-based, like the released mmdetection configs: SGD (bias lr x2, no bias decay) with linear warm-up and
step decay, the EMA teacher updated every iteration, the calibrator refitted every ``refit_interval`` iterations.
The run folder gets ``config.yaml``, ``train.log``, ``log.csv`` (one row per ``checkpoint_interval``
iterations), TensorBoard scalars, ``last.pt`` / ``best.pt``, ``metrics.json`` (student and teacher COCO AP with full
annotations, ECE before/after calibration, precision of kept pseudo boxes) and ``reliability.png``. ``--resume
last.pt`` continues exactly (calibrator, calibration buffer and pseudo-box log of every rank included). A ``--resume``
file is read and checked (another detector, method or split is refused: ``TrainConfig.RESUME_SECTIONS``) and the run
folder claimed before anything is written; a non-finite loss, gradient or parameter stops the run naming the step
(README, Quick start).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from calibrated_teacher.config import DEFAULT_CONFIG, PACKAGE, TrainConfig
from calibrated_teacher.data import IterationSampler, SparseTrainSet, build_datasets, sparse_collate, val_loader
from calibrated_teacher.engine import (
    CHECKPOINT_KEYS,
    calibration_quality,
    evaluate,
    pseudo_box_precision,
    reliability_diagram,
    val_predictions,
)
from calibrated_teacher.model import build_detector, label_offset
from calibrated_teacher.teacher_student import CalibratedTeacher
from shared import teacher_student as ts
from shared.checkpoint import load_resume_state, restore_training_state, save_last_and_best, training_state
from shared.config import script_parser
from shared.detection import CocoDetection, coco_summary
from shared.distributed import DistContext, all_gather_objects, all_reduce_mean
from shared.entrypoints import finish_run, run_distributed, wrap_ddp
from shared.logger import RunLogger
from shared.teacher_student import step_schedule
from shared.training import make_grad_scaler

__all__ = [
    "Run",
    "TrainConfig",
    "build_optimizer",
    "build_run",
    "checkpoint_state",
    "final_metrics",
    "main",
    "parse_args",
    "step_schedule",
    "train_steps",
]


# step_schedule (mmcv's step decay with linear warm-up) is shared.teacher_student's, re-exported here


def build_optimizer(cfg: TrainConfig, student: nn.Module, world_size: int) -> torch.optim.SGD:
    """SGD on the trainable parameters, lr scaled linearly from ``lr_base_batch``; biases get ``bias_lr_mult`` x lr
    and ``bias_decay_mult`` x weight decay (mmcv paramwise_cfg)."""
    lr = cfg.lr * cfg.data.batch_size * world_size / cfg.lr_base_batch
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    weights = [p for n, p in named if not n.endswith(".bias")]
    biases = [p for n, p in named if n.endswith(".bias")]
    return torch.optim.SGD(
        [
            {"params": weights},
            {"params": biases, "lr": lr * cfg.bias_lr_mult, "weight_decay": cfg.weight_decay * cfg.bias_decay_mult},
        ],
        lr=lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )


@dataclass
class Run:
    """Everything a training run holds."""

    cfg: TrainConfig
    ctx: DistContext
    method: CalibratedTeacher
    optimizer: torch.optim.SGD
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    train_set: SparseTrainSet
    val_set: CocoDetection
    kept_ratio: float
    step: int = 0
    best: dict[str, Any] | None = None


def _check_backbone(cfg: TrainConfig) -> None:
    if not cfg.resume and cfg.pretrained_backbone is None and not cfg.allow_random_backbone:
        raise ValueError(
            "the recipes fine-tune an ImageNet-pretrained backbone: pass --pretrained_backbone PATH (ResNet-101/50 "
            "caffe, e.g. mmdet's resnet101_caffe; 'imagenet' for the offline MobileNetV2), or set "
            "allow_random_backbone: true to train from random initialisation"
        )


def build_run(cfg: TrainConfig, ctx: DistContext, logger: RunLogger, resume: dict[str, Any] | None = None) -> Run:
    """Data, student + EMA teacher, optimizer and schedule; restored from ``resume`` when given."""
    train_set, val_set, ratio = build_datasets(cfg.data, label_offset(cfg.detector), ctx.is_main)
    pretrained = cfg.pretrained_backbone if resume is None else None
    student = build_detector(train_set.sparse.num_classes, cfg.detector, pretrained)
    if resume is None:
        logger.info("backbone: " + (f"loaded {pretrained}" if pretrained else "random initialisation"))
    method = CalibratedTeacher(student, cfg.teacher, cfg.method).to(ctx.device)
    optimizer = build_optimizer(cfg, method.student, ctx.world_size)
    scheduler = step_schedule(optimizer, cfg.lr_steps, cfg.lr_gamma, cfg.warmup_iters, cfg.warmup_ratio)
    run = Run(cfg, ctx, method, optimizer, scheduler, make_grad_scaler(ctx.device, cfg.amp), train_set, val_set, ratio)
    run.best = {"AP": -math.inf, "step": -1}
    if resume is not None:
        restore_training_state(resume, **ts.loop_components(method, optimizer, scheduler, run.scaler))
        state = resume["method_state"]
        if len(state["buffers"]) != ctx.world_size:
            raise ValueError(f"{cfg.resume} was written by {len(state['buffers'])} process(es), not {ctx.world_size}")
        logs = state.get("pseudo_logs")
        if logs is None:  # a checkpoint written before the pseudo-box log was saved
            logger.info(f"{cfg.resume} holds no pseudo-box log: metrics.json's pseudo_boxes cover this part only")
        method.load_method_state(
            {
                "calibrator": state["calibrator"],
                "buffer": state["buffers"][ctx.rank],
                "pseudo_log": None if logs is None else logs[ctx.rank],
            }
        )
        run.step, run.best = resume["step"], resume["best"]
    return run


def checkpoint_state(run: Run) -> dict[str, Any]:
    """The full training state (every rank's calibration buffer and pseudo-box log gathered: call on every rank)."""
    state = run.method.method_state()
    per_rank = all_gather_objects((state["buffer"], state["pseudo_log"]))
    return training_state(
        PACKAGE,
        run.cfg,
        **ts.loop_components(run.method, run.optimizer, run.scheduler, run.scaler),
        step=run.step,
        best=run.best,
        method_state={
            "calibrator": state["calibrator"],
            "buffers": [buffer for buffer, _ in per_rank],
            "pseudo_logs": [log for _, log in per_rank],
        },
        **ts.category_record(run.train_set.sparse),
    )


def _loader(run: Run) -> DataLoader:
    cfg, ctx = run.cfg, run.ctx
    sampler = IterationSampler(
        len(run.train_set), cfg.data.batch_size, cfg.max_iters, ctx.world_size, ctx.rank, cfg.seed, run.step
    )
    return ts.iteration_loader(run.train_set, sampler, sparse_collate, cfg.data.workers, ctx, cfg.seed)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = dict(batch)
    out["weak"] = [im.to(device) for im in batch["weak"]]
    out["strong"] = [im.to(device) for im in batch["strong"]]
    for key in ("weak_target", "strong_target"):
        out[key] = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in batch[key]]
    return out


def train_steps(run: Run, model: nn.Module, batches, num_steps: int, logger: RunLogger) -> dict[str, float]:
    """``num_steps`` iterations; returns the period's mean logged values, plus ``calib_a`` / ``calib_b`` of the
    period's last successful refit (when one happened; every rank fits the same calibrator)."""
    method, cfg, ctx = run.method, run.cfg, run.ctx
    model.train()
    sums: dict[str, float] = {}
    fitted: dict[str, float] = {}
    t0 = time.perf_counter()
    for _ in logger.progress(range(num_steps), desc=f"iter {run.step}", total=num_steps):
        batch = _to_device(next(batches), ctx.device)
        loss, logs = ts.teacher_student_step(
            model, method, batch, run.step, run.optimizer, run.scheduler, run.scaler, ctx.device, cfg
        )
        refit = method.maybe_refit(run.step)
        if refit:
            fitted = {"calib_a": method.calibrator.a, "calib_b": method.calibrator.b}
            logger.info(
                f"iter {run.step + 1}: calibrator refitted, a={method.calibrator.a:.3f} b={method.calibrator.b:.3f}"
            )
        run.step += 1
        logs["loss"] = float(loss.detach())
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v
        if cfg.log_interval and run.step % cfg.log_interval == 0:
            scalars = {**logs, **(fitted if refit else {}), "lr": run.optimizer.param_groups[0]["lr"]}
            logger.scalars(scalars, run.step, prefix="train/")
    elapsed = time.perf_counter() - t0
    row = {k: all_reduce_mean(v / num_steps) for k, v in sorted(sums.items())}
    row.update(fitted)  # the last fit of the period, not a mean over its iterations
    row.update({"lr": run.optimizer.param_groups[0]["lr"], "s_per_iter": elapsed / num_steps})
    return row


def run_until(run: Run, until: int, logger: RunLogger, out_dir: Path | None = None) -> dict[str, Any]:
    """Train to iteration ``until`` with periodic evaluation and checkpoints (when ``out_dir`` is given); returns
    the last evaluation (empty if none happened)."""
    cfg, ctx = run.cfg, run.ctx
    model = wrap_ddp(run.method, ctx, cfg.find_unused_parameters)
    batches = iter(_loader(run))
    offset = label_offset(cfg.detector)
    loader = val_loader(run.val_set, cfg.data, ctx)
    result: dict[str, Any] = {}
    for period in ts.checkpoint_periods(run.step, until, cfg.checkpoint_interval, cfg.eval_interval):
        row = train_steps(run, model, batches, period, logger)
        is_best = False
        if ts.evaluation_due(run.step, cfg.max_iters, cfg.eval_interval):
            result = evaluate(run.method.student, loader, run.val_set, ctx, offset)
            row["student_AP"] = result["AP"]
            logger.info(f"iter {run.step} student COCO bbox (x100): {coco_summary(result)}")
            is_best = result["AP"] > run.best["AP"]
            if is_best:
                run.best = {"AP": result["AP"], "step": run.step}
        if out_dir is not None:
            state = checkpoint_state(run)
            if ctx.is_main:
                save_last_and_best(state, out_dir, is_best)
        logger.log_epoch(run.step, row)
    return result


def final_metrics(run: Run, out_dir: Path | None, student_result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Student and teacher COCO AP (full annotations), ECE before/after calibration of the teacher's val detections
    (+ reliability.png), precision of kept pseudo boxes (every rank's, over the whole run: the log is checkpointed
    and restored by ``--resume``). Call on every rank."""
    cfg, ctx = run.cfg, run.ctx
    offset = label_offset(cfg.detector)
    loader = val_loader(run.val_set, cfg.data, ctx)
    student = student_result or evaluate(run.method.student, loader, run.val_set, ctx, offset)
    teacher = evaluate(run.method.teacher, loader, run.val_set, ctx, offset)
    quality = calibration_quality(
        val_predictions(run.method.teacher, loader, ctx),
        run.method.calibrator,
        cfg.teacher.ori_thr,
        cfg.teacher.calib_tp_iou,
    )
    if out_dir is not None and ctx.is_main:
        reliability_diagram(quality, out_dir / "reliability.png")
    pseudo = pseudo_box_precision(run.method.pseudo_log.gathered_table())  # every rank's candidates
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    return {
        "method": cfg.method,
        "iterations": run.step,
        "kept_ratio": run.kept_ratio,
        "student": {k: student[k] for k in keys},
        "teacher": {k: teacher[k] for k in keys},
        "AP": student["AP"],
        "calibration": {k: v for k, v in quality.items() if not isinstance(v, torch.Tensor)},
        "pseudo_boxes": pseudo,
        "best_AP": run.best["AP"],
        "best_step": run.best["step"],
    }


parse_args = script_parser(
    TrainConfig, "Train Calibrated Teacher (AAAI 2023) on sparse COCO / the synthetic sparse COCO set.", DEFAULT_CONFIG
)


def _run(cfg: TrainConfig, ctx: DistContext, resume: dict[str, Any] | None) -> dict[str, Any]:
    """The run inside the process group: run folder, training, final metrics."""
    out_dir = ts.claim_training_dir(PACKAGE, cfg, ctx, resumed=resume is not None)
    logger = ts.open_training_logger(cfg, ctx, out_dir)
    run = build_run(cfg, ctx, logger, resume)
    logger.info(
        f"{cfg.method} | {ctx.world_size} process(es) on {ctx.device} | {len(run.train_set)} sparse train images "
        f"(kept ratio {run.kept_ratio:.3f}), {len(run.val_set)} val images | {cfg.max_iters} iterations"
    )
    result = run_until(run, cfg.max_iters, logger, out_dir)
    metrics = final_metrics(run, out_dir, result or None)
    metrics["run_dir"] = str(out_dir)
    cal = metrics["calibration"]
    return finish_run(
        logger,
        metrics,
        f"done: student AP {100 * metrics['AP']:.1f}, teacher AP {100 * metrics['teacher']['AP']:.1f}, "
        f"ECE raw {cal['ece_raw']:.3f} -> calibrated {cal['ece_calibrated']:.3f}, "
        f"pseudo boxes kept {metrics['pseudo_boxes']['kept']:.0f}",
    )


def main(cfg: TrainConfig) -> dict[str, Any]:
    """Train and evaluate; returns the metrics written to ``metrics.json``. Nothing is written before the
    ``--resume`` checkpoint is read and the run folder is claimed."""
    _check_backbone(cfg)
    resume = load_resume_state(cfg, PACKAGE, required=CHECKPOINT_KEYS)
    return run_distributed(cfg, lambda ctx: _run(cfg, ctx, resume))


if __name__ == "__main__":
    main(parse_args())
