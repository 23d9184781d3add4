"""COCO object detection with RetinaNet-EMO: the paper's RetinaNet 1x recipe on torchvision's RetinaNet.

The recipe of the official mmdet configs (zhangzjn/EMO ``down-stream-tasks/mmdetection/configs/retinanet_emo/
retinanet_emo_{1M,2M,5M}_fpn_1x_coco.py``): 12 epochs, AdamW lr 2e-4 (betas 0.9/0.999), weight decay 0.05 except
parameters whose name contains ``norm``, no gradient clipping, mmcv's ``CosineAnnealing`` (per epoch, to 0) with a
500-iteration linear warm-up from 1e-3 x lr, 4 images per GPU on 8 GPUs (global batch 32; lr scaled linearly for
other batches), resize to 1333 x 800 keeping the ratio, horizontal flip 0.5, batches grouped by aspect ratio, the
backbone initialised from an ImageNet checkpoint, ``frozen_stages=1``, ``norm_eval``; COCO evaluation of the val
split after every epoch (``shared.metrics.coco_evaluate``). The model is :func:`emo.detection.build_retinanet`.

    cd emo && python train_det.py                            # embedded default: synthetic COCO set, CPU
    python -m emo.train_det -c emo/configs/retinanet_emo_1m_coco_1x.yaml --data.root data/coco \\
        --pretrained_backbone net.pth
    torchrun --nproc_per_node=8 -m emo.train_det -c emo/configs/retinanet_emo_1m_coco_1x.yaml ...

The run folder gets ``config.yaml``, ``train.log``, ``log.csv``, TensorBoard scalars, ``last.pt``/``best.pt``
(best COCO AP) and ``metrics.json``; ``--resume last.pt`` continues a run exactly.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.models.detection import RetinaNet

from emo.data import CocoDetectionDataset, GroupedDistributedSampler, detection_collate
from emo.detection import build_retinanet
from shared.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_last_and_best
from shared.config import config_name, config_to_dict, parse_config, save_config
from shared.distributed import (
    DistContext,
    all_reduce_mean,
    cleanup_distributed,
    init_distributed,
    seed_everything,
    seed_worker,
)
from shared.logger import RunLogger, make_run_dir
from shared.metrics import coco_evaluate
from shared.training import AmpDtype, autocast, make_grad_scaler, optimizer_step, unwrap_model

__all__ = [
    'DEFAULT_DET_CONFIG',
    'DetDataConfig',
    'DetectionConfig',
    'build_detection_datasets',
    'build_detector',
    'detection_param_groups',
    'evaluate',
    'main',
    'mmdet_cosine_schedule',
    'run_detection',
    'train_one_epoch',
]

DEFAULT_DET_CONFIG = Path(__file__).resolve().parent / 'configs' / 'retinanet_default.yaml'
COCO_METRIC_KEYS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')


@dataclass
class DetDataConfig:
    """Where the COCO-format data is and how images are sized."""

    root: str = field(default='', metadata={'help': 'COCO root holding train2017/, val2017/, annotations/'})
    train_images: str = 'train2017'
    train_annotations: str = 'annotations/instances_train2017.json'
    val_images: str = 'val2017'
    val_annotations: str = 'annotations/instances_val2017.json'
    synthetic: bool = field(default=False, metadata={'help': 'write/use the embedded synthetic COCO-format set'})
    synthetic_train: int = 24
    synthetic_val: int = 8
    synthetic_image_size: int = 192
    synthetic_categories: int = 6
    min_size: int = field(default=800, metadata={'help': 'shorter side after resizing (mmdet img_scale 1333x800)'})
    max_size: int = field(default=1333, metadata={'help': 'longer side limit after resizing'})
    hflip: float = 0.5
    batch_size: int = field(default=4, metadata={'help': 'images per process'})
    eval_batch_size: int = field(default=1, metadata={'help': 'images per process at evaluation (mmdet: 1)'})
    workers: int = 4


@dataclass
class DetectionConfig:
    """RetinaNet-EMO training (defaults: the paper's RetinaNet 1x recipe for EMO-1M, 8 GPUs x 4 images)."""

    model: str = field(default='emo_1m', metadata={'help': 'EMO backbone (emo_1m, emo_2m, emo_5m, emo_6m, emo_test)'})
    pretrained_backbone: str | None = field(default=None, metadata={
        'help': 'ImageNet checkpoint of the backbone: official net.pth or an emo.train checkpoint (EMA used)'})
    allow_random_backbone: bool = field(default=False, metadata={
        'help': 'train without pretrained_backbone (random init); the paper recipes need a pretrained one'})
    num_classes: int | None = field(default=None, metadata={'help': 'default: categories of the train annotations'})
    window_size: int | None = field(default=None, metadata={'help': 'EW-MHSA window; null: official (7 1M/2M, 10 5M)'})
    drop_path: float | None = field(default=None, metadata={'help': "backbone drop path; null: the variant's official"})
    frozen_stages: int = 1
    norm_eval: bool = True
    fpn_channels: int = 256
    data: DetDataConfig = field(default_factory=DetDataConfig)
    epochs: int = 12
    lr: float = 2e-4
    lr_base_batch: int = field(default=32, metadata={'help': 'lr is given for this global batch; scaled linearly'})
    weight_decay: float = 0.05
    no_decay_keys: list[str] = field(default_factory=lambda: ['norm'], metadata={
        'help': 'parameters whose name contains one of these get no weight decay (mmdet paramwise custom_keys)'})
    opt_betas: tuple[float, float] = (0.9, 0.999)
    opt_eps: float = 1e-8
    warmup_iters: int = 500
    warmup_ratio: float = 1e-3
    min_lr: float = 0.0
    clip_grad: float | None = None
    score_thresh: float = 0.05
    detections_per_img: int = 100
    eval_interval: int = field(default=1, metadata={'help': 'evaluate every n epochs (and after the last)'})
    amp: AmpDtype = 'off'
    device: str | None = field(default=None, metadata={'help': 'cuda / cpu (default: cuda when available)'})
    torch_threads: int | None = field(default=None, metadata={
        'help': "intra-op CPU threads of each process (torch.set_num_threads); null: PyTorch's default"})
    seed: int = 0
    output_dir: str | None = field(default=None, metadata={'help': 'run folder (default runs/emo/<config>/<time>)'})
    resume: str | None = field(default=None, metadata={'help': 'last.pt of a run to continue'})
    log_interval: int = 50
    tensorboard: bool = True


def build_detection_datasets(cfg: DetDataConfig) -> tuple[CocoDetectionDataset, CocoDetectionDataset]:
    """Train and val sets in the COCO layout (the synthetic set is written first when ``cfg.synthetic``)."""
    if cfg.synthetic:
        from shared.synthetic import synthetic_root, write_coco_detection

        root = synthetic_root() / (f'coco_n{cfg.synthetic_train}_v{cfg.synthetic_val}_s{cfg.synthetic_image_size}'
                                   f'_c{cfg.synthetic_categories}')
        write_coco_detection(root, num_train=cfg.synthetic_train, num_val=cfg.synthetic_val,
                             image_size=cfg.synthetic_image_size, num_categories=cfg.synthetic_categories, seed=0)
    else:
        root = Path(cfg.root)
    train = CocoDetectionDataset(root / cfg.train_images, root / cfg.train_annotations, train=True, hflip=cfg.hflip)
    val = CocoDetectionDataset(root / cfg.val_images, root / cfg.val_annotations, train=False)
    if train.cat_ids != val.cat_ids:
        raise ValueError(f'categories differ between {train.annotation_file} and {val.annotation_file}')
    if len(train) == 0:
        raise ValueError(f'no training image with a usable box in {train.annotation_file}')
    return train, val


def build_detector(cfg: DetectionConfig, num_classes: int, load_pretrained: bool = True) -> RetinaNet:
    """:func:`emo.detection.build_retinanet` configured by ``cfg`` (the backbone checkpoint loaded when asked)."""
    kwargs: dict[str, Any] = {}
    if cfg.drop_path is not None:
        kwargs['backbone_drop_path_rate'] = cfg.drop_path
    pretrained = cfg.pretrained_backbone if load_pretrained else None
    return build_retinanet(
        cfg.model, num_classes=num_classes, pretrained_backbone=pretrained, window_size=cfg.window_size,
        frozen_stages=cfg.frozen_stages, norm_eval=cfg.norm_eval, fpn_channels=cfg.fpn_channels,
        min_size=cfg.data.min_size, max_size=cfg.data.max_size, detections_per_img=cfg.detections_per_img,
        score_thresh=cfg.score_thresh, **kwargs)


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


def mmdet_cosine_schedule(optimizer: torch.optim.Optimizer, epochs: int, iters_per_epoch: int, warmup_iters: int,
                          warmup_ratio: float, min_lr: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
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


def _to_device(images: list[torch.Tensor], targets: list[dict[str, Any]], device: torch.device):
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
               for t in targets]
    return images, targets


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, ctx: DistContext, epoch: int, step: int,
                    cfg: DetectionConfig, logger: RunLogger, scaler: torch.amp.GradScaler) -> tuple[dict, int]:
    """One pass over ``loader``; returns (epoch statistics, global step after the epoch)."""
    model.train()
    sums = torch.zeros(3, dtype=torch.float64)  # classification, box regression, images
    t0 = time.perf_counter()
    bar = logger.progress(loader, desc=f'epoch {epoch}', total=len(loader))
    for images, targets in bar:
        images, targets = _to_device(images, targets, ctx.device)
        with autocast(ctx.device, cfg.amp):
            losses = model(images, targets)
        loss = losses['classification'] + losses['bbox_regression']
        optimizer_step(loss, optimizer, scaler, step, cfg.clip_grad, model.parameters())
        scheduler.step()
        step += 1
        n = len(images)
        sums += torch.tensor([losses['classification'].item() * n, losses['bbox_regression'].item() * n, n],
                             dtype=torch.float64)
        if step % cfg.log_interval == 0:
            lr = optimizer.param_groups[0]['lr']
            logger.scalars({'loss': loss.item(), 'loss_cls': losses['classification'].item(),
                            'loss_bbox': losses['bbox_regression'].item(), 'lr': lr}, step, prefix='train/')
            if hasattr(bar, 'set_postfix'):
                bar.set_postfix(loss=f'{loss.item():.4f}', lr=f'{lr:.2e}',
                                img_s=f'{sums[2].item() * ctx.world_size / (time.perf_counter() - t0):.1f}')
    elapsed = time.perf_counter() - t0
    seen = max(sums[2].item(), 1.0)
    loss_cls, loss_bbox = all_reduce_mean(sums[0] / seen), all_reduce_mean(sums[1] / seen)
    return {'loss': loss_cls + loss_bbox, 'loss_cls': loss_cls, 'loss_bbox': loss_bbox,
            'lr': optimizer.param_groups[0]['lr'], 'train_img_s': seen * ctx.world_size / elapsed,
            'epoch_time_s': elapsed}, step


