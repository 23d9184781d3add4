"""COCO instance segmentation with Mask R-CNN on a Pyramid ViG / PVG + FPN backbone: the papers' Mask R-CNN 1x.

The recipe (README, Detection): mmdet's Mask R-CNN 1x (12 epochs, lr x 0.1 after epochs 8 and 11, 500-iteration
linear warm-up from 1e-3 x lr, 2 images per GPU on 8 GPUs, resize to 1333 x 800 keeping the ratio, flip 0.5, batches
grouped by aspect ratio) with AdamW (lr 1e-4 for a global batch of 16, scaled linearly; weight decay 0.05, none on
BatchNorm parameters and the position embedding), the backbone initialised from an ImageNet checkpoint. COCO box and
mask AP of the val split after every epoch (``shared.detection.evaluate_detections``). The model is
:func:`pvg.detection.build_mask_rcnn`, the config :class:`pvg.config.MaskRCNNConfig`.

    cd pvg && python train_det.py                           # embedded default: synthetic COCO set, CPU
    python -m pvg.train_det -c pvg/configs/maskrcnn_pvg_s_coco_1x.yaml --data.root data/coco \\
        --pretrained_backbone pvg_s.pth
    torchrun --nproc_per_node=8 -m pvg.train_det -c pvg/configs/maskrcnn_pvig_s_coco_1x.yaml ...

The run folder gets ``config.yaml``, ``train.log``, ``log.csv``, TensorBoard scalars, ``last.pt``/``best.pt`` (best
box AP) and ``metrics.json``; ``--resume last.pt`` continues a run exactly (the file is read and checked before
anything is written). A non-finite loss stops the run naming the step (the last checkpoint stays).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from pvg.config import DEFAULT_DET_CONFIG, PACKAGE, MaskRCNNConfig
from pvg.detection import build_coco_datasets, build_detector, evaluate
from shared.checkpoint import load_checkpoint, restore_training_state, training_state
from shared.config import config_to_dict, parse_config, save_config
from shared.detection import (
    COCO_METRIC_KEYS,
    CocoDetection,
    GroupedDistributedSampler,
    coco_summary,
    detection_collate,
    sharded_loader,
    targets_to_device,
)
from shared.distributed import (
    DistContext,
    all_reduce_mean,
    seed_everything,
    seed_worker,
)
from shared.entrypoints import end_epoch, finish_run, run_distributed, wrap_ddp
from shared.logger import RunLogger, claim_run_dir, resolve_run_dir
from shared.training import autocast, check_finite, make_grad_scaler, optimizer_step

__all__ = ['LOSS_NAMES', 'main', 'mmdet_step_schedule', 'param_groups', 'parse_args', 'train_one_epoch']

EpochHook = Callable[[int, dict[str, Any]], None]
#: torchvision's Mask R-CNN losses, in the order they are logged.
LOSS_NAMES = ('loss_objectness', 'loss_rpn_box_reg', 'loss_classifier', 'loss_box_reg', 'loss_mask')
STATE_KEYS = ('model', 'optimizer', 'scheduler', 'scaler', 'epoch', 'step', 'best', 'rng')


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm: bool, no_decay_keys: Sequence[str]) -> list:
    """AdamW groups: no weight decay for BatchNorm parameters (``no_decay_norm``) and for parameters whose name
    contains one of ``no_decay_keys``; frozen parameters are left out."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, _BatchNorm) for p in m.parameters()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = (no_decay_norm and id(param) in norm_params) or any(key in name for key in no_decay_keys)
        (no_decay if skip else decay).append(param)
    return [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]


