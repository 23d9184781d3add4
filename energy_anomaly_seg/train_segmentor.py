"""Train the DeepLabv3 segmentor that SLEEG freezes, on Cityscapes (mmseg's 40k-iteration recipe).

SLEEG starts from the authors' own DeepLabv3-R101-d8 (``load_from='./results/deeplabv3/iter_40000.pth'``, not
published). This script reproduces that recipe for users without it: ResNet-101-V1c (ImageNet ``resnet101_v1c``
initialisation via ``--backbone_pretrained``), ASPP 12/24/36, auxiliary FCN head (loss weight 0.4), crops 512x1024
from images rescaled by [0.5, 2.0] around 2048x1024, batch 8, SGD lr 0.01 momentum 0.9 wd 5e-4, poly power 0.9 to
min_lr 1e-4, 40k iterations; mIoU on Cityscapes val (single scale, whole image) at the end.

    torchrun --nproc_per_node=4 train_segmentor.py -c configs/segmentor_r101_40k.yaml --backbone_pretrained R101V1C

The resulting ``last.pt`` loads into SLEEG with ``--segmentor.checkpoint PATH`` (same keys as an mmseg file).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from energy_anomaly_seg.data import (
    IGNORE_INDEX,
    CityscapesSegmentation,
    InfiniteSeededSampler,
    SegTrainTransform,
    collate_segmentation,
    ensure_synthetic_data,
    normalize_image,
)
from energy_anomaly_seg.losses import segmentation_loss
from energy_anomaly_seg.mmseg_checkpoint import load_backbone_pretrained
from energy_anomaly_seg.model import SLEEG_VARIANTS, DeepLabV3, create_deeplabv3
from shared.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from shared.config import config_to_dict, parse_config, save_config
from shared.distributed import DistContext, cleanup_distributed, init_distributed, seed_everything, seed_worker
from shared.logger import RunLogger, make_run_dir
from shared.training import autocast, make_grad_scaler, optimizer_step, unwrap_model

__all__ = [
    "DataConfig",
    "ModelConfig",
    "SegOptimConfig",
    "SegmentorTrainConfig",
    "SyntheticConfig",
    "build_train_loader",
    "evaluate_segmentation",
    "main",
    "poly_lr",
    "resolve_cityscapes_root",
    "train_segmentor",
]

PACKAGE = "energy_anomaly_seg"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "segmentor_r101_40k.yaml"


@dataclass
class ModelConfig:
    variant: str = field(default="deeplabv3_r101_d8", metadata={"help": f"one of {sorted(SLEEG_VARIANTS)}"})
    num_classes: int = 19
    segmentor_dropout_in_train: bool = field(default=False, metadata={
        "help": "keep the frozen decode head's Dropout2d active while training the OoD head (released code)"})


@dataclass
class SyntheticConfig:
    """The embedded synthetic Cityscapes-format scenes (used when data.dataset is 'synthetic')."""

    root: str | None = field(default=None, metadata={"help": "cache folder (default shared synthetic root)"})
    height: int = 128
    width: int = 256
    n_train: int = 160
    n_val: int = 40
    n_anomaly: int = 24
    seed: int = 0


@dataclass
class DataConfig:
    dataset: str = field(default="cityscapes", metadata={"help": "'cityscapes' or 'synthetic'"})
    root: str = field(default="data/cityscapes", metadata={"help": "Cityscapes root (leftImg8bit/, gtFine/)"})
    split: str = "train"
    val_split: str = "val"
    img_scale: tuple[int, int] = field(default=(2048, 1024), metadata={"help": "(W, H) base scale, as mmseg"})
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] = field(default=(512, 1024), metadata={"help": "(H, W)"})
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    batch_size: int = field(default=8, metadata={"help": "total batch over all processes"})
    num_workers: int = 4


@dataclass
class SegOptimConfig:
    iters: int = 40000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    power: float = 0.9
    min_lr: float = 1e-4
    aux_weight: float = 0.4
    ce_average: str = field(default="all", metadata={"help": "'all' (mmseg 0.27) or 'valid' pixels"})


@dataclass
class SegmentorTrainConfig:
    output_dir: str | None = None
    resume: str | None = None
    seed: int = 0
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu' or 'cuda'"})
    amp: str = field(default="none", metadata={"help": "'none', 'bf16' or 'fp16'"})
    log_interval: int = 50
    ckpt_interval: int = 4000
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    backbone_pretrained: str | None = field(default=None, metadata={
        "help": "ImageNet ResNetV1c checkpoint (open-mmlab resnet101_v1c layout); required unless allow_random_init"})
    allow_random_init: bool = field(default=False, metadata={"help": "train from random init (no ImageNet weights)"})
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    optim: SegOptimConfig = field(default_factory=SegOptimConfig)


def resolve_cityscapes_root(data: DataConfig, synthetic: SyntheticConfig) -> Path:
    """The Cityscapes root, writing the synthetic scenes first when ``data.dataset == 'synthetic'``."""
    if data.dataset == "synthetic":
        return ensure_synthetic_data(synthetic.root, synthetic.height, synthetic.width, synthetic.n_train,
                                     synthetic.n_val, synthetic.n_anomaly, synthetic.seed)["cityscapes"]
    if data.dataset != "cityscapes":
        raise ValueError(f"data.dataset must be 'cityscapes' or 'synthetic', got {data.dataset!r}")
    return Path(data.root)


def build_train_loader(data: DataConfig, synthetic: SyntheticConfig, ctx: DistContext, seed: int,
                       start_iteration: int) -> Iterator[dict]:
    """An endless iterator of training batches; batch i is the same whether or not the run was resumed."""
    if data.batch_size % ctx.world_size:
        raise ValueError(f"data.batch_size {data.batch_size} is not divisible by the {ctx.world_size} processes")
    per_rank = data.batch_size // ctx.world_size
    transform = SegTrainTransform(tuple(data.img_scale), tuple(data.ratio_range), tuple(data.crop_size),
                                  data.cat_max_ratio, data.flip_prob, data.photometric)
    dataset = CityscapesSegmentation(resolve_cityscapes_root(data, synthetic), data.split, transform)
    sampler = InfiniteSeededSampler(len(dataset), seed, start=start_iteration * per_rank, rank=ctx.rank,
                                    world_size=ctx.world_size)
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=data.num_workers,
                        collate_fn=collate_segmentation, worker_init_fn=seed_worker, drop_last=True,
                        pin_memory=ctx.device.type == "cuda", persistent_workers=data.num_workers > 0)
    return iter(loader)


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
    return torch.optim.SGD(segmentor_parameters(model), lr=optim.lr, momentum=optim.momentum,
                           weight_decay=optim.weight_decay)


def train_segmentor(model: DeepLabV3, optim: SegOptimConfig, batches: Iterator[dict], optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, ctx: DistContext, logger: RunLogger, start_iteration: int = 0,
                    amp: str = "none", log_interval: int = 50, ckpt_interval: int = 4000,
                    save: Callable[[int], None] | None = None, log_prefix: str = "segmentor") -> None:
    """The iteration loop: poly lr, CE(decode) + aux_weight CE(aux), SGD; ``save(iteration)`` at checkpoints."""
    forward = _SegmentorForward(model)
    if ctx.distributed:
        forward = nn.parallel.DistributedDataParallel(forward, device_ids=[ctx.device] if ctx.device.type == "cuda"
                                                      else None)
    model.train()
    t0, seen = time.perf_counter(), 0
    for iteration in logger.progress(range(start_iteration, optim.iters), desc=log_prefix,
                                     total=optim.iters - start_iteration):
        lr = poly_lr(optim.lr, iteration, optim.iters, optim.power, optim.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = next(batches)
        images = batch["image"].to(ctx.device, non_blocking=True)
        labels = batch["label"].to(ctx.device, non_blocking=True)
        with autocast(ctx.device, amp):
            seg, aux = forward(images)
            losses = segmentation_loss(seg.float(), aux.float(), labels, optim.aux_weight, IGNORE_INDEX,
                                       optim.ce_average)
        optimizer_step(losses["loss"], optimizer, scaler, iteration, what=f"{log_prefix} loss")
        seen += images.shape[0] * ctx.world_size
        done = iteration + 1
        if done % log_interval == 0 or done == optim.iters:
            elapsed = time.perf_counter() - t0
            logger.log_epoch(done, {"phase": log_prefix, **{k: v.item() for k, v in losses.items()}, "lr": lr,
                                    "img_per_s": seen / max(elapsed, 1e-9)})
        if save is not None and (done % ckpt_interval == 0 or done == optim.iters):
            save(done)


@torch.no_grad()
def evaluate_segmentation(model: DeepLabV3, dataset: CityscapesSegmentation, device: torch.device,
                          num_classes: int = 19) -> dict[str, float]:
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
        confusion += torch.bincount(label[valid] * num_classes + pred[valid],
                                    minlength=num_classes**2).view(num_classes, num_classes)
    tp = confusion.diag().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - tp
    present = confusion.sum(1) > 0
    iou = tp / union.clamp(min=1)
    return {"mIoU": 100 * float(iou[present].mean()), "aAcc": 100 * float(tp.sum() / confusion.sum().clamp(min=1)),
            **{f"IoU_{c}": 100 * float(iou[c]) for c in range(num_classes) if present[c]}}


def main(argv: list[str] | None = None) -> dict[str, float]:
    cfg = parse_config(SegmentorTrainConfig, argv, description=__doc__.splitlines()[0],
                       default_config=DEFAULT_CONFIG)
    ctx = init_distributed(None if cfg.device == "auto" else cfg.device)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _run(cfg, ctx)
    finally:
        cleanup_distributed()


def _run(cfg: SegmentorTrainConfig, ctx: DistContext) -> dict[str, float]:
    out = Path(cfg.output_dir) if cfg.output_dir else make_run_dir(PACKAGE, "segmentor")
    logger = RunLogger(out, is_main=ctx.is_main, name="train_segmentor")
    if ctx.is_main:
        save_config(cfg, out / "config.yaml")
    seed_everything(cfg.seed, ctx.rank)
    model = create_deeplabv3(cfg.model.variant, cfg.model.num_classes)
    if cfg.backbone_pretrained:
        logger.info(f"backbone: {load_backbone_pretrained(model, cfg.backbone_pretrained)} tensors from "
                    f"{cfg.backbone_pretrained}")
    elif not cfg.allow_random_init:
        raise ValueError("the Cityscapes recipe starts from ImageNet weights: pass --backbone_pretrained PATH "
                         "(open-mmlab resnet101_v1c-e67eebb6.pth, https://download.openmmlab.com/pretrain/third_party/"
                         "resnet101_v1c-e67eebb6.pth) or --allow_random_init to train from scratch")
    else:
        logger.info("backbone: random initialisation (no ImageNet weights)")
    if ctx.distributed and ctx.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(ctx.device)
    optimizer = make_segmentor_optimizer(model, cfg.optim)
    scaler = make_grad_scaler(ctx.device, cfg.amp)
    state = load_checkpoint(cfg.resume, map_location=ctx.device) if cfg.resume else None
    start = int(state["iteration"]) if state is not None else 0
    batches = build_train_loader(cfg.data, cfg.synthetic, ctx, cfg.seed, start)  # before the RNG restore
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        logger.info(f"resumed from {cfg.resume} at iteration {start}")

    def save(iteration: int) -> None:
        if ctx.is_main:
            save_checkpoint({"phase": "segmentor", "iteration": iteration, "model": unwrap_model(model).state_dict(),
                             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                             "rng": capture_rng_state(), "config": config_to_dict(cfg)}, out / "last.pt")

    train_segmentor(model, cfg.optim, batches, optimizer, scaler, ctx, logger, start, cfg.amp, cfg.log_interval,
                    cfg.ckpt_interval, save)
    metrics: dict[str, float] = {}
    if ctx.is_main:
        val = CityscapesSegmentation(resolve_cityscapes_root(cfg.data, cfg.synthetic), cfg.data.val_split)
        metrics = evaluate_segmentation(unwrap_model(model), val, ctx.device, cfg.model.num_classes)
        logger.info(f"{cfg.data.val_split} mIoU {metrics['mIoU']:.2f}  aAcc {metrics['aAcc']:.2f}")
        logger.write_metrics(metrics)
    logger.close()
    return metrics


if __name__ == "__main__":
    main()
