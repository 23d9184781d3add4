"""ADE20K semantic segmentation with DeepLabv3-EMO or PSPNet-EMO: the paper's 512 x 512, 80k-iteration recipe.

The recipe of the official mmseg configs (zhangzjn/EMO ``down-stream-tasks/mmsegmentation/configs/{deeplabv3_emo,
pspnet_emo}/*_512x512_80k_ade20k.py`` on mmseg's ``ade20k.py`` and ``schedule_80k.py``): 80,000 iterations, AdamW
lr 1.2e-4 (betas 0.9/0.999), weight decay 0.01 except parameters whose name contains ``norm``, poly decay (power
0.9, to 0, per iteration, no warm-up), 4 images per GPU (global batch 16; lr scaled linearly for other batches),
random rescale 0.5-2.0 of (2048, 512), 512 x 512 crops with ``cat_max_ratio`` 0.75, flip, photometric distortion;
decode loss + 0.4 x auxiliary loss; mIoU / mAcc / aAcc on the val split every 8,000 iterations
(``shared.metrics.segmentation``). The model is :func:`emo.segmentation.build_segmentor`, the config
:class:`emo.config.SegConfig`.

    cd emo && python train_seg.py                             # embedded default: synthetic ADE20K-format set, CPU
    python -m emo.train_seg -c emo/configs/deeplabv3_emo_1m_ade20k_80k.yaml --data.root data/ade \\
        --pretrained_backbone net.pth
    torchrun --nproc_per_node=4 -m emo.train_seg -c emo/configs/pspnet_emo_5m_ade20k_80k.yaml ...

The run folder gets ``config.yaml``, ``train.log``, ``log.csv`` (one row per evaluation), TensorBoard scalars,
``last.pt``/``best.pt`` (best mIoU) and ``metrics.json``; ``--resume last.pt`` continues a run exactly (the data
stream is a function of the iteration: :class:`emo.data.IterationSampler`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from emo.config import BACKBONE_SOURCES, DEFAULT_SEG_CONFIG, PACKAGE, SegConfig
from emo.data import ADE20KSegmentation, IterationSampler, build_segmentation_datasets
from emo.segmentation import EMOSegmentor, build_segmentor, predict_probabilities, segmentation_loss
from emo.train_det import detection_param_groups
from shared.checkpoint import restore_training_state, save_last_and_best, training_state
from shared.config import script_parser
from shared.detection_training import log_backbone, open_finetune_run
from shared.distributed import DistContext, all_reduce_mean, seed_everything
from shared.entrypoints import finish_run, run_distributed, wrap_ddp
from shared.metrics import confusion_matrix, segmentation_metrics
from shared.training import autocast, make_grad_scaler, optimizer_step

__all__ = ['build_model', 'evaluate', 'main', 'parse_args', 'poly_schedule']

IterHook = Callable[[int, dict[str, Any]], None]
STATE_KEYS = ('model', 'optimizer', 'scheduler', 'scaler', 'step', 'best', 'rng')


def build_model(cfg: SegConfig, load_pretrained: bool = True) -> EMOSegmentor:
    """:func:`build_segmentor` configured by ``cfg`` (the backbone checkpoint loaded when asked)."""
    kwargs: dict[str, Any] = {} if cfg.drop_path is None else {'drop_path_rate': cfg.drop_path}
    return build_segmentor(
        cfg.model,
        cfg.head,
        cfg.num_classes,
        pretrained_backbone=cfg.pretrained_backbone if load_pretrained else None,
        window_size=cfg.window_size,
        channels=cfg.channels,
        aux_channels=cfg.aux_channels,
        auxiliary=cfg.aux_weight > 0,
        dropout=cfg.dropout,
        dilations=cfg.dilations,
        pool_scales=cfg.pool_scales,
        **kwargs,
    )


def poly_schedule(optimizer: torch.optim.Optimizer, max_iters: int, power: float, min_lr: float = 0.0):
    """mmcv's ``PolyLrUpdaterHook`` (``by_epoch=False``): lr ``(base - min_lr) * (1 - i / max_iters) ** power + min_lr``
    at iteration i."""
    bases = [g['lr'] for g in optimizer.param_groups]

    def factor(base: float):
        return lambda i: ((base - min_lr) * (1 - min(i, max_iters) / max_iters) ** power + min_lr) / base if base else 0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(b) for b in bases])


@torch.no_grad()
def evaluate(
    model: EMOSegmentor,
    dataset: ADE20KSegmentation,
    ctx: DistContext,
    cfg: SegConfig,
    scales: Sequence[float] | None = None,
    flip: bool | None = None,
) -> dict[str, Any]:
    """aAcc / mIoU / mAcc (fractions) and per-class IoU / Acc of ``model`` on ``dataset``, one image at a time at
    its own size (mmseg ``whole`` mode; ``scales``/``flip`` default to ``cfg.eval_scales``/``cfg.eval_flip``); the
    images are split over the ranks and the confusion matrices summed."""
    scales = cfg.eval_scales if scales is None else scales
    flip = cfg.eval_flip if flip is None else flip
    model.eval()
    confusion = torch.zeros(cfg.num_classes, cfg.num_classes, dtype=torch.int64, device=ctx.device)
    for index in range(ctx.rank, len(dataset), ctx.world_size):
        image, label, _ = dataset[index]
        with autocast(ctx.device, cfg.amp):
            prob = predict_probabilities(model, image.to(ctx.device), label.shape, scales, flip, tuple(cfg.data.scale))
        confusion += confusion_matrix(prob.argmax(1)[0], label.to(ctx.device), cfg.num_classes)
    if ctx.distributed:
        dist.all_reduce(confusion)
    return segmentation_metrics(confusion.cpu())


def _loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: SegConfig) -> dict[str, torch.Tensor]:
    decode, aux = model(images)
    losses = {'decode': segmentation_loss(decode, labels, cfg.loss_avg_non_ignore)}
    if aux is not None:
        losses['aux'] = cfg.aux_weight * segmentation_loss(aux, labels, cfg.loss_avg_non_ignore)
    return losses


def _train(cfg: SegConfig, ctx: DistContext, on_eval: IterHook | None) -> dict[str, Any]:
    seed_everything(cfg.seed, ctx.rank)
    resume_state, out_dir, logger = open_finetune_run(
        cfg, ctx, PACKAGE, STATE_KEYS, 'seg_default', 'segmentation', BACKBONE_SOURCES
    )
    train_set, val_set = build_segmentation_datasets(cfg.data)
    model = build_model(cfg, load_pretrained=resume_state is None).to(ctx.device)
    if resume_state is None:
        log_backbone(logger, cfg)
    global_batch = cfg.data.batch_size * ctx.world_size
    lr = cfg.lr * global_batch / cfg.lr_base_batch
    optimizer = torch.optim.AdamW(
        detection_param_groups(model, cfg.weight_decay, cfg.no_decay_keys), lr=lr, betas=cfg.opt_betas, eps=cfg.opt_eps
    )
    scheduler = poly_schedule(optimizer, cfg.iters, cfg.poly_power, cfg.min_lr)
    scaler = make_grad_scaler(ctx.device, cfg.amp)
    step, best = 0, {'mIoU': -math.inf, 'step': -1}
    if resume_state is not None:
        restore_training_state(resume_state, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        step, best = resume_state['step'], resume_state['best']
        logger.info(f'resumed from {cfg.resume} at iteration {step}')
    logger.info(
        f'{cfg.head}-{cfg.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, '
        f'{cfg.num_classes} classes, {len(train_set)} train / {len(val_set)} val images, global batch {global_batch}, '
        f'lr {lr:.3g}, {cfg.iters} iterations'
    )
    train_model = wrap_ddp(model, ctx)
    sampler = IterationSampler(len(train_set), cfg.data.batch_size, cfg.iters, step, cfg.seed, ctx.rank, ctx.world_size)
    loader = DataLoader(
        train_set,
        batch_size=cfg.data.batch_size,
        sampler=sampler,
        num_workers=cfg.data.workers,
        pin_memory=ctx.device.type == 'cuda',
        generator=torch.Generator(),  # worker seeds drawn from it, not from the global RNG (exact resume)
    )
    sums, seen, t0 = torch.zeros(2, dtype=torch.float64), 0, time.perf_counter()
    result: dict[str, Any] = {}
    model.train()
    for images, labels, _ in logger.progress(loader, desc='train', total=len(loader)):
        images, labels = images.to(ctx.device, non_blocking=True), labels.to(ctx.device, non_blocking=True)
        with autocast(ctx.device, cfg.amp):
            losses = _loss(train_model, images, labels, cfg)
        loss = sum(losses.values())
        optimizer_step(loss, optimizer, scaler, step, cfg.clip_grad, model.parameters())
        scheduler.step()
        step += 1
        sums += torch.tensor([losses['decode'].item(), losses.get('aux', torch.zeros(())).item()], dtype=torch.float64)
        seen += 1
        if step % cfg.log_interval == 0:
            logger.scalars({'loss': loss.item(), 'lr': optimizer.param_groups[0]['lr']}, step, prefix='train/')
        last = step == cfg.iters
        if last or (cfg.eval_interval and step % cfg.eval_interval == 0):
            result = evaluate(model, val_set, ctx, cfg)
            is_best = result['mIoU'] > best['mIoU']
            if is_best:
                best = {'mIoU': result['mIoU'], 'step': step}
            row = {
                'loss_decode': all_reduce_mean(sums[0] / max(seen, 1)),
                'loss_aux': all_reduce_mean(sums[1] / max(seen, 1)),
                'lr': optimizer.param_groups[0]['lr'],
                'iter_s': seen / (time.perf_counter() - t0),
                **{k: result[k] for k in ('aAcc', 'mIoU', 'mAcc')},
            }
            logger.info(
                f"iteration {step}: mIoU {100 * result['mIoU']:.2f}  mAcc {100 * result['mAcc']:.2f}  "
                f"aAcc {100 * result['aAcc']:.2f}"
            )
            logger.log_epoch(step, row)
            if ctx.is_main:
                save_last_and_best(_checkpoint(cfg, model, optimizer, scheduler, scaler, step, best), out_dir, is_best)
            if on_eval is not None:
                on_eval(step, row)
            sums, seen, t0 = torch.zeros(2, dtype=torch.float64), 0, time.perf_counter()
            model.train()
        elif ctx.is_main and cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0:
            save_last_and_best(_checkpoint(cfg, model, optimizer, scheduler, scaler, step, best), out_dir, False)
    metrics = {
        'model': f'{cfg.head}_{cfg.model}',
        'iters': cfg.iters,
        'last': {k: v for k, v in result.items()},
        'best_mIoU': best['mIoU'],
        'best_step': best['step'],
        'run_dir': str(out_dir),
    }
    return finish_run(logger, metrics, f"done: best mIoU {100 * best['mIoU']:.2f} at iteration {best['step']}")


def _checkpoint(cfg, model, optimizer, scheduler, scaler, step: int, best: dict[str, Any]) -> dict[str, Any]:
    return training_state(
        PACKAGE, cfg, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, step=step, best=best
    )


parse_args = script_parser(
    SegConfig, 'Train DeepLabv3-/PSPNet-EMO on ADE20K (or the synthetic set).', DEFAULT_SEG_CONFIG
)


def main(cfg: SegConfig, on_eval: IterHook | None = None) -> dict[str, Any]:
    """Train and evaluate; returns (and writes to ``metrics.json``) the final metrics.

    Args:
        cfg: the resolved config (its ``name`` names the run folder ``runs/emo/<name>/<time>``).
        on_eval: called as ``hook(step, row)`` after each evaluation's checkpoint is on disk.
    """
    return run_distributed(cfg, lambda ctx: _train(cfg, ctx, on_eval))


if __name__ == '__main__':
    main(parse_args())
