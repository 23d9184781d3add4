"""Train MixTeacher (or the supervised-only baseline) on COCO / VOC / the embedded synthetic COCO set.

    cd mixteacher && python train.py                     # embedded default: synthetic COCO, 10 % labeled, CPU
    python -m mixteacher.train -c mixteacher/configs/coco_partial_10.yaml --data.root data/coco \\
        --pretrained_backbone resnet50_msra-5891d200.pth --data.fold 1
    torchrun --nproc_per_node=8 -m mixteacher.train -c mixteacher/configs/coco_partial_10.yaml ...

From Python: ``main(parse_args(["-c", "mixteacher/configs/voc.yaml", "--max_iters", "10"]))`` returns the metrics.

Iteration-based, like the released mmdetection configs: SGD with linear warm-up and step decay, an EMA teacher
updated every iteration, evaluation of the teacher and the student at the regular and mixed test scales every
``eval_interval`` iterations. The run folder gets ``config.yaml``, ``train.log``, ``log.csv`` (one row per
``checkpoint_interval`` iterations), TensorBoard scalars, ``last.pt``/``best.pt`` and ``metrics.json``;
``--resume last.pt`` continues exactly. With ``compare_supervised`` (embedded default) a supervised-only run of the
same length follows in ``<run>/supervised/`` and both are printed side by side.

Before anything is written, a ``--resume`` file is read and checked (``engine.read_checkpoint``: a missing,
unreadable, foreign or incomplete file is a ``CheckpointError``), its stored config is compared with this one in
``TrainConfig.RESUME_SECTIONS`` (another detector, method or training data is a ``RunDirError`` naming the keys),
and the run folder (and its ``supervised/`` sub-folder) is claimed with ``shared.logger.claim_run_dir``
(``RUN.json``: a folder of another package or of a different config is refused). A non-finite loss, gradient,
parameter or EMA-teacher value stops the run with an error naming the step; the last checkpoint on disk stays as it
was (README, Quick start).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from mixteacher.config import DEFAULT_CONFIG, PACKAGE, TrainConfig
from mixteacher.data import (
    CocoDetection,
    SemiBatchSampler,
    SemiSupervisedDataset,
    build_datasets,
    semi_collate,
    val_loader,
)
from mixteacher.engine import (
    add_supervised,
    comparison_table,
    evaluate,
    headline,
    read_checkpoint,
    result_metrics,
)
from mixteacher.mix_teacher import MixTeacher
from mixteacher.model import build_detector
from shared import teacher_student as ts
from shared.checkpoint import check_resume_state, restore_training_state, save_last_and_best, training_state
from shared.config import config_to_dict, script_parser
from shared.detection import coco_summary
from shared.distributed import DistContext, all_reduce_mean
from shared.entrypoints import finish_run, run_distributed, wrap_ddp
from shared.logger import RunLogger, claim_run_dir, write_json
from shared.teacher_student import step_schedule
from shared.training import make_grad_scaler, show_progress

__all__ = [
    "TrainConfig",
    "build_method",
    "build_optimizer",
    "build_train_loader",
    "evaluate",
    "main",
    "parse_args",
    "step_schedule",
    "train_steps",
]


def check_resume(cfg: TrainConfig, resume: dict[str, Any]) -> None:
    """Refuse a ``--resume`` with another detector, method, method settings or training data than the checkpoint's
    stored config, upgraded to today's keys (``shared.logger.RunDirError`` naming the keys), e.g. one started
    without its ``-c`` recipe (``TrainConfig.RESUME_SECTIONS``; paths and loading: ``TrainConfig.RESUME_FREE_KEYS``)."""
    check_resume_state(cfg, resume)


# ------------------------------------------------------------------------------------------------ builders
# step_schedule (mmcv's step decay with linear warm-up) is shared.teacher_student's, re-exported here


def _supervised_config(cfg: TrainConfig, out_dir: Path) -> TrainConfig:
    """The supervised-only comparison of a MixTeacher run: the same iterations, the same expected number of
    labeled images per batch and the same learning rate (the released baseline and MixTeacher configs both train
    at lr 0.01 although their batches differ), labeled data only, in ``<run>/supervised/``."""
    labeled_per_batch = max(1, round(cfg.data.batch_size * cfg.data.sample_ratio[0] / sum(cfg.data.sample_ratio)))
    return replace(
        cfg,
        method="supervised",
        compare_supervised=False,
        resume=None,
        output_dir=str(out_dir / "supervised"),
        # build_optimizer scales lr by batch / lr_base_batch: give the smaller batch the MixTeacher run's lr
        lr=cfg.lr * cfg.data.batch_size / labeled_per_batch,
        data=replace(cfg.data, batch_size=labeled_per_batch, sample_ratio=(1.0, 0.0)),
    )


def _check_backbone(cfg: TrainConfig, compare: bool) -> None:
    # a resumed run takes its weights from the checkpoint, the supervised comparison always starts from the backbone
    if (not cfg.resume or compare) and cfg.pretrained_backbone is None and not cfg.allow_random_backbone:
        raise ValueError(
            "the recipes fine-tune an ImageNet-pretrained backbone: pass --pretrained_backbone PATH "
            "(mmdetection's detectron2 resnet50_caffe, resnet50_msra-5891d200.pth; 'imagenet' for "
            "detector.backbone mobilenet_v2), or set allow_random_backbone: true to train from random initialisation"
        )


def build_method(
    cfg: TrainConfig, num_classes: int, ctx: DistContext, resume: dict[str, Any] | None, logger: RunLogger
) -> MixTeacher:
    """Student (backbone from ``pretrained_backbone`` unless resuming) and EMA teacher on the device."""
    student = build_detector(num_classes, cfg.detector, cfg.pretrained_backbone if resume is None else None)
    if resume is None:
        logger.info(
            "backbone: "
            + (
                f"loaded {cfg.pretrained_backbone}"
                if cfg.pretrained_backbone
                else "random initialisation (no pretrained_backbone given)"
            )
        )
    return MixTeacher(student, cfg.mixteacher, cfg.method).to(ctx.device)


def build_optimizer(
    cfg: TrainConfig, method: MixTeacher, ctx: DistContext
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    """SGD on the student's trainable parameters, lr scaled linearly from ``lr_base_batch`` to the global batch."""
    lr = cfg.lr * cfg.data.batch_size * ctx.world_size / cfg.lr_base_batch
    params = [p for p in method.student.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = step_schedule(optimizer, cfg.lr_steps, cfg.lr_gamma, cfg.warmup_iters, cfg.warmup_ratio)
    return optimizer, scheduler, make_grad_scaler(ctx.device, cfg.amp)


def build_train_loader(
    cfg: TrainConfig, train_set: SemiSupervisedDataset, ctx: DistContext, start_iter: int
) -> DataLoader:
    """One batch per iteration from ``start_iter`` on (a function of the seed and the iteration: exact resume)."""
    num_unlabeled = train_set.num_unlabeled if cfg.method == "mixteacher" else 0
    sampler = SemiBatchSampler(
        len(train_set.labeled),
        num_unlabeled,
        cfg.data.batch_size,
        cfg.data.sample_ratio,
        cfg.max_iters,
        ctx.world_size,
        ctx.rank,
        cfg.seed,
        start_iter=start_iter,
        counts=cfg.data.batch_counts,
    )
    return ts.iteration_loader(train_set, sampler, semi_collate, cfg.data.workers, ctx, cfg.seed)


# -------------------------------------------------------------------------------------------------- loop


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = dict(batch)
    for key in ("labeled_images", "weak_images", "strong_images"):
        out[key] = [im.to(device, non_blocking=True) for im in batch[key]]
    out["labeled_targets"] = [
        {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in batch["labeled_targets"]
    ]
    out["weak_to_strong"] = batch["weak_to_strong"].to(device)
    return out


def train_steps(
    model: nn.Module,
    method: MixTeacher,
    batches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    ctx: DistContext,
    step: int,
    num_steps: int,
    cfg: TrainConfig,
    logger: RunLogger,
) -> tuple[dict[str, float], int]:
    """``num_steps`` iterations (one logging/checkpoint period); returns (mean logged values, global step)."""
    model.train()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}  # values logged only by some steps (pseudo-label statistics after the burn-in)
    t0, images = time.perf_counter(), 0
    bar = logger.progress(range(num_steps), desc=f"iter {step}", total=num_steps)
    for _ in bar:
        batch = _to_device(next(batches), ctx.device)
        loss, logs = ts.teacher_student_step(model, method, batch, step, optimizer, scheduler, scaler, ctx.device, cfg)
        step += 1
        images += len(batch["labeled_images"]) + len(batch["weak_images"])
        logs["loss"] = float(loss.detach())
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
        if cfg.log_interval and step % cfg.log_interval == 0:
            lr = optimizer.param_groups[0]["lr"]
            logger.scalars({**logs, "lr": lr}, step, prefix="train/")
            show_progress(bar, logs["loss"], lr, images, ctx.world_size, t0, digits=(3, 1))
    elapsed = time.perf_counter() - t0
    row = {k: all_reduce_mean(v / counts[k]) for k, v in sorted(sums.items())}
    row.update(
        {
            "lr": optimizer.param_groups[0]["lr"],
            "img_s": images * ctx.world_size / elapsed,
            "s_per_iter": elapsed / num_steps,
        }
    )
    return row, step


# ------------------------------------------------------------------------------------------------ evaluate and run


def _models(method: MixTeacher, cfg: TrainConfig) -> dict[str, nn.Module]:
    """What is evaluated: teacher and student (supervised: the student only)."""
    return (
        {"student": method.student}
        if cfg.method == "supervised"
        else {"teacher": method.teacher, "student": method.student}
    )


def _describe(
    cfg: TrainConfig,
    method: MixTeacher,
    optimizer: torch.optim.Optimizer,
    train_set: SemiSupervisedDataset,
    val_set: CocoDetection,
    ctx: DistContext,
) -> str:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    num_unlabeled = train_set.num_unlabeled if cfg.method == "mixteacher" else 0
    return (
        f"{cfg.method}: {sum(p.numel() for p in method.student.parameters()) / 1e6:.2f} M parameters "
        f"({sum(p.numel() for p in params) / 1e6:.2f} M trainable), {train_set.labeled.num_classes} classes, "
        f"{len(train_set.labeled)} labeled / {num_unlabeled} unlabeled / {len(val_set)} val images, "
        f"global batch {cfg.data.batch_size * ctx.world_size}, lr {optimizer.param_groups[0]['initial_lr']:.3g}, "
        f"{cfg.max_iters} iterations"
    )


def _evaluate_period(
    method: MixTeacher,
    loader: DataLoader,
    val_set: CocoDetection,
    ctx: DistContext,
    cfg: TrainConfig,
    step: int,
    row: dict[str, Any],
    best: dict[str, Any],
    logger: RunLogger,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], bool]:
    """Evaluate at ``step``: (results, best so far, whether this is the best)."""
    results = evaluate(_models(method, cfg), loader, val_set, ctx, cfg)
    _, main_metrics = headline(results, cfg)
    for key, m in results.items():
        row[f"{key}_AP"] = m["AP"]
        logger.info(f"step {step} {key} COCO bbox (x100): {coco_summary(m)}")
    is_best = main_metrics["AP"] > best["AP"]
    return results, ({"AP": main_metrics["AP"], "step": step} if is_best else best), is_best


