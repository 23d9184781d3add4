"""Train the DeepLabv3 segmentor that SLEEG freezes, on Cityscapes (mmseg's 40k-iteration recipe).

    python train_segmentor.py [-c configs/segmentor_r101_40k.yaml] [--key value ...]
    torchrun --nproc_per_node=4 train_segmentor.py -c configs/segmentor_r101_40k.yaml --backbone_pretrained R101V1C

SLEEG starts from the authors' own DeepLabv3-R101-d8 (``load_from='./results/deeplabv3/iter_40000.pth'``, not
published). This script reproduces that recipe for users without it: ResNet-101-V1c (ImageNet ``resnet101_v1c``
initialisation via ``--backbone_pretrained``), ASPP 12/24/36, auxiliary FCN head (loss weight 0.4), crops 512x1024
from images rescaled by [0.5, 2.0] around 2048x1024, batch 8, SGD lr 0.01 momentum 0.9 wd 5e-4, poly power 0.9 to
min_lr 1e-4, 40k iterations; mIoU on Cityscapes val (single scale, whole image) at the end. ``train.py`` runs the same
loop (:func:`train_steps`) as its first phase when it trains the segmentor itself (the embedded default).

The resulting ``last.pt`` loads into SLEEG with ``--segmentor.checkpoint PATH`` (same keys as an mmseg file);
``--resume <run>/last.pt`` continues a run (intervals count iterations).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from energy_anomaly_seg.config import CONFIG_DIR, PACKAGE, SegmentorTrainConfig, SegOptimConfig
from energy_anomaly_seg.data import (
    IGNORE_INDEX,
    CityscapesSegmentation,
    build_train_loader,
    normalize_image,
    resolve_cityscapes_root,
)
from energy_anomaly_seg.losses import segmentation_loss
from energy_anomaly_seg.mmseg_checkpoint import load_backbone_pretrained
from energy_anomaly_seg.model import DeepLabV3, create_deeplabv3
from shared.checkpoint import (
    check_resume_state,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from shared.config import RunConfig, config_to_dict, save_config, script_parser
from shared.distributed import DistContext, cleanup_distributed, init_distributed, seed_everything
from shared.logger import RunLogger, claim_run_dir, resolve_run_dir
from shared.training import autocast, check_finite_parameters, make_grad_scaler, optimizer_step, unwrap_model

__all__ = [
    "RESUME_KEYS",
    "SegmentorTrainConfig",
    "evaluate",
    "main",
    "make_segmentor_optimizer",
    "parse_args",
    "poly_lr",
    "read_resume_state",
    "train_steps",
]

DEFAULT_CONFIG = CONFIG_DIR / "segmentor_r101_40k.yaml"
#: What a resumable segmentor-phase checkpoint holds (train.py's ood_head phase adds "pool" and "generator").
RESUME_KEYS = ("phase", "iteration", "model", "optimizer", "scaler", "rng")


def read_resume_state(
    path: str | Path, map_location: str | torch.device = "cpu", required: Sequence[str] = RESUME_KEYS
) -> dict[str, Any]:
    """The checkpoint to resume from, read and checked before anything is written (``CheckpointError`` otherwise)."""
    return load_checkpoint(path, map_location=map_location, package=PACKAGE, required=required)


def poly_lr(base_lr: float, iteration: int, max_iters: int, power: float = 0.9, min_lr: float = 1e-4) -> float:
    """mmcv's iteration-based poly schedule: (base - min) * (1 - it / max)^power + min."""
    return (base_lr - min_lr) * (1 - iteration / max_iters) ** power + min_lr


class _SegmentorForward(nn.Module):
    """decode + auxiliary logits through ``forward`` (what DDP wraps)."""

    def __init__(self, model: DeepLabV3):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(x)
        return self.model.forward_head(feats), self.model.forward_aux(feats)


def segmentor_parameters(model: DeepLabV3) -> list[nn.Parameter]:
    return [p for name in ("backbone", "decode_head", "auxiliary_head") for p in getattr(model, name).parameters()]