def val_loader(dataset: CocoDetectionDataset, cfg: DetDataConfig, ctx: DistContext) -> DataLoader:
    """Every val image exactly once over the ranks (rank r takes images r, r + world_size, ...)."""
    shard = Subset(dataset, list(range(ctx.rank, len(dataset), ctx.world_size)))
    return DataLoader(shard, batch_size=cfg.eval_batch_size, shuffle=False, num_workers=cfg.workers,
                      collate_fn=detection_collate, pin_memory=ctx.device.type == 'cuda')


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, dataset: CocoDetectionDataset, ctx: DistContext,
             amp: AmpDtype = 'off') -> dict[str, Any]:
    """COCO bbox metrics of ``model`` on ``dataset`` (fractions, as ``shared.metrics.coco_evaluate`` returns them).

    Detections (boxes in original image coordinates, xywh, COCO category ids) are gathered from every rank and
    evaluated once with pycocotools; every rank returns the same dict.
    """
    model.eval()
    detections: list[dict[str, Any]] = []
    for images, targets in loader:
        images, _ = _to_device(images, [], ctx.device)
        with autocast(ctx.device, amp):
            outputs = model(images)
        for output, target in zip(outputs, targets):
            boxes = output['boxes'].float().cpu()
            boxes[:, 2:] -= boxes[:, :2]
            for box, score, label in zip(boxes.tolist(), output['scores'].float().cpu().tolist(),
                                         output['labels'].cpu().tolist()):
                detections.append({'image_id': target['image_id'], 'category_id': dataset.cat_ids[label],
                                   'bbox': box, 'score': score})
    if ctx.distributed:
        gathered: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(gathered, detections)
        detections = [d for part in gathered for d in part]
    result: list[Any] = [coco_evaluate(dataset.coco, detections) if ctx.is_main else None]
    if ctx.distributed:
        dist.broadcast_object_list(result, src=0)
    metrics = result[0]
    metrics['num_detections'] = len(detections)
    return metrics


