"""The training and evaluation-script body that the packages' detection and segmentation fine-tuning scripts share
(emo's ``train_det.py`` / ``train_ssdlite.py`` / ``train_seg.py`` and pvg's ``train_det.py``).

A package keeps what is its own (its detector, datasets, parameter groups, lr schedule, loss terms, evaluation and
summary) and hands it to this loop through a :class:`DetectionRecipe`:

* :func:`open_finetune_run`: the resume checkpoint read and checked, the pretrained-backbone requirement, the run
  folder claimed, ``config.yaml`` written: every refusal comes before anything is written;
* :func:`build_detection_training`: datasets, detector, the aspect-ratio grouped sampler and loaders, AdamW with the
  linear lr scaling and the package's schedule (:class:`DetectionTraining`);
* :func:`train_one_epoch`: one pass with the package's loss terms summed, logged and averaged over the ranks;
* :func:`train_detector`: the epoch loop (resume, evaluation, best checkpoint, ``end_epoch`` hook, ``metrics.json``);
* :class:`FrozenStagesBackbone`: a backbone whose ``frozen_stages`` and ``norm_eval`` hold through ``train()``;
* :func:`checkpoint_eval_config`, :func:`eval_script_parser`, :func:`run_checkpoint_eval`: an evaluation script's
  config (the training config plus ``checkpoint``), its ``parse_args`` and its ``main``;
  :func:`evaluate_detector_checkpoint`: a detector checkpoint evaluated on the val split.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from shared import entrypoints
from shared.checkpoint import load_resume_state, restore_training_state, training_state
from shared.config import config_to_dict, save_config
from shared.detection import (
    CocoDetection,
    GroupedDistributedSampler,
    check_checkpoint_categories,
    coco_summary,
    detection_collate,
    sharded_loader,
    targets_to_device,
)
from shared.distributed import DistContext, all_reduce_mean, loader_seed, seed_everything, seed_worker
from shared.logger import RunLogger, claim_run_dir, resolve_run_dir
from shared.training import autocast, make_grad_scaler, optimizer_step, show_progress

__all__ = [
    "STATE_KEYS",
    "DetectionRecipe",
    "DetectionTraining",
    "DetectorParts",
    "EpochHook",
    "FrozenStagesBackbone",
    "build_detection_training",
    "checkpoint_eval_config",
    "eval_script_parser",
    "evaluate_detector_checkpoint",
    "log_backbone",
    "open_finetune_run",
    "run_checkpoint_eval",
    "train_detector",
    "train_one_epoch",
]

T = TypeVar("T")
EpochHook = Callable[[int, dict[str, Any]], None]
#: What an epoch-based detection checkpoint holds (besides ``package``, ``config`` and ``categories``).
STATE_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "best", "rng")


def open_finetune_run(
    cfg: Any, ctx: DistContext, package: str, state_keys: Sequence[str], default_name: str, recipe: str, sources: str
) -> tuple[dict[str, Any] | None, Path, RunLogger]:
    """Read and check ``cfg.resume`` (it must hold ``state_keys``) and the backbone requirement (``recipe`` names the
    recipe and ``sources`` where a pretrained backbone comes from in the refusal), then claim the run folder
    (``runs/<package>/<cfg.name or default_name>/<time>`` unless ``cfg.output_dir``) and write ``config.yaml``.

    Returns (the resume state or None, the run folder, its logger).
    """
    resume_state = load_resume_state(cfg, package, required=tuple(state_keys))
    if resume_state is None and cfg.pretrained_backbone is None and not cfg.allow_random_backbone:
        raise ValueError(
            f"the {recipe} recipe fine-tunes an ImageNet-pretrained backbone: pass --pretrained_backbone PATH "
            f"({sources}), or set allow_random_backbone: true to train from random initialisation"
        )
    out_dir = resolve_run_dir(package, cfg.name or default_name, cfg.output_dir, cfg.resume)
    claim_run_dir(out_dir, package, config_to_dict(cfg), resume=resume_state is not None, is_main=ctx.is_main)
    logger = RunLogger(out_dir, is_main=ctx.is_main, tensorboard=cfg.tensorboard)
    if ctx.is_main:
        save_config(cfg, out_dir / "config.yaml")
    logger.info(f"run folder {out_dir} | {ctx.world_size} process(es) on {ctx.device}")
    return resume_state, out_dir, logger


def log_backbone(logger: RunLogger, cfg: Any, detail: str = "") -> None:
    """Say where the backbone's weights come from (``cfg.pretrained_backbone`` or a random initialisation)."""
    source = f"loaded {cfg.pretrained_backbone}" if cfg.pretrained_backbone else f"random initialisation{detail}"
    logger.info(f"{cfg.model} backbone: {source}")