def make_segmentor_optimizer(model: DeepLabV3, optim: SegOptimConfig) -> torch.optim.SGD:
    return torch.optim.SGD(
        segmentor_parameters(model), lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
    )


def is_due(done: int, interval: int, last: int) -> bool:
    """True every `interval` iterations (0: never) and at the last iteration."""
    return (interval > 0 and done % interval == 0) or done == last


def train_steps(
    model: DeepLabV3,
    batches: Iterator[dict],
    *,
    optim: SegOptimConfig,
    run: RunConfig,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    ctx: DistContext,
    logger: RunLogger,
    start_iteration: int = 0,
    save: Callable[[int], None] | None = None,
    log_prefix: str = "segmentor",
) -> None:
    """Iterations ``start_iteration .. optim.iters``: poly lr, CE(decode) + aux_weight CE(aux), SGD.

    ``run`` gives ``amp``, ``log_interval`` and ``checkpoint_interval`` (in iterations); ``save(iteration)`` is
    called at the checkpoints, after the segmentor's parameters and BatchNorm statistics were checked to be finite.
    """
    forward = _SegmentorForward(model)
    if ctx.distributed:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[ctx.device] if ctx.device.type == "cuda" else None
        )
    model.train()
    t0, seen = time.perf_counter(), 0
    for iteration in logger.progress(
        range(start_iteration, optim.iters), desc=log_prefix, total=optim.iters - start_iteration
    ):
        lr = poly_lr(optim.lr, iteration, optim.iters, optim.power, optim.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = next(batches)
        images = batch["image"].to(ctx.device, non_blocking=True)
        labels = batch["label"].to(ctx.device, non_blocking=True)
        with autocast(ctx.device, run.amp):
            seg, aux = forward(images)
            losses = segmentation_loss(
                seg.float(), aux.float(), labels, optim.aux_weight, IGNORE_INDEX, optim.ce_average
            )
        optimizer_step(losses["loss"], optimizer, scaler, iteration, what=f"{log_prefix} loss")
        seen += images.shape[0] * ctx.world_size
        done = iteration + 1
        if is_due(done, run.log_interval, optim.iters):
            elapsed = time.perf_counter() - t0
            logger.log_epoch(
                done,
                {
                    "phase": log_prefix,
                    **{k: v.item() for k, v in losses.items()},
                    "lr": lr,
                    "img_per_s": seen / max(elapsed, 1e-9),
                },
            )
        if save is not None and is_due(done, run.checkpoint_interval, optim.iters):
            check_finite_parameters(unwrap_model(model), iteration, log_prefix)  # BN statistics included
            save(done)


@torch.no_grad()
def evaluate(
    model: DeepLabV3, dataset: CityscapesSegmentation, device: torch.device, num_classes: int = 19
) -> dict[str, float]:
    """Single-scale whole-image mIoU / pixel accuracy (percent) over the classes present in the ground truth."""
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for i in range(len(dataset)):
        item = dataset[i]
        x = normalize_image(item["image"].to(device))[None]
        logits = model.forward_head(model.forward_features(x))
        pred = F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False).argmax(1)[0].cpu()
        label = item["label"]
        valid = label != IGNORE_INDEX
        confusion += torch.bincount(label[valid] * num_classes + pred[valid], minlength=num_classes**2).view(
            num_classes, num_classes
        )
    tp = confusion.diag().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - tp
    present = confusion.sum(1) > 0
    iou = tp / union.clamp(min=1)
    return {
        "mIoU": 100 * float(iou[present].mean()),
        "aAcc": 100 * float(tp.sum() / confusion.sum().clamp(min=1)),
        **{f"IoU_{c}": 100 * float(iou[c]) for c in range(num_classes) if present[c]},
    }


# DEFAULT_CONFIG sets ``name: segmentor_r101_40k``: a run without -c is named after the recipe it runs, not 'default'
parse_args = script_parser(SegmentorTrainConfig, __doc__.splitlines()[0], DEFAULT_CONFIG)