def mmdet_step_schedule(
    optimizer: torch.optim.Optimizer,
    iters_per_epoch: int,
    steps: Sequence[int],
    gamma: float,
    warmup_iters: int,
    warmup_ratio: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """mmcv's ``StepLrUpdaterHook`` (by epoch, ``lr x gamma`` at each epoch of ``steps``) with a linear warm-up,
    stepped per iteration: during the first ``warmup_iters`` iterations the factor is multiplied by
    ``1 - (1 - i / warmup_iters) * (1 - warmup_ratio)``."""

    def factor(step: int) -> float:
        epoch = step // iters_per_epoch
        value = gamma ** sum(epoch >= s for s in steps)
        if step < warmup_iters:
            value *= 1 - (1 - step / warmup_iters) * (1 - warmup_ratio)
        return value

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class _Training:
    """Everything one run reads and updates."""

    train_set: CocoDetection
    val_set: CocoDetection
    model: nn.Module
    sampler: GroupedDistributedSampler
    train_loader: DataLoader
    eval_loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


def _build_training(cfg: MaskRCNNConfig, ctx: DistContext, logger: RunLogger, pretrained: bool) -> _Training:
    train_set, val_set = build_coco_datasets(cfg.data)
    num_classes = cfg.num_classes or train_set.num_classes
    model = build_detector(cfg, num_classes, load_pretrained=pretrained).to(ctx.device)
    if pretrained:
        source = cfg.pretrained_backbone or 'random initialisation (no pretrained_backbone given)'
        logger.info(f'{cfg.model} backbone: {source}')
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
        pin_memory=ctx.device.type == 'cuda',
        generator=torch.Generator(),
    )
    eval_loader = sharded_loader(val_set, cfg.data.eval_batch_size, ctx, workers=cfg.data.workers)
    global_batch = cfg.data.batch_size * ctx.world_size
    lr = cfg.lr * global_batch / cfg.lr_base_batch
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay_norm, cfg.no_decay_keys)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=cfg.opt_betas, eps=cfg.opt_eps)
    scheduler = mmdet_step_schedule(
        optimizer, len(train_loader), cfg.lr_steps, cfg.lr_gamma, cfg.warmup_iters, cfg.warmup_ratio
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        f'mask_rcnn-{cfg.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters '
        f'({trainable / 1e6:.2f} M trainable), {num_classes} classes, {len(train_set)} train / {len(val_set)} val '
        f'images, global batch {global_batch}, lr {lr:.3g}, {len(train_loader)} steps/epoch'
    )
    scaler = make_grad_scaler(ctx.device, cfg.amp)
    return _Training(train_set, val_set, model, sampler, train_loader, eval_loader, optimizer, scheduler, scaler)


def train_one_epoch(
    model: nn.Module, t: _Training, ctx: DistContext, epoch: int, step: int, cfg: MaskRCNNConfig, logger: RunLogger
) -> tuple[dict[str, float], int]:
    """One pass over the training loader; returns (mean losses and throughput, global step after the epoch)."""
    model.train()
    sums = torch.zeros(len(LOSS_NAMES) + 1, dtype=torch.float64)  # the losses, then images
    t0 = time.perf_counter()
    bar = logger.progress(t.train_loader, desc=f'epoch {epoch}', total=len(t.train_loader))
    for images, targets in bar:
        images, targets = targets_to_device(images, targets, ctx.device)
        with autocast(ctx.device, cfg.amp):
            losses = model(images, targets)
        loss = sum(losses[name] for name in LOSS_NAMES)
        check_finite(loss, step)
        optimizer_step(loss, t.optimizer, t.scaler, step, cfg.clip_grad, model.parameters())
        t.scheduler.step()
        step += 1
        values = [losses[name].item() for name in LOSS_NAMES]
        sums += torch.tensor([v * len(images) for v in values] + [len(images)], dtype=torch.float64)
        if step % cfg.log_interval == 0:
            lr = t.optimizer.param_groups[0]['lr']
            logger.scalars({'loss': sum(values), **dict(zip(LOSS_NAMES, values)), 'lr': lr}, step, prefix='train/')
            if hasattr(bar, 'set_postfix'):
                rate = sums[-1].item() * ctx.world_size / (time.perf_counter() - t0)
                bar.set_postfix(loss=f'{sum(values):.4f}', lr=f'{lr:.2e}', img_s=f'{rate:.1f}')
    elapsed = time.perf_counter() - t0
    seen = max(sums[-1].item(), 1.0)
    row = {name: all_reduce_mean(sums[i] / seen) for i, name in enumerate(LOSS_NAMES)}
    row['loss'] = sum(row.values())
    row.update(lr=t.optimizer.param_groups[0]['lr'], train_img_s=seen * ctx.world_size / elapsed, epoch_time_s=elapsed)
    return row, step


def _open_run(cfg: MaskRCNNConfig, ctx: DistContext) -> tuple[dict[str, Any] | None, Path, RunLogger]:
    """Read and check the resume checkpoint and the backbone requirement, then claim the run folder: every refusal
    comes before anything is written."""
    resume_state = load_checkpoint(cfg.resume, package=PACKAGE, required=STATE_KEYS) if cfg.resume else None
    if resume_state is None and cfg.pretrained_backbone is None and not cfg.allow_random_backbone:
        raise ValueError(
            'the Mask R-CNN recipe fine-tunes an ImageNet-pretrained backbone: pass --pretrained_backbone PATH (an '
            'official pvig_*.pth, see pvg.OFFICIAL_RELEASE, or a pvg.train checkpoint), or set '
            'allow_random_backbone: true to train from random initialisation'
        )
    out_dir = resolve_run_dir(PACKAGE, cfg.name or 'maskrcnn_default', cfg.output_dir, cfg.resume)
    claim_run_dir(out_dir, PACKAGE, config_to_dict(cfg), resume=resume_state is not None, is_main=ctx.is_main)
    logger = RunLogger(out_dir, is_main=ctx.is_main, tensorboard=cfg.tensorboard)
    if ctx.is_main:
        save_config(cfg, out_dir / 'config.yaml')
    logger.info(f'run folder {out_dir} | {ctx.world_size} process(es) on {ctx.device}')
    return resume_state, out_dir, logger