class FrozenStagesBackbone(nn.Module):
    """A detection backbone around a classification ``body`` with mmdet's ``frozen_stages`` and ``norm_eval``: the
    frozen stages stay frozen and, with ``norm_eval``, every BatchNorm of the body stays in eval mode through every
    ``train()``. A subclass sets ``freeze`` to its package's ``apply_frozen_stages(body, frozen_stages, norm_eval)``
    and calls :meth:`set_frozen_stages` once its ``body`` is in place."""

    freeze: Callable[[nn.Module, int, bool], None]

    def set_frozen_stages(self, frozen_stages: int, norm_eval: bool) -> None:
        """Freeze the first ``frozen_stages`` of ``self.body`` now; ``norm_eval`` applies from ``train()`` on."""
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.freeze(self.body, frozen_stages, norm_eval=False)

    def train(self, mode: bool = True) -> FrozenStagesBackbone:
        super().train(mode)
        self.freeze(self.body, self.frozen_stages, norm_eval=mode and self.norm_eval)
        return self


@dataclass(frozen=True)
class DetectorParts:
    """How one detector of a package is built from its config: its name (``retinanet``, ``mask_rcnn`` ...: the log,
    ``metrics.json``), ``build_model(cfg, num_classes, load_pretrained=...)`` and ``build_datasets(cfg.data)`` ->
    (train, val)."""

    name: str
    build_model: Callable[..., nn.Module]
    build_datasets: Callable[[Any], tuple[Dataset, CocoDetection]]


@dataclass
class DetectionTraining:
    """Everything one detection run reads and updates."""

    train_set: Dataset
    val_set: Dataset
    model: nn.Module
    sampler: GroupedDistributedSampler
    train_loader: DataLoader
    eval_loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    def components(self) -> dict[str, Any]:
        """What a checkpoint saves and a resume restores (``training_state`` / ``restore_training_state``)."""
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}


