"""COCO object detection with RetinaNet-EMO: the paper's RetinaNet 1x recipe on torchvision's RetinaNet.

The recipe of the official mmdet configs (zhangzjn/EMO ``down-stream-tasks/mmdetection/configs/retinanet_emo/
retinanet_emo_{1M,2M,5M}_fpn_1x_coco.py``): 12 epochs, AdamW lr 2e-4 (betas 0.9/0.999), weight decay 0.05 except
parameters whose name contains ``norm``, no gradient clipping, mmcv's ``CosineAnnealing`` (per epoch, to 0) with a
500-iteration linear warm-up from 1e-3 x lr, 4 images per GPU on 8 GPUs (global batch 32; lr scaled linearly for
other batches), resize to 1333 x 800 keeping the ratio, horizontal flip 0.5, batches grouped by aspect ratio, the
backbone initialised from an ImageNet checkpoint, ``frozen_stages=1``, ``norm_eval``; COCO evaluation of the val
split after every epoch (``shared.detection.evaluate_detections``). The model is
:func:`emo.detection.build_retinanet`, the config :class:`emo.config.DetectionConfig`.

    cd emo && python train_det.py                            # embedded default: synthetic COCO set, CPU
    python -m emo.train_det -c emo/configs/retinanet_emo_1m_coco_1x.yaml --data.root data/coco \\
        --pretrained_backbone net.pth
    torchrun --nproc_per_node=8 -m emo.train_det -c emo/configs/retinanet_emo_1m_coco_1x.yaml ...

The run folder gets ``config.yaml``, ``train.log``, ``log.csv``, TensorBoard scalars, ``last.pt``/``best.pt``
(best COCO AP) and ``metrics.json``; ``--resume last.pt`` continues a run exactly (the file is read and checked
before anything is written). ``eval_interval`` and ``checkpoint_interval`` count epochs.

``train_ssdlite.py`` runs this same loop for SSDLite-EMO (:func:`detector_parts` picks the model and data builders
from the config's type).
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
from torch.utils.data import DataLoader, Dataset

from emo.config import DEFAULT_DET_CONFIG, PACKAGE, DetectionConfig, DetectorConfig, SSDLiteConfig
from emo.data import build_detection_datasets, build_ssdlite_datasets
from emo.detection import build_detector, evaluate
from emo.ssdlite import build_ssdlite_detector
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
from shared.training import autocast, make_grad_scaler, optimizer_step

__all__ = [
    'DetectorParts',
    'detection_param_groups',
    'detector_parts',
    'evaluate',
    'main',
    'mmdet_cosine_schedule',
    'parse_args',
    'train_one_epoch',
]

EpochHook = Callable[[int, dict[str, Any]], None]
#: What a ``train_det.py`` checkpoint holds (besides ``package``, ``config`` and ``categories``).
STATE_KEYS = ('model', 'optimizer', 'scheduler', 'scaler', 'epoch', 'step', 'best', 'rng')


def detection_param_groups(model: nn.Module, weight_decay: float, no_decay_keys: Sequence[str]) -> list[dict]:
    """AdamW groups as mmcv's ``DefaultOptimizerConstructor`` with ``custom_keys={key: dict(decay_mult=0.)}``.

    A trainable parameter whose full name contains one of ``no_decay_keys`` gets no weight decay; every other one
    (biases included, as in mmdet) gets ``weight_decay``. Frozen parameters are left out.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(key in name for key in no_decay_keys) else decay).append(param)
    return [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]


def mmdet_cosine_schedule(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    iters_per_epoch: int,
    warmup_iters: int,
    warmup_ratio: float,
    min_lr: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """mmcv's ``CosineAnnealingLrUpdaterHook`` (``by_epoch=True``) with ``warmup='linear'``, stepped per iteration.

    The regular lr of epoch e is ``min_lr + (base - min_lr) * (1 + cos(pi * e / epochs)) / 2``; during the first
    ``warmup_iters`` iterations it is multiplied by ``1 - (1 - i / warmup_iters) * (1 - warmup_ratio)``.
    """
    bases = [g['lr'] for g in optimizer.param_groups]

    def factor(base: float):
        def f(step: int) -> float:
            epoch = min(step // iters_per_epoch, epochs)
            regular = min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * epoch / epochs))
            if step < warmup_iters:
                regular *= 1 - (1 - step / warmup_iters) * (1 - warmup_ratio)
            return regular / base if base else 0.0

        return f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(b) for b in bases])