def _checkpoint(cfg: MaskRCNNConfig, t: _Training, epoch: int, step: int, best: dict[str, Any]) -> dict[str, Any]:
    return training_state(
        PACKAGE,
        cfg,
        model=t.model,
        optimizer=t.optimizer,
        scheduler=t.scheduler,
        scaler=t.scaler,
        epoch=epoch,
        step=step,
        best=best,
        categories={'ids': list(t.train_set.cat_ids), 'names': list(t.train_set.category_names)},
    )


def _evaluate_epoch(t: _Training, ctx: DistContext, cfg: MaskRCNNConfig, logger: RunLogger, epoch: int) -> dict:
    coco = evaluate(t.model, t.eval_loader, t.val_set, ctx, cfg.amp, cfg.mask_threshold)
    logger.info(f'epoch {epoch} COCO bbox (x100): {coco_summary(coco)}')
    logger.info(f'epoch {epoch} COCO segm (x100): {coco_summary(coco["segm"])}')
    return coco


def _train(cfg: MaskRCNNConfig, ctx: DistContext, on_epoch_end: EpochHook | None) -> dict[str, Any]:
    seed_everything(cfg.seed, ctx.rank)
    resume_state, out_dir, logger = _open_run(cfg, ctx)
    t = _build_training(cfg, ctx, logger, pretrained=resume_state is None)
    start_epoch, step, best = 0, 0, {'AP': -math.inf, 'epoch': -1}
    if resume_state is not None:
        restore_training_state(
            resume_state, model=t.model, optimizer=t.optimizer, scheduler=t.scheduler, scaler=t.scaler
        )
        start_epoch, step, best = resume_state['epoch'] + 1, resume_state['step'], resume_state['best']
        logger.info(f'resumed from {cfg.resume} at epoch {start_epoch}, step {step}')
    train_model = wrap_ddp(t.model, ctx)
    coco: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.epochs):
        t.sampler.set_epoch(epoch)
        t.train_loader.generator.manual_seed(cfg.seed * 100_003 + epoch)  # worker seeds: a function of the epoch
        row, step = train_one_epoch(train_model, t, ctx, epoch, step, cfg, logger)
        last, is_best = epoch + 1 == cfg.epochs, False
        if last or (cfg.eval_interval and (epoch + 1) % cfg.eval_interval == 0):
            coco = _evaluate_epoch(t, ctx, cfg, logger, epoch)
            row.update({f'bbox_{k}': coco[k] for k in COCO_METRIC_KEYS})
            row.update({f'segm_{k}': coco['segm'][k] for k in COCO_METRIC_KEYS})
            is_best = coco['AP'] > best['AP']
            if is_best:
                best = {'AP': coco['AP'], 'segm_AP': coco['segm']['AP'], 'epoch': epoch}
        state = functools.partial(_checkpoint, cfg, t, epoch, step, best)
        end_epoch(cfg, ctx, logger, out_dir, epoch, row, last, is_best, state, on_epoch_end)
    metrics = {
        'model': f'mask_rcnn_{cfg.model}',
        'epochs': cfg.epochs,
        'bbox': {k: v for k, v in coco.items() if k not in ('segm', 'per_class')},
        'segm': {k: v for k, v in coco.get('segm', {}).items() if k != 'per_class'},
        'per_class_AP': coco.get('per_class', {}),
        'best': best,
        'run_dir': str(out_dir),
    }
    return finish_run(logger, metrics, f"done: best box AP {100 * best['AP']:.1f} at epoch {best['epoch']}")


def parse_args(argv: Sequence[str] | None = None) -> MaskRCNNConfig:
    """Resolve the config: dataclass defaults < YAML (``-c``, else configs/maskrcnn_default.yaml) < command line."""
    return parse_config(
        MaskRCNNConfig,
        argv,
        description='Train Mask R-CNN with a Pyramid ViG / PVG backbone on COCO (or the synthetic set).',
        default_config=DEFAULT_DET_CONFIG,
    )


def main(cfg: MaskRCNNConfig, on_epoch_end: EpochHook | None = None) -> dict[str, Any]:
    """Train and evaluate; returns (and writes to ``metrics.json``) the final metrics.

    Args:
        cfg: the resolved config (its ``name`` names the run folder ``runs/pvg/<name>/<time>``).
        on_epoch_end: called as ``hook(epoch, row)`` after each epoch's checkpoint is on disk.
    """
    return run_distributed(cfg, lambda ctx: _train(cfg, ctx, on_epoch_end))


if __name__ == '__main__':
    main(parse_args())