def build_detection_training(
    cfg: Any,
    ctx: DistContext,
    logger: RunLogger,
    pretrained: bool,
    *,
    parts: DetectorParts,
    param_groups: Callable[[nn.Module], list[dict]],
    schedule: Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler],
) -> DetectionTraining:
    """The datasets and the detector of ``parts`` (the backbone checkpoint loaded when ``pretrained``), the
    aspect-ratio grouped training loader, the rank-sharded val loader, AdamW over ``param_groups(model)`` at
    ``cfg.lr`` scaled by the global batch over ``cfg.lr_base_batch``, and ``schedule(optimizer, steps_per_epoch)``."""
    train_set, val_set = parts.build_datasets(cfg.data)
    num_classes = cfg.num_classes or train_set.num_classes
    model = parts.build_model(cfg, num_classes, load_pretrained=pretrained).to(ctx.device)
    if pretrained:
        log_backbone(logger, cfg, " (no pretrained_backbone given)")
    sampler = GroupedDistributedSampler(
        train_set.aspect_groups(), cfg.data.batch_size, ctx.world_size, ctx.rank, seed=cfg.seed
    )
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.data.batch_size,
        sampler=sampler,
        num_workers=cfg.data.workers,
        collate_fn=detection_collate,
        worker_init_fn=seed_worker,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator(),
    )
    eval_loader = sharded_loader(val_set, cfg.data.eval_batch_size, ctx, workers=cfg.data.workers)
    global_batch = cfg.data.batch_size * ctx.world_size
    lr = cfg.lr * global_batch / cfg.lr_base_batch
    optimizer = torch.optim.AdamW(param_groups(model), lr=lr, betas=cfg.opt_betas, eps=cfg.opt_eps)
    scheduler = schedule(optimizer, len(train_loader))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        f"{parts.name}-{cfg.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters "
        f"({trainable / 1e6:.2f} M trainable), {num_classes} classes, {len(train_set)} train / {len(val_set)} val "
        f"images, global batch {global_batch}, lr {lr:.3g}, {len(train_loader)} steps/epoch"
    )
    scaler = make_grad_scaler(ctx.device, cfg.amp)
    return DetectionTraining(
        train_set, val_set, model, sampler, train_loader, eval_loader, optimizer, scheduler, scaler
    )


def train_one_epoch(
    model: nn.Module,
    t: DetectionTraining,
    ctx: DistContext,
    epoch: int,
    step: int,
    cfg: Any,
    logger: RunLogger,
    loss_names: Mapping[str, str],
    total_first: bool = False,
) -> tuple[dict[str, float], int]:
    """One pass over ``t.train_loader``: the loss is the sum of the model's losses named by the keys of
    ``loss_names`` (logged under their values). Returns (the mean of each loss over the epoch's images and the
    ranks, then ``loss`` = their sum (first, with ``total_first``: a package's ``log.csv`` column order), ``lr``,
    ``train_img_s``, ``epoch_time_s``; the global step after the epoch)."""
    model.train()
    keys, logged = list(loss_names), list(loss_names.values())
    sums = torch.zeros(len(keys) + 1, dtype=torch.float64)  # the losses, then images
    t0 = time.perf_counter()
    bar = logger.progress(t.train_loader, desc=f"epoch {epoch}", total=len(t.train_loader))
    for images, targets in bar:
        images, targets = targets_to_device(images, targets, ctx.device)
        with autocast(ctx.device, cfg.amp):
            losses = model(images, targets)
        loss = sum(losses[key] for key in keys)
        optimizer_step(loss, t.optimizer, t.scaler, step, cfg.clip_grad, model.parameters())
        t.scheduler.step()
        step += 1
        values = [losses[key].item() for key in keys]
        sums += torch.tensor([v * len(images) for v in values] + [len(images)], dtype=torch.float64)
        if step % cfg.log_interval == 0:
            lr = t.optimizer.param_groups[0]["lr"]
            logger.scalars({"loss": sum(values), **dict(zip(logged, values)), "lr": lr}, step, prefix="train/")
            show_progress(bar, sum(values), lr, int(sums[-1].item()), ctx.world_size, t0, digits=(4, 1))
    elapsed = time.perf_counter() - t0
    seen = max(sums[-1].item(), 1.0)
    row = {name: all_reduce_mean(sums[i] / seen) for i, name in enumerate(logged)}
    total = {"loss": sum(row.values())}
    row = {**total, **row} if total_first else {**row, **total}
    row.update(lr=t.optimizer.param_groups[0]["lr"], train_img_s=seen * ctx.world_size / elapsed, epoch_time_s=elapsed)
    return row, step


