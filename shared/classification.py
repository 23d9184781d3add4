"""The supervised image-classification loop the backbone papers (emo, pvg) share.

A timm-registered model trained on an ImageFolder tree (ImageNet's `train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`
layout, or the embedded synthetic set in the same layout) with the timm-style recipe: AdamW (or SGD) with the
linear lr scaling rule, per-step warm-up + cosine schedule, label smoothing, RandAugment, optional Mixup/CutMix,
EMA of the weights, gradient clipping, AMP. Evaluates the raw and the EMA model (top-1/top-5) every epoch.

Runs the same in one process and under `torchrun` (DDP, nccl on CUDA, gloo on CPU). Checkpoints hold the whole
training state, so `resume` continues exactly where a killed run stopped (bit-identical on CPU).

A package uses it as::

    @dataclass
    class Config(ClassificationConfig):     # may override defaults / add fields
        model: str = "emo_1m"

    metrics = run_classification(parse_config(Config, default_config=...), package="emo")
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from timm.data.distributed_sampler import RepeatAugSampler
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.datasets import ImageFolder

from shared.augment import allow_zero_bit_posterize
from shared.checkpoint import (
    load_checkpoint,
    load_resume_state,
    load_weights_file,
    restore_training_state,
    save_last_and_best,
    training_state,
)
from shared.config import RunConfig, config_to_dict, save_config
from shared.distributed import (
    DistContext,
    all_reduce_mean,
    broadcast_module,
    cleanup_distributed,
    init_distributed,
    loader_seed,
    seed_everything,
    seed_worker,
)
from shared.logger import RunLogger, claim_run_dir, resolve_run_dir
from shared.metrics import topk_accuracy
from shared.training import (
    AmpDtype,
    ModelEmaV3,
    autocast,
    make_grad_scaler,
    optimizer_step,
    show_progress,
    warmup_cosine_schedule,
)
from shared.weights import strip_wrapper_prefixes

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClassificationConfig",
    "DataConfig",
    "EpochHook",
    "build_classification_model",
    "build_loaders",
    "evaluate",
    "evaluate_checkpoint",
    "evaluate_weight_sets",
    "run_classification",
    "train_one_epoch",
]

IMAGENET_MEAN: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN  # timm's constants, the torchvision values
IMAGENET_STD: tuple[float, float, float] = IMAGENET_DEFAULT_STD


@dataclass
class DataConfig:
    """Where the images are and how they are augmented."""

    root: str = field(default="", metadata={"help": "ImageFolder root holding <train_split>/ and <val_split>/"})
    train_split: str = "train"
    val_split: str = "val"
    synthetic: bool = field(default=False, metadata={"help": "write/use the embedded synthetic ImageFolder set"})
    synthetic_classes: int = 10
    synthetic_train_per_class: int = 64
    synthetic_val_per_class: int = 16
    synthetic_image_size: int = 64
    img_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    train_interpolation: str = "random"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    color_jitter: float = 0.4
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    re_prob: float = field(default=0.0, metadata={"help": "random erasing probability (timm --reprob)"})
    re_mode: Literal["const", "rand", "pixel"] = field(
        default="pixel",
        metadata={"help": "random erasing fill (timm --remode; the timm/DeiT recipes' 'pixel': per-pixel normal)"},
    )
    batch_size: int = field(default=256, metadata={"help": "images per process"})
    repeated_aug: bool = field(
        default=False,
        metadata={
            "help": "DeiT/timm repeated augmentation: every image 3 times per epoch, the copies spread over the "
            "ranks, each rank drawing len(train)/world_size of them (timm RepeatAugSampler, seeded by seed + epoch)"
        },
    )
    eval_batch_size: int = 256
    workers: int = 8


@dataclass
class ClassificationConfig(RunConfig):
    """The recipe of a supervised classification run (defaults: the timm/EMO-style ImageNet recipe); the run-level
    settings (``output_dir``, ``resume``, ``seed``, ``device``, ``amp``, ``threads``, intervals in epochs) come
    from :class:`shared.config.RunConfig`."""

    #: what a ``--resume`` may not change (``RunConfig.RESUME_SECTIONS``): the network
    RESUME_SECTIONS: ClassVar[tuple[str, ...]] = ("model", "num_classes", "drop_path")

    model: str = field(default="", metadata={"help": "timm model name"})
    pretrained: str | None = field(default=None, metadata={"help": "local checkpoint file to initialise from"})
    num_classes: int | None = field(default=None, metadata={"help": "default: number of class folders"})
    drop_path: float = 0.0
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = field(default=300, metadata={"help": "epochs of the warm-up + cosine schedule"})
    cooldown_epochs: int = field(
        default=0, metadata={"help": "epochs at min_lr after the cosine (timm); the run lasts epochs + cooldown_epochs"}
    )
    warmup_epochs: int = 20
    opt: str = "adamw"
    lr: float = 6e-3
    lr_base_batch: int = field(default=2048, metadata={"help": "lr is given for this global batch; scaled linearly"})
    min_lr: float = 1e-6
    warmup_lr: float = 1e-6
    warmup_prefix: bool = field(
        default=True,
        metadata={
            "help": "cosine starts after the warm-up (true) or runs over the whole run from step 0 "
            "(false, timm default)"
        },
    )
    lr_noise: tuple[float, float] | None = field(
        default=None,
        metadata={"help": "timm lr_noise: (start, end) fractions of the run with a noisy lr multiplier; null: none"},
    )
    lr_noise_pct: float = 0.67
    lr_noise_std: float = 1.0
    lr_noise_seed: int = 42
    weight_decay: float = 0.05
    momentum: float = 0.9
    opt_betas: tuple[float, float] = (0.9, 0.999)
    opt_eps: float = 1e-8
    clip_grad: float | None = 5.0
    smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    ema_decay: float | None = field(default=0.9998, metadata={"help": "per-step EMA decay; null disables EMA"})
    channels_last: bool = False
    compile: bool = False
    eval_interval: int = field(default=1, metadata={"help": "evaluate every N epochs (and after the last)"})


EpochHook = Callable[[int, dict[str, Any]], None]


def _ensure_synthetic(cfg: DataConfig) -> str:
    from shared.synthetic import synthetic_root, write_imagefolder

    root = synthetic_root() / (
        f"imagefolder_c{cfg.synthetic_classes}_n{cfg.synthetic_train_per_class}"
        f"_v{cfg.synthetic_val_per_class}_s{cfg.synthetic_image_size}"
    )
    write_imagefolder(
        root,
        num_classes=cfg.synthetic_classes,
        train_per_class=cfg.synthetic_train_per_class,
        val_per_class=cfg.synthetic_val_per_class,
        image_size=cfg.synthetic_image_size,
        seed=0,
    )
    return str(root)


def _image_folder(root: Path, split: str, transform: Callable) -> ImageFolder:
    path = root / split
    if not path.is_dir():
        raise FileNotFoundError(
            f"image folder not found: {path}. Expected the ImageNet layout {root}/{split}/<class>/<image> "
            "(see `python -m shared.datasets info imagenet1k`), or set data.synthetic=true for the embedded set."
        )
    return _NamedErrorImageFolder(str(path), transform=transform)


class _NamedErrorImageFolder(ImageFolder):
    """`ImageFolder` whose error for an unreadable or corrupt image names the file."""

    def __getitem__(self, index: int) -> tuple[Any, int]:
        try:
            return super().__getitem__(index)
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises these for truncated or foreign files
            raise OSError(f"cannot read image {self.samples[index][0]}: {err}") from err


class _SeededRepeatAugSampler(RepeatAugSampler):
    """timm's RepeatAugSampler with the order a function of (seed, epoch), as DistributedSampler's."""

    def __init__(self, dataset: Any, seed: int, **kwargs: Any):
        super().__init__(dataset, **kwargs)
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(self.seed + epoch)


def build_loaders(cfg: DataConfig, ctx: DistContext, seed: int) -> tuple[DataLoader, DataLoader, int]:
    """Train and val loaders sharded over the ranks; returns (train, val, number of classes)."""
    root = Path(_ensure_synthetic(cfg) if cfg.synthetic else cfg.root)
    allow_zero_bit_posterize()  # rand-m9-mstd0.5-inc1 posterizes to 0 bits, which current Pillow rejects
    train_tf = create_transform(
        cfg.img_size,
        is_training=True,
        scale=cfg.scale,
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
        auto_augment=cfg.auto_augment,
        interpolation=cfg.train_interpolation,
        mean=cfg.mean,
        std=cfg.std,
        re_prob=cfg.re_prob,
        re_mode=cfg.re_mode,
    )
    val_tf = create_transform(
        cfg.img_size,
        is_training=False,
        interpolation=cfg.interpolation,
        mean=cfg.mean,
        std=cfg.std,
        crop_pct=cfg.crop_pct,
    )
    train_set = _image_folder(root, cfg.train_split, train_tf)
    val_set = _image_folder(root, cfg.val_split, val_tf)
    if train_set.classes != val_set.classes:
        raise ValueError(f"class folders differ between {root / cfg.train_split} and {root / cfg.val_split}")
    # An explicit DistributedSampler (also with one process) makes the order a function of (seed, epoch) only,
    # which is what an exact resume needs.
    if cfg.repeated_aug:
        train_sampler = _SeededRepeatAugSampler(train_set, seed, num_replicas=ctx.world_size, rank=ctx.rank)
    else:
        train_sampler = DistributedSampler(
            train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True
        )
    val_sampler = DistributedSampler(val_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False)
    common = dict(
        num_workers=cfg.workers,
        pin_memory=ctx.device.type == "cuda",
        worker_init_fn=seed_worker,
        persistent_workers=False,
    )
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=train_sampler,
        drop_last=True,
        generator=torch.Generator(),
        **common,
    )
    val_loader = DataLoader(val_set, batch_size=cfg.eval_batch_size, sampler=val_sampler, **common)
    if len(train_loader) == 0:
        raise ValueError(
            f"batch_size {cfg.batch_size} x {ctx.world_size} processes exceeds the "
            f"{len(train_set)} training images in {root / cfg.train_split}"
        )
    return train_loader, val_loader, len(train_set.classes)


#: Where trainer checkpoints keep their weights: the EMA entries first (the official EMO trainer's ``net_E``, timm's
#: ``state_dict_ema`` / ``model_ema``, this repository's ``ema``), then the raw ones.
_WRAPPERS = ("net_E", "state_dict_ema", "model_ema", "ema", "net", "state_dict", "model")


def _pretrained_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside a weights file: a plain state dict or a trainer checkpoint (EMA weights preferred
    whenever the file has them), with ``module.`` / ``_orig_mod.`` prefixes removed."""
    state = load_weights_file(path, "pretrained weights file")  # timm's train.py stores its argparse options too
    for key in _WRAPPERS:
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    return {strip_wrapper_prefixes(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _file_num_classes(model_name: str, state: dict[str, torch.Tensor]) -> int | None:
    """The class count of the classifier in ``state`` (None when the file has none under the model's name)."""
    pretrained_cfg = timm.models.get_pretrained_cfg(model_name)
    classifier = getattr(pretrained_cfg, "classifier", None)
    head = classifier if isinstance(classifier, str) else (classifier or [None])[0]
    weight = state.get(f"{head}.weight") if head else None
    return int(weight.shape[0]) if weight is not None and weight.ndim >= 1 else None


def check_pretrained_loaded(model: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Verify that `model` holds the weights of `path` for every key except its classifier.

    timm's loader turns non-strict when the class count differs from the file's, so a file of another model
    would "load" nothing without an error; this check makes that a failure.

    Returns:
        (loaded keys, keys of the classifier left at their initialisation).

    Raises:
        ValueError: naming the keys that are missing from the file, have another shape, or were not loaded.
    """
    classifier = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    file_state = _pretrained_weights(path)
    loaded, skipped, missing, wrong_shape, not_loaded = [], [], [], [], []
    for key, tensor in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        is_head = any(key == h or key.startswith(h + ".") for h in heads)
        source = file_state.get(key)
        if source is None or source.shape != tensor.shape:
            if is_head:
                skipped.append(key)
            elif source is None:
                missing.append(key)
            else:
                wrong_shape.append(f"{key} {tuple(source.shape)} vs {tuple(tensor.shape)}")
        elif not torch.equal(source.to(tensor.device, tensor.dtype), tensor):
            not_loaded.append(key)
        else:
            loaded.append(key)
    problems = [
        f"{len(v)} {what}: {', '.join(v[:5])}{' ...' if len(v) > 5 else ''}"
        for what, v in (
            ("keys missing from the file", missing),
            ("keys with another shape", wrong_shape),
            ("keys not loaded", not_loaded),
        )
        if v
    ]
    if problems:
        raise ValueError(
            f"pretrained file {path} does not fit the model ({'; '.join(problems)}). Only the "
            f"classifier ({', '.join(heads) or 'none declared'}) may be replaced; check the file "
            "and the model name."
        )
    return loaded, skipped


def build_classification_model(
    cfg: ClassificationConfig, num_classes: int, log: Callable[[str], None] | None = None
) -> nn.Module:
    """`timm.create_model(cfg.model)`, initialised from `cfg.pretrained` (a local file) when given.

    The pretrained file must provide every weight of the model except the classifier (which is replaced when the
    class count differs): :func:`check_pretrained_loaded`. The loaded and replaced keys go to `log`.
    """
    kwargs: dict[str, Any] = dict(num_classes=num_classes, drop_path_rate=cfg.drop_path)
    if cfg.pretrained:
        if not Path(cfg.pretrained).is_file():
            raise FileNotFoundError(f"pretrained checkpoint not found: {cfg.pretrained}")
        # the weights this file holds (EMA preferred), handed to timm, which applies the model's filter and keeps
        # the file's classifier when its class count is the run's (the overlay's num_classes is the file's)
        state = _pretrained_weights(cfg.pretrained)
        overlay: dict[str, Any] = dict(state_dict=state)
        file_classes = _file_num_classes(cfg.model, state)
        if file_classes is not None:
            overlay["num_classes"] = file_classes
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    model = timm.create_model(cfg.model, **kwargs)
    if cfg.pretrained:
        # timm keeps the overlay in model.pretrained_cfg: drop the weights, or every copy of the model (the EMA)
        # would carry a second set of them
        getattr(model, "pretrained_cfg", {}).pop("state_dict", None)
        loaded, replaced = check_pretrained_loaded(model, cfg.pretrained)
        if log is not None:
            log(
                f"{cfg.model}: loaded {len(loaded)} tensors from {cfg.pretrained}; classifier left at its "
                f"initialisation: {', '.join(replaced) or 'none'}"
            )
    return model


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: nn.Module,
    ctx: DistContext,
    epoch: int,
    step: int,
    cfg: ClassificationConfig,
    logger: RunLogger,
    scaler: torch.amp.GradScaler,
    ema: ModelEmaV3 | None = None,
    mixup: Mixup | None = None,
) -> tuple[dict[str, float], int]:
    """One pass over `loader`; returns (epoch statistics, global step after the epoch)."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    seen = 0
    t0 = time.perf_counter()
    bar = logger.progress(loader, desc=f"epoch {epoch}", total=len(loader))
    for images, targets in bar:
        images = images.to(ctx.device, non_blocking=True)
        targets = targets.to(ctx.device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if mixup is not None:
            images, targets = mixup(images, targets)
        with autocast(ctx.device, cfg.amp):
            loss = criterion(model(images), targets)
        optimizer_step(loss, optimizer, scaler, step, cfg.clip_grad, model.parameters())
        scheduler.step()
        if ema is not None:
            ema.update(model, step=step)
        step += 1
        loss_sum += loss.detach().double() * images.shape[0]
        seen += images.shape[0]
        if step % cfg.log_interval == 0:
            lr = optimizer.param_groups[0]["lr"]
            logger.scalars({"loss": loss.item(), "lr": lr}, step, prefix="train/")
            show_progress(bar, loss.item(), lr, seen, ctx.world_size, t0)
    elapsed = time.perf_counter() - t0
    stats = {
        "train_loss": all_reduce_mean(loss_sum / max(seen, 1)),
        "lr": optimizer.param_groups[0]["lr"],
        "train_img_s": seen * ctx.world_size / elapsed,
        "epoch_time_s": elapsed,
    }
    return stats, step


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, ctx: DistContext, amp: AmpDtype = "off", channels_last: bool = False
) -> dict[str, float]:
    """Top-1/top-5 accuracy (percent) and mean cross-entropy over the whole (sharded) loader."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # loss sum, top1 hits, top5 hits, count
    for images, targets in loader:
        images = images.to(ctx.device, non_blocking=True)
        targets = targets.to(ctx.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(ctx.device, amp):
            logits = model(images)
        n = images.shape[0]
        top1, top5 = topk_accuracy(logits.float(), targets, topk=(1, 5))
        totals += torch.tensor(
            [F.cross_entropy(logits.float(), targets, reduction="sum").item(), top1 * n / 100, top5 * n / 100, n],
            dtype=torch.float64,
            device=ctx.device,
        )
    if ctx.distributed:
        torch.distributed.all_reduce(totals)
    loss_sum, hit1, hit5, count = totals.tolist()
    # DistributedSampler pads the last shard by repeating samples; with many samples per rank the effect is
    # at most world_size-1 images, the same convention as timm and torchvision references.
    return {"top1": 100 * hit1 / count, "top5": 100 * hit5 / count, "loss": loss_sum / count}


_STATE_KEYS = ("model", "optimizer", "scheduler", "scaler", "ema", "epoch", "step", "best", "rng")


def run_classification(
    cfg: ClassificationConfig, package: str, on_epoch_end: EpochHook | None = None
) -> dict[str, Any]:
    """Train and evaluate; returns (and writes to `metrics.json`) the final metrics.

    Args:
        cfg: the resolved config (its ``name`` names the run folder ``runs/<package>/<name>/<time>``).
        package: name of the calling package (run folder, checkpoint owner).
        on_epoch_end: called as `hook(epoch, row)` after each epoch's checkpoint is on disk.
    """
    if not cfg.model:
        raise ValueError("config key 'model' is empty: name a timm model, e.g. emo_1m")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = init_distributed(cfg.device)
    try:
        return _run(cfg, ctx, package, on_epoch_end)
    finally:
        cleanup_distributed()


@dataclass
class _Training:
    """Everything one classification run updates."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    mixup: Mixup | None
    criterion: nn.Module


def _criterion(cfg: ClassificationConfig, num_classes: int) -> tuple[Mixup | None, nn.Module]:
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            prob=cfg.mixup_prob,
            label_smoothing=cfg.smoothing,
            num_classes=num_classes,
        )
        return mixup, SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(cfg.smoothing)
    return None, nn.CrossEntropyLoss()


def _build_training(
    cfg: ClassificationConfig, ctx: DistContext, num_classes: int, steps_per_epoch: int, logger: RunLogger
) -> _Training:
    model = build_classification_model(cfg, num_classes, logger.info).to(ctx.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    global_batch = cfg.data.batch_size * ctx.world_size
    lr = cfg.lr * global_batch / cfg.lr_base_batch
    optimizer = create_optimizer_v2(
        model,
        opt=cfg.opt,
        lr=lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        **(dict(betas=cfg.opt_betas, eps=cfg.opt_eps) if "adam" in cfg.opt else {}),
    )
    scheduler = warmup_cosine_schedule(
        optimizer,
        cfg.epochs * steps_per_epoch,
        cfg.warmup_epochs * steps_per_epoch,
        min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr,
        warmup_prefix=cfg.warmup_prefix,
        noise_range=cfg.lr_noise,
        noise_pct=cfg.lr_noise_pct,
        noise_std=cfg.lr_noise_std,
        noise_seed=cfg.lr_noise_seed,
    )
    # every rank starts from rank 0's weights before the EMA copies them (DDP would sync the model only later, at
    # its construction, and the EMA never: the ranks seed differently, so their random initialisations differ)
    broadcast_module(model)
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay is not None else None
    mixup, criterion = _criterion(cfg, num_classes)
    logger.info(
        f"{cfg.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.3f} M parameters, "
        f"{num_classes} classes, global batch {global_batch}, lr {lr:.3g}, {steps_per_epoch} steps/epoch"
    )
    return _Training(model, optimizer, scheduler, make_grad_scaler(ctx.device, cfg.amp), ema, mixup, criterion)


def _evaluate_row(
    t: _Training, val_loader: DataLoader, ctx: DistContext, cfg: ClassificationConfig
) -> dict[str, float]:
    row = evaluate(t.model, val_loader, ctx, cfg.amp, cfg.channels_last)
    if t.ema is not None:
        row.update(
            {f"ema_{k}": v for k, v in evaluate(t.ema.module, val_loader, ctx, cfg.amp, cfg.channels_last).items()}
        )
    return row


def _run(cfg: ClassificationConfig, ctx: DistContext, package: str, on_epoch_end: EpochHook | None) -> dict[str, Any]:
    seed_everything(cfg.seed, ctx.rank)
    resume_state = load_resume_state(cfg, package, required=_STATE_KEYS)
    out_dir = resolve_run_dir(package, cfg.name or "default", cfg.output_dir, cfg.resume)
    claim_run_dir(out_dir, package, config_to_dict(cfg), resume=resume_state is not None, is_main=ctx.is_main)
    logger = RunLogger(out_dir, is_main=ctx.is_main, tensorboard=cfg.tensorboard)
    if ctx.is_main:
        save_config(cfg, out_dir / "config.yaml")
    logger.info(f"run folder {out_dir} | {ctx.world_size} process(es) on {ctx.device}")

    train_loader, val_loader, found_classes = build_loaders(cfg.data, ctx, cfg.seed)
    t = _build_training(cfg, ctx, cfg.num_classes or found_classes, len(train_loader), logger)
    if not cfg.pretrained and resume_state is None:
        logger.info(f"{cfg.model}: random initialisation (no pretrained file given)")

    start_epoch, step, best = 0, 0, {"top1": -math.inf, "epoch": -1}
    if resume_state is not None:
        restore_training_state(
            resume_state,
            model=t.model,
            optimizer=t.optimizer,
            scheduler=t.scheduler,
            scaler=t.scaler,
            ema=t.ema.module if t.ema is not None else None,
        )
        start_epoch, step, best = resume_state["epoch"] + 1, resume_state["step"], resume_state["best"]
        logger.info(f"resumed from {cfg.resume} at epoch {start_epoch}, step {step}")

    train_model: nn.Module = t.model
    if ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            t.model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None
        )
    if cfg.compile:
        train_model = torch.compile(train_model)

    row: dict[str, Any] = {}
    total_epochs = cfg.epochs + cfg.cooldown_epochs  # the schedule stays at min_lr after cfg.epochs
    for epoch in range(start_epoch, total_epochs):
        train_loader.sampler.set_epoch(epoch)
        # worker seeds: a function of the epoch and the rank
        train_loader.generator.manual_seed(loader_seed(cfg.seed * 100_003 + epoch, ctx.rank))
        stats, step = train_one_epoch(
            train_model,
            train_loader,
            t.optimizer,
            t.scheduler,
            t.criterion,
            ctx,
            epoch,
            step,
            cfg,
            logger,
            t.scaler,
            t.ema,
            t.mixup,
        )
        last = epoch == total_epochs - 1
        is_best = False
        row = dict(stats)
        if last or (cfg.eval_interval and (epoch + 1) % cfg.eval_interval == 0):
            row.update(_evaluate_row(t, val_loader, ctx, cfg))
            score = row["ema_top1"] if t.ema is not None else row["top1"]
            is_best = score > best["top1"]
            if is_best:
                best = {"top1": score, "epoch": epoch}
        if ctx.is_main and (
            last or is_best or (cfg.checkpoint_interval and (epoch + 1) % cfg.checkpoint_interval == 0)
        ):
            state = training_state(
                package,
                cfg,
                model=t.model,
                optimizer=t.optimizer,
                scheduler=t.scheduler,
                scaler=t.scaler,
                ema=t.ema.module if t.ema is not None else None,
                epoch=epoch,
                step=step,
                best=best,
            )
            save_last_and_best(state, out_dir, is_best)
        logger.log_epoch(epoch, row)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    metrics = {
        "model": cfg.model,
        "epochs": total_epochs,
        "last": {k: v for k, v in row.items() if "top" in k or "loss" in k},
        "best_top1": best["top1"],
        "best_epoch": best["epoch"],
        "evaluated": "ema" if t.ema is not None else "raw",
        "run_dir": str(out_dir),
    }
    logger.write_metrics(metrics)
    logger.info(f"done: best top-1 {best['top1']:.2f} at epoch {best['epoch']} ({metrics['evaluated']} weights)")
    logger.close()
    return metrics


def evaluate_checkpoint(
    cfg: ClassificationConfig, checkpoint: str | Path, package: str, use_ema: bool = True
) -> dict[str, Any]:
    """Evaluate a training checkpoint (`last.pt`/`best.pt`; EMA weights when present and `use_ema`) or a plain
    state_dict (e.g. published weights) on the validation split; writes `metrics.json` into `cfg.output_dir`,
    by default `<checkpoint folder>/eval/`."""
    ctx = init_distributed(cfg.device)
    try:
        state = load_checkpoint(checkpoint, package=package)
        weights, which = state, "state_dict"
        if "model" in state and isinstance(state["model"], dict):
            weights, which = state["model"], "model"
            if use_ema and state.get("ema") is not None:
                weights, which = state["ema"], "ema"
        _, val_loader, found_classes = build_loaders(cfg.data, ctx, cfg.seed)
        model = build_classification_model(
            dataclasses.replace(cfg, pretrained=None), cfg.num_classes or found_classes
        ).to(ctx.device)
        model.load_state_dict(weights)
        out_dir = Path(cfg.output_dir) if cfg.output_dir else Path(checkpoint).parent / "eval"
        logger = RunLogger(out_dir, is_main=ctx.is_main, tensorboard=False, name="eval")
        result = evaluate(model, val_loader, ctx, cfg.amp, cfg.channels_last)
        metrics = {"model": cfg.model, "checkpoint": str(checkpoint), "weights": which, **result}
        logger.write_metrics(metrics)
        logger.info(
            f"{cfg.model} [{which}] top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}  loss {result['loss']:.4f}"
        )
        logger.close()
        return metrics
    finally:
        cleanup_distributed()


_WEIGHT_SET_PREFIX = {"ema": "ema_", "raw": "", "weights": ""}


def evaluate_weight_sets(
    cfg: ClassificationConfig,
    package: str,
    weight_sets_of: Callable[[Mapping[str, Any]], dict[str, dict[str, torch.Tensor]]],
) -> dict[str, Any]:
    """The body of a package's ``eval.py``: evaluate every weight set of ``cfg.checkpoint`` on the validation split.

    ``weight_sets_of`` maps the loaded checkpoint (refused unless it is ``package``'s or a plain state_dict) to
    ``{'ema': ..., 'raw': ...}`` or ``{'weights': ...}``. Keys of the result: ``top1``, ``top5``, ``loss`` (raw
    weights or the single state_dict) and ``ema_top1``, ``ema_top5``, ``ema_loss``, in percent / nats, plus
    ``model``, ``checkpoint`` and ``weights`` (the sets found); written to ``metrics.json`` in ``cfg.output_dir``
    (default ``<checkpoint folder>/eval/``). ``cfg`` needs a ``checkpoint`` field.
    """
    checkpoint = getattr(cfg, "checkpoint", "")
    if not checkpoint:
        raise ValueError("--checkpoint PATH is required")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = init_distributed(cfg.device)
    try:
        weight_sets = weight_sets_of(load_checkpoint(checkpoint, package=package))
        # only the validation split is needed: build the loaders with it as the training split too
        data = dataclasses.replace(cfg.data, train_split=cfg.data.val_split, batch_size=1)
        _, val_loader, found_classes = build_loaders(data, ctx, cfg.seed)
        num_classes = cfg.num_classes or found_classes
        model = build_classification_model(dataclasses.replace(cfg, pretrained=None, drop_path=0.0), num_classes)
        model = model.to(ctx.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        out_dir = Path(cfg.output_dir) if cfg.output_dir else Path(checkpoint).parent / "eval"
        logger = RunLogger(out_dir, is_main=ctx.is_main, tensorboard=False, name="eval")
        metrics: dict[str, Any] = {"model": cfg.model, "checkpoint": str(checkpoint), "weights": sorted(weight_sets)}
        for name, state_dict in weight_sets.items():
            try:
                model.load_state_dict(state_dict, strict=True)
            except RuntimeError as err:
                raise RuntimeError(
                    f"{checkpoint} ({name} weights) does not fit {cfg.model} with {num_classes} classes: {err}"
                ) from err
            result = evaluate(model, val_loader, ctx, cfg.amp, cfg.channels_last)
            metrics.update({_WEIGHT_SET_PREFIX[name] + k: v for k, v in result.items()})
            top1, top5, loss = result["top1"], result["top5"], result["loss"]
            logger.info(f"{cfg.model} [{name}] top-1 {top1:.2f}  top-5 {top5:.2f}  loss {loss:.4f}")
        logger.write_metrics(metrics)
        logger.info(f"metrics written to {out_dir / 'metrics.json'}")
        logger.close()
        return metrics
    finally:
        cleanup_distributed()


def parse_args(argv: list[str] | None = None) -> ClassificationConfig:
    """The config of ``python -m shared.classification --model NAME --data.root DIR ...``."""
    from shared.config import parse_config

    return parse_config(ClassificationConfig, argv, description="Supervised classification of a timm model.")


def main(cfg: ClassificationConfig) -> dict[str, Any]:
    """Any timm model on any ImageFolder set."""
    return run_classification(cfg, package="classification")


if __name__ == "__main__":
    main(parse_args())