def _initialise_backbone(model: DeepLabV3, cfg: SegmentorTrainConfig, logger: RunLogger) -> None:
    if cfg.backbone_pretrained:
        logger.info(
            f"backbone: {load_backbone_pretrained(model, cfg.backbone_pretrained)} tensors from "
            f"{cfg.backbone_pretrained}"
        )
    elif not cfg.allow_random_init:
        raise ValueError(
            "the Cityscapes recipe starts from ImageNet weights: pass --backbone_pretrained PATH "
            "(open-mmlab resnet101_v1c-e67eebb6.pth, https://download.openmmlab.com/pretrain/third_party/"
            "resnet101_v1c-e67eebb6.pth) or --allow_random_init to train from scratch"
        )
    else:
        logger.info("backbone: random initialisation (no ImageNet weights)")


def main(cfg: SegmentorTrainConfig) -> dict[str, float]:
    """Train the segmentor, evaluate it on ``data.val_split``; returns (and writes) the metrics."""
    if cfg.eval_interval:
        raise ValueError(
            f"eval_interval {cfg.eval_interval}: train_segmentor.py evaluates once, at the end (set eval_interval 0)"
        )
    ctx = init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        state = check_resume_state(cfg, read_resume_state(cfg.resume, map_location=ctx.device)) if cfg.resume else None
        return _run(cfg, ctx, state)
    finally:
        cleanup_distributed()


def _run(cfg: SegmentorTrainConfig, ctx: DistContext, state: dict[str, Any] | None) -> dict[str, float]:
    out = resolve_run_dir(PACKAGE, cfg.name, cfg.output_dir, cfg.resume)
    claim_run_dir(out, PACKAGE, config_to_dict(cfg), resume=state is not None, is_main=ctx.is_main)
    logger = RunLogger(out, is_main=ctx.is_main, tensorboard=cfg.tensorboard, name="train_segmentor")
    if ctx.is_main:
        save_config(cfg, out / "config.yaml")
    seed_everything(cfg.seed, ctx.rank)
    model = create_deeplabv3(cfg.model.variant, num_classes=cfg.model.num_classes)
    _initialise_backbone(model, cfg, logger)
    if ctx.distributed and ctx.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(ctx.device)
    optimizer = make_segmentor_optimizer(model, cfg.optim)
    scaler = make_grad_scaler(ctx.device, cfg.amp)
    start = int(state["iteration"]) if state is not None else 0
    batches = build_train_loader(cfg.data, cfg.synthetic, ctx, cfg.seed, start)  # before the RNG restore
    if state is not None:
        restore_training_state(state, model=model, optimizer=optimizer, scaler=scaler)
        logger.info(f"resumed from {cfg.resume} at iteration {start}")

    def save(iteration: int) -> None:
        if ctx.is_main:
            save_checkpoint(
                training_state(
                    PACKAGE,
                    cfg,
                    phase="segmentor",
                    iteration=iteration,
                    model=model,
                    optimizer=optimizer,
                    scaler=scaler,
                ),
                out / "last.pt",
            )

    train_steps(
        model,
        batches,
        optim=cfg.optim,
        run=cfg,
        optimizer=optimizer,
        scaler=scaler,
        ctx=ctx,
        logger=logger,
        start_iteration=start,
        save=save,
    )
    metrics: dict[str, float] = {}
    if ctx.is_main:
        val = CityscapesSegmentation(resolve_cityscapes_root(cfg.data, cfg.synthetic), cfg.data.val_split)
        metrics = evaluate(unwrap_model(model), val, ctx.device, cfg.model.num_classes)
        logger.info(f"{cfg.data.val_split} mIoU {metrics['mIoU']:.2f}  aAcc {metrics['aAcc']:.2f}")
        logger.write_metrics(metrics)
    logger.close()
    return metrics


if __name__ == "__main__":
    main(parse_args())