@dataclass(frozen=True)
class DetectorParts:
    """How one detector of this package is built from its config: its name and its model and data builders."""

    name: str
    build_model: Callable[..., nn.Module]
    build_datasets: Callable[[Any], tuple[Dataset, CocoDetection]]


def detector_parts(cfg: DetectorConfig) -> DetectorParts:
    """RetinaNet for a :class:`DetectionConfig`, SSDLite for an :class:`SSDLiteConfig`."""
    if isinstance(cfg, SSDLiteConfig):
        return DetectorParts('ssdlite', build_ssdlite_detector, build_ssdlite_datasets)
    if isinstance(cfg, DetectionConfig):
        return DetectorParts('retinanet', build_detector, build_detection_datasets)
    raise TypeError(f'no detector for a {type(cfg).__name__}')


@dataclass
class _Training:
    """Everything one detection run reads and updates."""

    train_set: Dataset
    val_set: CocoDetection
    model: nn.Module
    sampler: GroupedDistributedSampler
    train_loader: DataLoader
    eval_loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


def _build_training(cfg: DetectorConfig, ctx: DistContext, logger: RunLogger, pretrained: bool) -> _Training:
    """Datasets, detector (backbone checkpoint loaded when ``pretrained``), loaders, AdamW and its schedule."""
    parts = detector_parts(cfg)
    train_set, val_set = parts.build_datasets(cfg.data)
    num_classes = cfg.num_classes or train_set.num_classes
    model = parts.build_model(cfg, num_classes, load_pretrained=pretrained).to(ctx.device)
    if pretrained:
        logger.info(
            f'{cfg.model} backbone: '
            + (
                f'loaded {cfg.pretrained_backbone}'
                if cfg.pretrained_backbone
                else 'random initialisation (no pretrained_backbone given)'
            )
        )
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
    optimizer = torch.optim.AdamW(
        detection_param_groups(model, cfg.weight_decay, cfg.no_decay_keys), lr=lr, betas=cfg.opt_betas, eps=cfg.opt_eps
    )
    steps_per_epoch = len(train_loader)
    scheduler = mmdet_cosine_schedule(
        optimizer, cfg.epochs, steps_per_epoch, cfg.warmup_iters, cfg.warmup_ratio, cfg.min_lr
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        f'{parts.name}-{cfg.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters '
        f'({trainable / 1e6:.2f} M trainable), {num_classes} classes, {len(train_set)} train / '
        f'{len(val_set)} val images, global batch {global_batch}, lr {lr:.3g}, {steps_per_epoch} steps/epoch'
    )
    return _Training(
        train_set,
        val_set,
        model,
        sampler,
        train_loader,
        eval_loader,
        optimizer,
        scheduler,
        make_grad_scaler(ctx.device, cfg.amp),
    )


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ctx: DistContext,
    epoch: int,
    step: int,
    cfg: DetectorConfig,
    logger: RunLogger,
    scaler: torch.amp.GradScaler,
) -> tuple[dict, int]:
    """One pass over ``loader``; returns (epoch statistics, global step after the epoch)."""
    model.train()
    sums = torch.zeros(3, dtype=torch.float64)  # classification, box regression, images
    t0 = time.perf_counter()
    bar = logger.progress(loader, desc=f'epoch {epoch}', total=len(loader))
    for images, targets in bar:
        images, targets = targets_to_device(images, targets, ctx.device)
        with autocast(ctx.device, cfg.amp):
            losses = model(images, targets)
        loss = losses['classification'] + losses['bbox_regression']
        optimizer_step(loss, optimizer, scaler, step, cfg.clip_grad, model.parameters())
        scheduler.step()
        step += 1
        n = len(images)
        sums += torch.tensor(
            [losses['classification'].item() * n, losses['bbox_regression'].item() * n, n], dtype=torch.float64
        )
        if step % cfg.log_interval == 0:
            lr = optimizer.param_groups[0]['lr']
            logger.scalars(
                {
                    'loss': loss.item(),
                    'loss_cls': losses['classification'].item(),
                    'loss_bbox': losses['bbox_regression'].item(),
                    'lr': lr,
                },
                step,
                prefix='train/',
            )
            if hasattr(bar, 'set_postfix'):
                bar.set_postfix(
                    loss=f'{loss.item():.4f}',
                    lr=f'{lr:.2e}',
                    img_s=f'{sums[2].item() * ctx.world_size / (time.perf_counter() - t0):.1f}',
                )
    elapsed = time.perf_counter() - t0
    seen = max(sums[2].item(), 1.0)
    loss_cls, loss_bbox = all_reduce_mean(sums[0] / seen), all_reduce_mean(sums[1] / seen)
    return {
        'loss': loss_cls + loss_bbox,
        'loss_cls': loss_cls,
        'loss_bbox': loss_bbox,
        'lr': optimizer.param_groups[0]['lr'],
        'train_img_s': seen * ctx.world_size / elapsed,
        'epoch_time_s': elapsed,
    }, step