def _train(cfg: TrainConfig, ctx: DistContext, out_dir: Path, resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """One training run (MixTeacher or supervised) in ``out_dir``; returns its metrics."""
    logger = ts.open_training_logger(cfg, ctx, out_dir)
    logger.info(f"run folder {out_dir} | {cfg.method} | {ctx.world_size} process(es) on {ctx.device}")
    train_set, val_set = build_datasets(cfg.data, ctx.is_main)
    method = build_method(cfg, train_set.labeled.num_classes, ctx, resume, logger)
    optimizer, scheduler, scaler = build_optimizer(cfg, method, ctx)
    step, best = 0, {"AP": -math.inf, "step": -1}
    components = ts.loop_components(method, optimizer, scheduler, scaler)
    if resume is not None:
        restore_training_state(resume, **components)
        step, best = resume["step"], resume["best"]
        logger.info(f"resumed from {cfg.resume} at step {step}")
    batches = iter(build_train_loader(cfg, train_set, ctx, step))
    eval_loader = val_loader(val_set, cfg.data, ctx)
    logger.info(_describe(cfg, method, optimizer, train_set, val_set, ctx))
    model = wrap_ddp(method, ctx, cfg.find_unused_parameters)
    results: dict[str, dict[str, Any]] = {}
    for period in ts.checkpoint_periods(step, cfg.max_iters, cfg.checkpoint_interval, cfg.eval_interval):
        row, step = train_steps(model, method, batches, optimizer, scheduler, scaler, ctx, step, period, cfg, logger)
        is_best = False
        if ts.evaluation_due(step, cfg.max_iters, cfg.eval_interval):
            results, best, is_best = _evaluate_period(method, eval_loader, val_set, ctx, cfg, step, row, best, logger)
        if ctx.is_main:  # refused (NonFiniteStateError) if any tensor is NaN/inf: last.pt stays the last good one
            state = training_state(
                PACKAGE, cfg, **components, step=step, best=best, **ts.category_record(train_set.labeled)
            )
            save_last_and_best(state, out_dir, is_best)
        logger.log_epoch(step, row)
    if not results:  # resumed at the end: evaluate once so metrics.json is complete
        results = evaluate(_models(method, cfg), eval_loader, val_set, ctx, cfg)
    metrics = result_metrics(results, cfg, method=cfg.method, iterations=cfg.max_iters)
    metrics.update({"best_AP": best["AP"], "best_step": best["step"], "run_dir": str(out_dir)})
    return finish_run(logger, metrics, f"done: {metrics['headline']} {coco_summary(headline(results, cfg)[1])}")


parse_args = script_parser(TrainConfig, "Train MixTeacher (CVPR 2023) on COCO/VOC/synthetic COCO.", DEFAULT_CONFIG)


def _run(cfg: TrainConfig, ctx: DistContext, resume: dict[str, Any] | None, compare: bool) -> dict[str, Any]:
    """The run (then the supervised comparison when ``compare``) inside the process group."""
    out_dir = ts.claim_training_dir(PACKAGE, cfg, ctx, resumed=resume is not None)
    sup_cfg = _supervised_config(cfg, out_dir) if compare else None
    if sup_cfg is not None:  # the comparison is redone from scratch; a resumed run may redo it with new values
        claim_run_dir(
            out_dir / "supervised", PACKAGE, config_to_dict(sup_cfg), resume=resume is not None, is_main=ctx.is_main
        )
    metrics = _train(cfg, ctx, out_dir, resume)
    if sup_cfg is not None:
        add_supervised(metrics, _train(sup_cfg, ctx, out_dir / "supervised")["last"])
        if ctx.is_main:
            write_json(metrics, out_dir / "metrics.json")
            print("\n" + comparison_table(metrics), flush=True)
    return metrics


def main(cfg: TrainConfig) -> dict[str, Any]:
    """Train and evaluate (then the supervised comparison when asked); returns the metrics of ``metrics.json``.

    Nothing is written before the ``--resume`` checkpoint is read and the run folder is claimed."""
    compare = cfg.compare_supervised and cfg.method == "mixteacher"
    _check_backbone(cfg, compare)
    resume = read_checkpoint(cfg.resume) if cfg.resume else None
    if resume is not None:  # before the run folder is claimed or anything is written
        check_resume(cfg, resume)
    return run_distributed(cfg, lambda ctx: _run(cfg, ctx, resume, compare))


if __name__ == "__main__":
    main(parse_args())