@dataclass(frozen=True)
class DetectionRecipe:
    """What a package's detection script hands to :func:`train_detector`.

    Attributes:
        package: the package name (run folders, checkpoints).
        default_name: the run-folder name when the config has no ``name``.
        recipe, sources: the refusal without a pretrained backbone (see :func:`open_finetune_run`).
        build: ``build(cfg, ctx, logger, pretrained) -> DetectionTraining``.
        train_one_epoch: ``(train_model, t, ctx, epoch, step, cfg, logger) -> (row, step)``.
        evaluate: ``(t, ctx, cfg, logger, epoch) -> (coco, row_values, best_candidate)``: the COCO metrics, what the
            epoch row gets from them, and the best-model entry (with an ``AP`` key, compared across epochs).
        summarize: ``(cfg, coco, best, out_dir) -> (metrics, done_line)``.
    """

    package: str
    default_name: str
    recipe: str
    sources: str
    build: Callable[[Any, DistContext, RunLogger, bool], DetectionTraining]
    train_one_epoch: Callable[..., tuple[dict[str, Any], int]]
    evaluate: Callable[..., tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]
    summarize: Callable[[Any, dict[str, Any], dict[str, Any], Path], tuple[dict[str, Any], str]]


def _checkpoint(
    package: str, cfg: Any, t: DetectionTraining, epoch: int, step: int, best: dict[str, Any]
) -> dict[str, Any]:
    categories = {"ids": list(t.train_set.cat_ids), "names": list(t.train_set.category_names)}
    return training_state(package, cfg, **t.components(), epoch=epoch, step=step, best=best, categories=categories)


def _train(cfg: Any, ctx: DistContext, recipe: DetectionRecipe, on_epoch_end: EpochHook | None) -> dict[str, Any]:
    seed_everything(cfg.seed, ctx.rank)
    resume_state, out_dir, logger = open_finetune_run(
        cfg, ctx, recipe.package, STATE_KEYS, recipe.default_name, recipe.recipe, recipe.sources
    )
    t = recipe.build(cfg, ctx, logger, resume_state is None)
    start_epoch, step, best = 0, 0, {"AP": -math.inf, "epoch": -1}
    if resume_state is not None:
        restore_training_state(resume_state, **t.components())
        start_epoch, step, best = resume_state["epoch"] + 1, resume_state["step"], resume_state["best"]
        logger.info(f"resumed from {cfg.resume} at epoch {start_epoch}, step {step}")
    train_model = entrypoints.wrap_ddp(t.model, ctx)
    coco: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.epochs):
        t.sampler.set_epoch(epoch)
        # worker seeds: a function of the epoch and the rank
        t.train_loader.generator.manual_seed(loader_seed(cfg.seed * 100_003 + epoch, ctx.rank))
        row, step = recipe.train_one_epoch(train_model, t, ctx, epoch, step, cfg, logger)
        last, is_best = epoch + 1 == cfg.epochs, False
        if last or (cfg.eval_interval and (epoch + 1) % cfg.eval_interval == 0):
            coco, values, candidate = recipe.evaluate(t, ctx, cfg, logger, epoch)
            row.update(values)
            is_best = candidate["AP"] > best["AP"]
            if is_best:
                best = {**candidate, "epoch": epoch}
        state = functools.partial(_checkpoint, recipe.package, cfg, t, epoch, step, best)
        entrypoints.end_epoch(cfg, ctx, logger, out_dir, epoch, row, last, is_best, state, on_epoch_end)
    metrics, done = recipe.summarize(cfg, coco, best, out_dir)
    return entrypoints.finish_run(logger, metrics, done)


def train_detector(cfg: Any, recipe: DetectionRecipe, on_epoch_end: EpochHook | None = None) -> dict[str, Any]:
    """Train and evaluate (``torchrun``-ready); returns (and writes to ``metrics.json``) the final metrics.

    ``on_epoch_end`` is called as ``hook(epoch, row)`` after each epoch's checkpoint is on disk.
    """
    return entrypoints.run_distributed(cfg, lambda ctx: _train(cfg, ctx, recipe, on_epoch_end))