def coco_summary(metrics: dict[str, Any]) -> str:
    """``AP 34.4  AP50 54.2 ...`` in percent, as the paper's tables."""
    return '  '.join(f'{k} {100 * metrics[k]:.1f}' if metrics[k] == metrics[k] else f'{k} n/a'
                     for k in COCO_METRIC_KEYS)


def _training_state(model, optimizer, scheduler, scaler, epoch: int, step: int, cfg: DetectionConfig,
                    best: dict[str, float], dataset: CocoDetectionDataset) -> dict[str, Any]:
    return {
        'model': unwrap_model(model).state_dict(),
        'optimizer': optimizer.state_dict(),
        'scheduler': scheduler.state_dict(),
        'scaler': scaler.state_dict(),
        'epoch': epoch,
        'step': step,
        'best': best,
        'rng': capture_rng_state(),
        'config': config_to_dict(cfg),
        'categories': {'ids': list(dataset.cat_ids), 'names': list(dataset.category_names)},
    }


def run_detection(cfg: DetectionConfig, config_name: str = 'default',
                  on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train and evaluate; returns (and writes to ``metrics.json``) the final metrics.

    Args:
        cfg: the resolved config.
        config_name: name of the config (for the run folder).
        on_epoch_end: called as ``hook(epoch, row)`` after each epoch's checkpoint is on disk.
    """
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    ctx = init_distributed(cfg.device)
    try:
        return _run(cfg, ctx, config_name, on_epoch_end)
    finally:
        cleanup_distributed()


def _run(cfg: DetectionConfig, ctx: DistContext, config_name: str,
         on_epoch_end: Callable[[int, dict[str, Any]], None] | None) -> dict[str, Any]:
    seed_everything(cfg.seed, ctx.rank)
    resume_state = load_checkpoint(cfg.resume) if cfg.resume else None
    if resume_state is None and cfg.pretrained_backbone is None and not cfg.allow_random_backbone:
        raise ValueError(
            'the RetinaNet recipe fine-tunes an ImageNet-pretrained backbone: pass --pretrained_backbone PATH (the '
            "official net.pth, see emo.OFFICIAL_CHECKPOINTS, or an emo.train checkpoint), or set "
            'allow_random_backbone: true to train from random initialisation')
    if cfg.output_dir:
        out_dir = Path(cfg.output_dir)
    elif cfg.resume:
        out_dir = Path(cfg.resume).parent
    else:
        out_dir = make_run_dir('emo', config_name)
    logger = RunLogger(out_dir, is_main=ctx.is_main, tensorboard=cfg.tensorboard)
    if ctx.is_main:
        save_config(cfg, out_dir / 'config.yaml')
    logger.info(f'run folder {out_dir} | {ctx.world_size} process(es) on {ctx.device}')

    train_set, val_set = build_detection_datasets(cfg.data)
    num_classes = cfg.num_classes or train_set.num_classes
    model = build_detector(cfg, num_classes, load_pretrained=resume_state is None).to(ctx.device)
    if resume_state is None:
        logger.info(f'{cfg.model} backbone: ' + (f'loaded {cfg.pretrained_backbone}' if cfg.pretrained_backbone
                                                 else 'random initialisation (no pretrained_backbone given)'))
    sampler = GroupedDistributedSampler(train_set.aspect_groups(), cfg.data.batch_size, ctx.world_size, ctx.rank,
                                        seed=cfg.seed)
    train_loader = DataLoader(train_set, batch_size=cfg.data.batch_size, sampler=sampler,
                              num_workers=cfg.data.workers, collate_fn=detection_collate, worker_init_fn=seed_worker,
                              pin_memory=ctx.device.type == 'cuda', generator=torch.Generator())
    eval_loader = val_loader(val_set, cfg.data, ctx)
    global_batch = cfg.data.batch_size * ctx.world_size
    lr = cfg.lr * global_batch / cfg.lr_base_batch
    optimizer = torch.optim.AdamW(detection_param_groups(model, cfg.weight_decay, cfg.no_decay_keys), lr=lr,
                                  betas=cfg.opt_betas, eps=cfg.opt_eps)
    steps_per_epoch = len(train_loader)
    scheduler = mmdet_cosine_schedule(optimizer, cfg.epochs, steps_per_epoch, cfg.warmup_iters, cfg.warmup_ratio,
                                      cfg.min_lr)
    scaler = make_grad_scaler(ctx.device, cfg.amp)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(f'RetinaNet-{cfg.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters '
                f'({trainable / 1e6:.2f} M trainable), {num_classes} classes, {len(train_set)} train / '
                f'{len(val_set)} val images, global batch {global_batch}, lr {lr:.3g}, {steps_per_epoch} steps/epoch')

    start_epoch, step, best = 0, 0, {'AP': -math.inf, 'epoch': -1}
    if resume_state is not None:
        model.load_state_dict(resume_state['model'])
        optimizer.load_state_dict(resume_state['optimizer'])
        scheduler.load_state_dict(resume_state['scheduler'])
        scaler.load_state_dict(resume_state['scaler'])
        start_epoch, step, best = resume_state['epoch'] + 1, resume_state['step'], resume_state['best']
        restore_rng_state(resume_state['rng'])
        logger.info(f'resumed from {cfg.resume} at epoch {start_epoch}, step {step}')

    train_model: nn.Module = model
    if ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.local_rank] if ctx.device.type == 'cuda' else None)

    row: dict[str, Any] = {}
    coco: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        train_loader.generator.manual_seed(cfg.seed * 100_003 + epoch)  # worker seeds: a function of the epoch
        row, step = train_one_epoch(train_model, train_loader, optimizer, scheduler, ctx, epoch, step, cfg, logger,
                                    scaler)
        is_best = False
        if (epoch + 1) % cfg.eval_interval == 0 or epoch + 1 == cfg.epochs:
            coco = evaluate(model, eval_loader, val_set, ctx, cfg.amp)
            row.update({k: coco[k] for k in COCO_METRIC_KEYS})
            is_best = coco['AP'] > best['AP']
            if is_best:
                best = {'AP': coco['AP'], 'epoch': epoch}
            logger.info(f'epoch {epoch} COCO bbox (x100): {coco_summary(coco)}')
        if ctx.is_main:
            state = _training_state(model, optimizer, scheduler, scaler, epoch, step, cfg, best, train_set)
            save_last_and_best(state, out_dir, is_best)
        logger.log_epoch(epoch, row)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    metrics = {
        'model': f'retinanet_{cfg.model}',
        'epochs': cfg.epochs,
        'last': {k: v for k, v in coco.items() if k != 'per_class'},
        'per_class_AP': coco.get('per_class', {}),
        'best_AP': best['AP'],
        'best_epoch': best['epoch'],
        'run_dir': str(out_dir),
    }
    logger.write_metrics(metrics)
    logger.info(f"done: best AP {100 * best['AP']:.1f} at epoch {best['epoch']}")
    logger.close()
    return metrics


def load_det_config(argv: Sequence[str] | None = None) -> DetectionConfig:
    """Resolve the config: dataclass defaults < YAML (``-c``, else configs/retinanet_default.yaml) < command line."""
    return parse_config(DetectionConfig, argv, description='Train RetinaNet-EMO on COCO (or the synthetic set).',
                        default_config=DEFAULT_DET_CONFIG)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train with the resolved config; returns the metrics written to ``metrics.json``."""
    return run_detection(load_det_config(argv), config_name=config_name(argv, default='retinanet_default'))


if __name__ == '__main__':
    main()
