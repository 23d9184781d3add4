"""The iteration-based training loop pieces of the EMA teacher-student detectors (mixteacher, calibrated_teacher).

Both packages train a student on labeled and pseudo-labeled images, update an EMA teacher after every student step
and run in the released mmdetection style: SGD with linear warm-up and step decay per iteration, a ``log.csv`` row
and ``last.pt`` every ``checkpoint_interval`` iterations, evaluation every ``eval_interval`` iterations and at the
end. What the method does inside an iteration stays in the package; this module holds what their loops share:

* :func:`step_schedule`: mmcv's step learning-rate schedule with linear warm-up, per iteration;
* :func:`iteration_loader`: one batch per iteration from a batch sampler (seeded worker generator);
* :func:`teacher_student_step`: one iteration (student step, schedule step, EMA teacher update, teacher check);
* :func:`checkpoint_periods` and :func:`evaluation_due`: the iterations between checkpoints, and when to evaluate;
* :func:`loop_components` and :func:`category_record`: the checkpoint entries of the loop (student, teacher,
  optimizer, schedule, scaler) and of the training set's categories, for ``shared.checkpoint.training_state`` and
  ``restore_training_state``;
* :func:`claim_training_dir` and :func:`open_training_logger`: the run folder of a (resumed) run and its logger.

Imports flow ``shared.* -> shared.teacher_student -> <package>.data / <package>.train``; a package's method is passed
in (:class:`TeacherStudentMethod`), never imported here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from shared.config import config_to_dict, save_config
from shared.distributed import DistContext, loader_seed, seed_everything
from shared.logger import RunLogger, claim_run_dir, resolve_run_dir
from shared.training import autocast, check_finite_parameters, optimizer_step

__all__ = [
    "TeacherStudentMethod",
    "category_record",
    "checkpoint_periods",
    "claim_training_dir",
    "evaluation_due",
    "iteration_loader",
    "loop_components",
    "open_training_logger",
    "step_schedule",
    "teacher_student_step",
]


class TeacherStudentMethod(Protocol):
    """What the loop needs of a package's method module: the student, the EMA teacher and the teacher update."""

    student: nn.Module
    teacher: nn.Module

    def update_teacher(self, step: int) -> Any: ...


def step_schedule(
    optimizer: torch.optim.Optimizer, steps: Sequence[int], gamma: float, warmup_iters: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """mmcv ``StepLrUpdaterHook`` with linear warm-up (per iteration): lr x gamma^(#steps passed), during warm-up
    multiplied by ``1 - (1 - i / warmup_iters) (1 - warmup_ratio)``."""

    def factor(i: int) -> float:
        f = gamma ** sum(i >= s for s in steps)
        if i < warmup_iters:
            f *= 1 - (1 - i / warmup_iters) * (1 - warmup_ratio)
        return f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def iteration_loader(
    dataset: Dataset, batch_sampler: Sampler, collate_fn: Any, workers: int, ctx: DistContext, seed: int
) -> DataLoader:
    """The training loader of an iteration-based run: ``batch_sampler`` yields one batch per iteration (a function
    of the seed and the iteration, so that a resumed run sees the same batches); workers draw from a generator
    seeded with ``seed`` (and the rank: :func:`shared.distributed.loader_seed`)."""
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(loader_seed(seed, ctx.rank)),
    )


def teacher_student_step(
    model: nn.Module,
    method: TeacherStudentMethod,
    batch: dict[str, Any],
    step: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    cfg: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Iteration ``step``: ``model(batch, step)`` (the method, or its DDP wrapper) under ``cfg.amp`` autocast on
    ``device``, the
    student's optimizer step (clipped at ``cfg.clip_grad``; a non-finite loss, gradient or parameter stops the run
    naming the step), the schedule's step, the EMA teacher update and a check that the teacher stayed finite (it makes
    the pseudo labels and is checkpointed). Returns the loss and the method's logged values."""
    with autocast(device, cfg.amp):
        loss, logs = model(batch, step)
    optimizer_step(loss, optimizer, scaler, step, cfg.clip_grad, method.student.parameters())
    scheduler.step()
    method.update_teacher(step)
    check_finite_parameters(method.teacher, step, "EMA teacher")
    return loss, logs


def checkpoint_periods(start: int, until: int, interval: int, eval_interval: int = 0) -> Iterator[int]:
    """The lengths of the training periods from iteration ``start`` to ``until``: each ends at the next multiple of
    ``interval`` (0: one period to ``until``), where the loop writes its checkpoint and log row, or earlier at the
    next multiple of ``eval_interval``, where it evaluates (so an evaluation interval that is not a multiple of the
    checkpoint interval still evaluates on time)."""
    step = start
    while step < until:
        period = until - step
        for every in (interval, eval_interval):
            if every:
                period = min(every - step % every, period)
        yield period
        step += period


def evaluation_due(step: int, max_iters: int, eval_interval: int) -> bool:
    """Whether the loop evaluates after iteration ``step``: at the end of training and every ``eval_interval``."""
    return step == max_iters or bool(eval_interval and step % eval_interval == 0)


def loop_components(
    method: TeacherStudentMethod,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> dict[str, Any]:
    """The loop's checkpoint entries, by name: ``training_state(PACKAGE, cfg, **loop_components(...), ...)`` and
    ``restore_training_state(state, **loop_components(...))``."""
    return {
        "student": method.student,
        "teacher": method.teacher,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "scaler": scaler,
    }


def category_record(dataset: Any) -> dict[str, Any]:
    """The checkpoint entries naming the training set's classes (``num_classes``, category ids and names), which
    evaluation checks against its annotations."""
    return {
        "num_classes": dataset.num_classes,
        "categories": {"ids": list(dataset.cat_ids), "names": list(dataset.category_names)},
    }


def claim_training_dir(package: str, cfg: Any, ctx: DistContext, resumed: bool) -> Path:
    """The run folder (``cfg.output_dir``, the resumed checkpoint's folder, else ``runs/<package>/<name>/<time>``),
    claimed for this config (``shared.logger.claim_run_dir``: another package's or another config's folder is
    refused)."""
    out_dir = resolve_run_dir(package, cfg.name or "default", cfg.output_dir, cfg.resume)
    claim_run_dir(out_dir, package, config_to_dict(cfg), resume=resumed, is_main=ctx.is_main)
    return out_dir


def open_training_logger(cfg: Any, ctx: DistContext, out_dir: Path) -> RunLogger:
    """The start of a training run in ``out_dir``: the global seed, the run's logger and its ``config.yaml``."""
    seed_everything(cfg.seed, ctx.rank)
    logger = RunLogger(out_dir, is_main=ctx.is_main, tensorboard=cfg.tensorboard)
    if ctx.is_main:
        save_config(cfg, out_dir / "config.yaml")
    return logger