def evaluate_detector_checkpoint(
    cfg: Any, ctx: DistContext, package: str, script: str, parts: DetectorParts, evaluate: Callable[..., dict]
) -> dict[str, Any]:
    """An evaluation script's body: the detector of ``parts`` with the weights of ``cfg.checkpoint`` (a ``package``
    checkpoint written by ``script``, its categories checked against the val annotations) evaluated by
    ``evaluate(model, loader, val_set, ctx, cfg.amp)`` on the val split; ``metrics.json`` (``model``,
    ``checkpoint``, ``images`` and the COCO metrics) goes to ``cfg.output_dir`` (default ``<checkpoint
    folder>/eval``). Logs the box summary (and the mask one when the metrics have ``segm``)."""
    checkpoint = entrypoints.load_trained_checkpoint(cfg.checkpoint, package, script)
    _, val_set = parts.build_datasets(cfg.data)
    check_checkpoint_categories(checkpoint, cfg.checkpoint, val_set)
    num_classes = cfg.num_classes or val_set.num_classes
    model = parts.build_model(cfg, num_classes, load_pretrained=False).to(ctx.device)
    entrypoints.load_strict(
        model, checkpoint["model"], cfg.checkpoint, f"{parts.name}-{cfg.model} ({num_classes} classes)"
    )
    out_dir, logger = entrypoints.open_eval_logger(cfg, ctx)
    eval_loader = sharded_loader(val_set, cfg.data.eval_batch_size, ctx, workers=cfg.data.workers)
    coco = evaluate(model, eval_loader, val_set, ctx, cfg.amp)
    metrics = {"model": f"{parts.name}_{cfg.model}", "checkpoint": str(cfg.checkpoint), "images": len(val_set), **coco}
    lines = [f"{parts.name}-{cfg.model} COCO bbox (x100): {coco_summary(coco)}"]
    if "segm" in coco:
        lines.append(f"{parts.name}-{cfg.model} COCO segm (x100): {coco_summary(coco['segm'])}")
    lines[-1] += f"  [{len(val_set)} images, {coco['num_detections']} detections]"
    return entrypoints.finish_run(logger, metrics, *lines, metrics_dir=out_dir)


def checkpoint_eval_config(schema: type[T], script: str, name: str, module: str) -> type[T]:
    """The config of an evaluation script, a dataclass ``name`` of ``module``: the training config ``schema`` plus
    ``checkpoint``, the ``script`` checkpoint to evaluate."""
    checkpoint = dataclasses.field(default="", metadata={"help": f"{script} checkpoint (last.pt / best.pt)"})
    doc = f"The {schema.__name__} training config plus the checkpoint (of {script}) to evaluate."
    return dataclasses.make_dataclass(
        name, [("checkpoint", str, checkpoint)], bases=(schema,), namespace={"__doc__": doc, "__module__": module}
    )


def eval_script_parser(
    parse_checkpoint_config: Callable[[type[T], Sequence[str] | None, Path, str], T],
    schema: type[T],
    default_config: Path,
    description: str,
) -> Callable[[Sequence[str] | None], T]:
    """The ``parse_args(argv=None)`` of an evaluation script: the package's ``parse_checkpoint_config`` (flags >
    ``-c`` > the checkpoint's own config > ``default_config``) for ``schema``."""

    def parse_args(argv: Sequence[str] | None = None) -> T:
        return parse_checkpoint_config(schema, argv, default_config, description)

    parse_args.__doc__ = f"{description} Config: flags > -c > the checkpoint's own config > {default_config.name}."
    return parse_args


def run_checkpoint_eval(cfg: Any, evaluate: Callable[[Any, DistContext], T]) -> T:
    """An evaluation script's ``main``: ``evaluate(cfg, ctx)`` in the process group; ``cfg.checkpoint`` is required."""
    if not cfg.checkpoint:
        raise ValueError("--checkpoint PATH is required")
    return entrypoints.run_distributed(cfg, lambda ctx: evaluate(cfg, ctx))