def _open_run(cfg: DetectorConfig, ctx: DistContext) -> tuple[dict[str, Any] | None, Path, RunLogger]:
    """Read and check the resume checkpoint and the backbone requirement, then claim the run folder: every refusal
    comes before anything is written."""
    resume_state = load_checkpoint(cfg.resume, package=PACKAGE, required=STATE_KEYS) if cfg.resume else None
    if resume_state is None and cfg.pretrained_backbone is None and not cfg.allow_random_backbone:
        raise ValueError(
            f'the {detector_parts(cfg).name} recipe fine-tunes an ImageNet-pretrained backbone: pass '
            '--pretrained_backbone PATH (the official net.pth, see emo.OFFICIAL_CHECKPOINTS, or an emo.train '
            'checkpoint), or set '
            'allow_random_backbone: true to train from random initialisation'
        )
    default_name = f'{detector_parts(cfg).name}_default'
    out_dir = resolve_run_dir(PACKAGE, cfg.name or default_name, cfg.output_dir, cfg.resume)
    claim_run_dir(out_dir, PACKAGE, config_to_dict(cfg), resume=resume_state is not None, is_main=ctx.is_main)
    logger = RunLogger(out_dir, is_main=ctx.is_main, tensorboard=cfg.tensorboard)
    if ctx.is_main:
        save_config(cfg, out_dir / 'config.yaml')
    logger.info(f'run folder {out_dir} | {ctx.world_size} process(es) on {ctx.device}')
    return resume_state, out_dir, logger


def _checkpoint(cfg: DetectorConfig, t: _Training, epoch: int, step: int, best: dict[str, Any]) -> dict[str, Any]:
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


def _train(cfg: DetectorConfig, ctx: DistContext, on_epoch_end: EpochHook | None) -> dict[str, Any]:
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
        row, step = train_one_epoch(
            train_model, t.train_loader, t.optimizer, t.scheduler, ctx, epoch, step, cfg, logger, t.scaler
        )
        last, is_best = epoch + 1 == cfg.epochs, False
        if last or (cfg.eval_interval and (epoch + 1) % cfg.eval_interval == 0):
            coco = evaluate(t.model, t.eval_loader, t.val_set, ctx, cfg.amp)
            row.update({k: coco[k] for k in COCO_METRIC_KEYS})
            is_best = coco['AP'] > best['AP']
            if is_best:
                best = {'AP': coco['AP'], 'epoch': epoch}
            logger.info(f'epoch {epoch} COCO bbox (x100): {coco_summary(coco)}')
        state = functools.partial(_checkpoint, cfg, t, epoch, step, best)
        end_epoch(cfg, ctx, logger, out_dir, epoch, row, last, is_best, state, on_epoch_end)

    metrics = {
        'model': f'{detector_parts(cfg).name}_{cfg.model}',
        'epochs': cfg.epochs,
        'last': {k: v for k, v in coco.items() if k != 'per_class'},
        'per_class_AP': coco.get('per_class', {}),
        'best_AP': best['AP'],
        'best_epoch': best['epoch'],
        'run_dir': str(out_dir),
    }
    return finish_run(logger, metrics, f"done: best AP {100 * best['AP']:.1f} at epoch {best['epoch']}")


def parse_args(argv: Sequence[str] | None = None) -> DetectionConfig:
    """Resolve the config: dataclass defaults < YAML (``-c``, else configs/retinanet_default.yaml) < command line."""
    return parse_config(
        DetectionConfig,
        argv,
        description='Train RetinaNet-EMO on COCO (or the synthetic set).',
        default_config=DEFAULT_DET_CONFIG,
    )


def main(cfg: DetectorConfig, on_epoch_end: EpochHook | None = None) -> dict[str, Any]:
    """Train and evaluate; returns (and writes to ``metrics.json``) the final metrics.

    Args:
        cfg: the resolved config (its ``name`` names the run folder ``runs/emo/<name>/<time>``).
        on_epoch_end: called as ``hook(epoch, row)`` after each epoch's checkpoint is on disk.
    """
    return run_distributed(cfg, lambda ctx: _train(cfg, ctx, on_epoch_end))


if __name__ == '__main__':
    main(parse_args())
