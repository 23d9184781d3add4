"""Train the LSFA adaptors on frozen point / RGB features, then score LSFA and the M3DM-style baseline.

    python train.py                                    # embedded default: synthetic MVTec 3D-AD tree, CPU, ~3 min
    python train.py -c configs/mvtec3d_lsfa.yaml --data.root data/mvtec3d_preprocessed \\
        --backbone.rgb_checkpoint dino_vitbase8_pretrain.pth --backbone.point_checkpoint pointmae_pretrain.pth
    torchrun --nproc_per_node=N train.py -c ...       # data-parallel adaptor training

One adaptor pair is trained jointly on the normal training images of all classes (class-conditional IFC queues),
then every class gets its memory banks. Writes ``config.yaml``, ``train.log``, ``log.csv``, TensorBoard scalars,
``last.pt`` every epoch (adaptors, optimizer, scaler, queues, RNG; the frozen backbones too when they are randomly
initialised), ``metrics.json`` and the plots of ``eval.py``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from lsfa.adaptation import AdaptationQueues, AdaptationSettings, lsfa_loss
from lsfa.data import MVTec3DDataset, patch_rotation, resolve_classes
from lsfa.eval import evaluate_classes
from lsfa.model import (
    FeatureExtractor,
    LSFAAdaptors,
    create_point_encoder,
    create_rgb_backbone,
    load_state_dict_strict,
)
from lsfa.preprocess import check_preprocessed
from lsfa.scoring import ScoringSettings, extract_features
from lsfa.synthetic import SYNTHETIC_CLASSES, ensure_synthetic_mvtec3d
from lsfa.uff import (
    UFFSettings,
    UnsupervisedFeatureFusion,
    load_uff_checkpoint,
    save_uff_checkpoint,
    train_uff,
    uff_token_pairs,
)
from shared.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from shared.config import config_name, config_to_dict, parse_config, save_config
from shared.distributed import DistContext, cleanup_distributed, init_distributed, seed_everything
from shared.logger import RunLogger, claim_run_dir, resolve_run_dir
from shared.training import autocast, check_finite, make_grad_scaler

__all__ = ["BackboneConfig", "DataConfig", "EvalConfig", "OptimConfig", "TrainConfig", "build_extractor", "build_uff",
           "get_args_parser", "load_adaptors", "main", "resolve_root", "train_one_epoch"]

PACKAGE = "lsfa"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"


@dataclass
class DataConfig:
    dataset: str = field(default="mvtec3d", metadata={"help": "'synthetic', 'mvtec3d' or 'eyecandies'"})
    root: str | None = field(default=None, metadata={"help": "preprocessed tree (python -m lsfa.preprocess)"})
    classes: list[str] = field(default_factory=list, metadata={"help": "classes to use (empty: all under root)"})
    image_size: int = 224
    batch_size: int = 8
    num_workers: int = 0
    max_train_samples: int | None = field(default=400, metadata={"help": "per class (the release's max_sample)"})
    cache_features: bool = field(default=False, metadata={
        "help": "keep the frozen training features in memory (extracted once, reused every epoch and for banks)"})
    require_preprocessed: bool = field(default=True, metadata={
        "help": "refuse a real-data root without the LSFA_PREPROCESSED.json marker of python -m lsfa.preprocess"})


@dataclass
class SyntheticConfig:
    num_train: int = 30
    num_test_good: int = 8
    num_test_per_defect: int = 4
    size: int = 240
    seed: int = 0


@dataclass
class BackboneConfig:
    rgb_variant: str = field(default="dino_vitb8", metadata={"help": "dino_vitb8 (paper), dino_vits8, vit_tiny8_d2"})
    rgb_checkpoint: str | None = field(default=None, metadata={"help": "dino_vitbase8_pretrain.pth (DINO / timm)"})
    point_variant: str = field(default="point_mae", metadata={"help": "point_mae (paper), point_mae_tiny"})
    point_checkpoint: str | None = field(default=None, metadata={"help": "pointmae_pretrain.pth (Point-MAE)"})
    allow_random_init: bool = field(default=False, metadata={"help": "random backbones (embedded default only)"})
    grid: int = field(default=56, metadata={"help": "xyz feature grid side (56 = 3136 tokens)"})
    point_scale: float = field(default=1.0, metadata={"help": "multiply coordinates before the point encoder"})
    point_centre: bool = field(default=False, metadata={"help": "centre each cloud on its centroid first"})
    masked_pool: bool = field(default=False, metadata={
        "help": "pool xyz features over the valid pixels only (M3DM / release: empty pixels count as zeros)"})
    uff_checkpoint: str | None = field(default=None, metadata={
        "help": "M3DM's UFF weights (uff_pretrained.pth, {'model': ...}) for method m3dm_triple"})


@dataclass
class AdaptorConfig:
    num_heads: int = 12
    proj_dim: int = 512
    patch_queue: int = field(default=60_000, metadata={"help": "IFC patch queue entries per class"})
    global_queue: int = field(default=100, metadata={"help": "IFC global queue entries per class"})


@dataclass
class OptimConfig:
    epochs: int = 2
    lr: float = 3e-4
    weight_decay: float = field(default=0.01, metadata={"help": "torch AdamW default (the release never passes "
                                                                "its --weight_decay 1.5e-6)"})
    betas: tuple[float, float] = (0.9, 0.95)
    accum_iter: int = 16
    warmup_epochs: float = 1.0
    schedule_epochs: int = field(default=100, metadata={"help": "cosine length (release: 100 while 2 epochs run)"})
    min_lr: float = 0.0
    released_zero_grad: bool = field(default=False, metadata={
        "help": "zero the gradients every iteration as the release (accumulation then keeps 1/accum_iter of one "
                "batch); default: proper accumulation"})


@dataclass
class EvalConfig:
    methods: list[str] = field(default_factory=lambda: ["lsfa", "m3dm"])
    vis_images: int = 4


@dataclass
class TrainConfig:
    output_dir: str | None = None
    resume: str | None = None
    seed: int = 0
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu' or 'cuda'"})
    amp: str = field(default="none", metadata={"help": "'none', 'bf16' or 'fp16'"})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    log_interval: int = 20
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adaptor: AdaptorConfig = field(default_factory=AdaptorConfig)
    loss: AdaptationSettings = field(default_factory=AdaptationSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    eval: EvalConfig = field(default_factory=EvalConfig)
    uff: UFFSettings = field(default_factory=UFFSettings)


def get_args_parser():
    """The argparse parser of :class:`TrainConfig` (every key as ``--section.key``)."""
    from shared.config import build_parser

    return build_parser(TrainConfig, __doc__.splitlines()[0])


def resolve_root(cfg: TrainConfig) -> Path:
    """The dataset root: the cached synthetic tree (written if absent) or ``data.root``."""
    if cfg.data.dataset == "synthetic":
        s = cfg.synthetic
        return ensure_synthetic_mvtec3d(None, preprocess=True, classes=list(cfg.data.classes or SYNTHETIC_CLASSES),
                                        num_train=s.num_train, num_test_good=s.num_test_good,
                                        num_test_per_defect=s.num_test_per_defect, size=s.size, seed=s.seed)
    if cfg.data.dataset not in ("mvtec3d", "eyecandies"):
        raise ValueError(f"data.dataset must be synthetic, mvtec3d or eyecandies, got {cfg.data.dataset!r}")
    if not cfg.data.root:
        raise FileNotFoundError(f"data.root is not set: pass --data.root DIR, the preprocessed {cfg.data.dataset} "
                                f"tree (python -m lsfa.preprocess; python -m shared.datasets info {cfg.data.dataset})")
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root {root} does not exist (python -m shared.datasets info {cfg.data.dataset})")
    if cfg.data.require_preprocessed:
        check_preprocessed(root, cfg.data.dataset)
    return root


def build_extractor(cfg: TrainConfig, backbones: dict | None = None, logger: RunLogger | None = None
                    ) -> FeatureExtractor:
    """Frozen backbones: from ``backbones`` (state dicts saved with a random-init run), the checkpoint files, or
    random initialisation when ``backbone.allow_random_init`` (never silently)."""
    b = cfg.backbone
    rgb = create_rgb_backbone(b.rgb_variant, None if backbones else b.rgb_checkpoint)
    point = create_point_encoder(b.point_variant, None if backbones else b.point_checkpoint)
    if backbones:
        load_state_dict_strict(rgb, backbones["rgb"], "checkpoint['backbones']['rgb']")
        load_state_dict_strict(point, backbones["point"], "checkpoint['backbones']['point']")
    else:
        missing = [name for name, path in (("backbone.rgb_checkpoint (DINO ViT-B/8: dino_vitbase8_pretrain.pth)",
                                            b.rgb_checkpoint),
                                           ("backbone.point_checkpoint (Point-MAE: pointmae_pretrain.pth)",
                                            b.point_checkpoint)) if not path]
        if missing and not b.allow_random_init:
            raise FileNotFoundError(f"no pretrained weights given for {', '.join(missing)}; M3DM / LSFA need them "
                                    f"(see README Recipes for where they are published). Only the embedded default "
                                    f"runs with --backbone.allow_random_init.")
        if missing and logger is not None:
            logger.info(f"RANDOM INITIALISATION of {', '.join(m.split(' ')[0] for m in missing)} "
                        f"({b.rgb_variant}, {b.point_variant}): embedded default, no pretrained weights offline")
    return FeatureExtractor(rgb, point, b.grid, b.point_scale, b.point_centre, b.masked_pool)


def build_adaptors(cfg: TrainConfig, extractor: FeatureExtractor) -> LSFAAdaptors:
    return LSFAAdaptors(extractor.xyz_dim, extractor.rgb_dim, cfg.adaptor.num_heads, cfg.adaptor.proj_dim)


def load_adaptors(cfg: TrainConfig, extractor: FeatureExtractor, state: dict, source: str) -> LSFAAdaptors:
    """Adaptors from a state dict, strictly: a missing key is an error, never random adaptors."""
    adaptors = build_adaptors(cfg, extractor)
    load_state_dict_strict(adaptors, state, f"{source} ['adaptors']")
    return adaptors


def build_uff(cfg: TrainConfig, extractor: FeatureExtractor, root: Path, classes: list[str], device: torch.device,
              logger: RunLogger | None = None, saved: dict | None = None, out_dir: Path | None = None,
              train_cache: dict | None = None) -> UnsupervisedFeatureFusion:
    """The UFF of method ``m3dm_triple``: ``backbone.uff_checkpoint`` (strict), else the one saved in a run
    checkpoint (``saved``), else pre-trained (``uff.train``) on the frozen features of the training images of all
    classes (``train_cache``: class -> SplitFeatures, or extracted batch by batch) and written to
    ``out_dir/uff_pretrained.pth`` in M3DM's layout. Never random weights."""
    say = logger.info if logger is not None else print
    u = cfg.uff
    module = UnsupervisedFeatureFusion(extractor.xyz_dim, extractor.rgb_dim, u.mlp_ratio, u.head_dim)
    if cfg.backbone.uff_checkpoint:
        load_uff_checkpoint(module, cfg.backbone.uff_checkpoint)
        say(f"UFF loaded from {cfg.backbone.uff_checkpoint}")
        return module.to(device).eval()
    if saved is not None:
        load_state_dict_strict(module, saved, "checkpoint['uff']")
        return module.to(device).eval()
    if not u.train:
        raise FileNotFoundError("method m3dm_triple needs UFF weights: set backbone.uff_checkpoint (M3DM's "
                                "uff_pretrained.pth) or pass --uff.train to pre-train one on the training images "
                                "of all classes")
    if train_cache:
        xyz_maps = torch.cat([train_cache[c].xyz for c in classes])
        rgb_maps = torch.cat([train_cache[c].rgb for c in classes])

        def source(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return uff_token_pairs(xyz_maps[idx], rgb_maps[idx], u.rgb_pairing)
        num_images = xyz_maps.shape[0]
    else:
        images = ConcatDataset([MVTec3DDataset(root, c, "train", cfg.data.image_size, cfg.data.max_train_samples)
                                for c in classes])

        def source(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            items = [images[int(i)] for i in idx]
            xyz_f, _ = extractor.xyz_features(torch.stack([it["xyz"] for it in items]).to(device))
            rgb_f = extractor.rgb_features(torch.stack([it["rgb"] for it in items]).to(device))
            return uff_token_pairs(xyz_f, rgb_f, u.rgb_pairing)
        num_images = len(images)
    t0 = time.perf_counter()
    say(f"pre-training the UFF on {num_images} training images ({u.epochs} epochs, batch {u.batch_size} x "
        f"accumulation {u.accum_iter}, lr {u.lr})")
    module, optimizer = train_uff(source, num_images, extractor.xyz_dim, extractor.rgb_dim, u, device, cfg.amp, say)
    if out_dir is not None:
        path = save_uff_checkpoint(module, Path(out_dir) / "uff_pretrained.pth", u.epochs - 1, optimizer, u)
        say(f"UFF trained in {time.perf_counter() - t0:.0f} s, wrote {path}")
    return module


class _ClassLabelled(Dataset):
    """A class dataset whose items also carry the class index and the item index within the concatenation."""

    def __init__(self, dataset: MVTec3DDataset, class_index: int, offset: int):
        self.dataset, self.class_index, self.offset = dataset, class_index, offset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        item.pop("path")
        item.pop("defect")
        return {**item, "class_index": self.class_index, "index": self.offset + i}


def lr_at(step: float, cfg: OptimConfig, iters_per_epoch: int) -> float:
    """Per-iteration schedule of the release: linear warm-up, then half-cycle cosine over ``schedule_epochs``."""
    epoch = step / iters_per_epoch
    if epoch < cfg.warmup_epochs:
        return cfg.lr * epoch / cfg.warmup_epochs
    progress = (epoch - cfg.warmup_epochs) / max(cfg.schedule_epochs - cfg.warmup_epochs, 1e-9)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def train_one_epoch(adaptors: nn.Module, core: LSFAAdaptors, extractor: FeatureExtractor, loader: DataLoader,
                    optimizer: torch.optim.Optimizer, scaler, queues: AdaptationQueues, cfg: TrainConfig,
                    ctx: DistContext, logger: RunLogger, epoch: int, start_iteration: int,
                    cache: dict[int, tuple[torch.Tensor, ...]] | None, generator: torch.Generator) -> int:
    """One pass over the training images; returns the global iteration count after it."""
    adaptors.train()
    iteration = start_iteration
    accum = max(1, cfg.optim.accum_iter)
    sums: dict[str, float] = {}
    t0, seen = time.perf_counter(), 0
    for i, batch in enumerate(logger.progress(loader, desc=f"epoch {epoch}")):
        lr = lr_at(i / len(loader) + epoch, cfg.optim, 1)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rgb = batch["rgb"].to(ctx.device)
        if cache is not None:
            xyz_f, rgb_f, valid = (torch.stack([cache[int(j)][k] for j in batch["index"]]).to(ctx.device)
                                   for k in range(3))
        else:
            feats = extractor(rgb, batch["xyz"].to(ctx.device))
            xyz_f, rgb_f, valid = feats["xyz"], feats["rgb"], feats["valid"]
        rgb_rot = extractor.rgb_features(patch_rotation(rgb, generator=generator), extractor.grid)
        with autocast(ctx.device, cfg.amp):
            loss, logs = lsfa_loss(core, xyz_f, rgb_f, rgb_rot, valid, batch["class_index"], queues, iteration,
                                   cfg.loss, generator)
        check_finite(loss, iteration, "LSFA loss")
        if cfg.optim.released_zero_grad:
            optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss / accum).backward()
        if (i + 1) % accum == 0 or i + 1 == len(loader):
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        iteration += 1
        seen += rgb.shape[0] * ctx.world_size
        for k, v in {"loss": loss.item(), **logs}.items():
            sums[k] = sums.get(k, 0.0) + v
        if iteration % cfg.log_interval == 0:
            logger.scalars({"loss": loss.item(), "lr": lr, **logs}, iteration, prefix="train/")
    n = max(1, len(loader))
    logger.log_epoch(epoch + 1, {**{k: v / n for k, v in sums.items()}, "lr": lr if n else 0.0,
                                 "img_per_s": seen / max(time.perf_counter() - t0, 1e-9)})
    return iteration


def main(argv: list[str] | None = None) -> dict[str, float]:
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_config(TrainConfig, argv, description=__doc__.splitlines()[0], default_config=DEFAULT_CONFIG)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    ctx = init_distributed(None if cfg.device == "auto" else cfg.device)
    try:
        return run(cfg, ctx, config_name(argv))
    finally:
        cleanup_distributed()


_STATE_KEYS = ("adaptors", "optimizer", "scaler", "queues", "generator", "loader_generator", "rng", "epoch",
               "iteration", "config")


def run(cfg: TrainConfig, ctx: DistContext, config_name: str = "default") -> dict[str, float]:
    t_start = time.perf_counter()
    resume = load_checkpoint(cfg.resume, map_location="cpu", package=PACKAGE, required=_STATE_KEYS) \
        if cfg.resume else None
    out = resolve_run_dir(PACKAGE, config_name, cfg.output_dir, cfg.resume)
    claim_run_dir(out, PACKAGE, config_to_dict(cfg), resume=resume is not None, is_main=ctx.is_main)
    logger = RunLogger(out, is_main=ctx.is_main)
    if ctx.is_main:
        save_config(cfg, out / "config.yaml")
    seed_everything(cfg.seed, ctx.rank)
    extractor = build_extractor(cfg, resume.get("backbones") if resume else None, logger).to(ctx.device)
    root = resolve_root(cfg)
    classes = resolve_classes(root, cfg.data.classes)
    random_backbones = resume.get("backbones") if resume else None
    if random_backbones is None and not (cfg.backbone.rgb_checkpoint and cfg.backbone.point_checkpoint):
        # random weights cannot be re-created from a file: keep them with the adaptors
        random_backbones = {"rgb": extractor.rgb_backbone.state_dict(), "point": extractor.point_encoder.state_dict()}
    core = build_adaptors(cfg, extractor).to(ctx.device)
    logger.info(f"LSFA: {cfg.backbone.rgb_variant} ({extractor.rgb_dim}-d) + {cfg.backbone.point_variant} "
                f"({extractor.xyz_dim}-d), grid {cfg.backbone.grid}; adaptors "
                f"{sum(p.numel() for p in core.parameters()) / 1e6:.2f} M parameters; classes {classes}; "
                f"device {ctx.device}, {ctx.world_size} process(es); run folder {out}")
    parts, offset = [], 0
    for ci, c in enumerate(classes):
        ds = MVTec3DDataset(root, c, "train", cfg.data.image_size, cfg.data.max_train_samples)
        parts.append(_ClassLabelled(ds, ci, offset))
        offset += len(ds)
    train_set = ConcatDataset(parts)
    cache, per_class_cache = None, None
    if cfg.data.cache_features:
        t0 = time.perf_counter()
        cache, per_class_cache = {}, {}
        for part, c in zip(parts, classes, strict=True):
            feats = extract_features(extractor, part.dataset, cfg.data.batch_size, ctx.device, cfg.data.num_workers)
            per_class_cache[c] = feats
            grid_rgb = torch.nn.functional.adaptive_avg_pool2d(feats.rgb, cfg.backbone.grid)
            for j in range(len(part)):
                cache[part.offset + j] = (feats.xyz[j], grid_rgb[j], feats.valid[j])
        logger.info(f"frozen features of {len(cache)} training images cached in {time.perf_counter() - t0:.0f} s")
    sampler = torch.utils.data.DistributedSampler(train_set, shuffle=True, seed=cfg.seed, drop_last=True) \
        if ctx.distributed else None
    loader_gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.data.batch_size // ctx.world_size, shuffle=sampler is None,
                        sampler=sampler, num_workers=cfg.data.num_workers, drop_last=True, generator=loader_gen)
    if len(loader) == 0:
        raise ValueError(f"{len(train_set)} training images, fewer than one batch of {cfg.data.batch_size}")
    adaptors: nn.Module = core
    if ctx.distributed:
        adaptors = nn.parallel.DistributedDataParallel(core, device_ids=[ctx.device] if ctx.device.type == "cuda"
                                                       else None)
    optimizer = torch.optim.AdamW(core.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay)
    scaler = make_grad_scaler(ctx.device, cfg.amp)
    queues = AdaptationQueues(len(classes), extractor.xyz_dim, extractor.rgb_dim, cfg.adaptor.patch_queue,
                              cfg.adaptor.global_queue, ctx.device)
    generator = torch.Generator().manual_seed(cfg.seed + 1000 * ctx.rank)
    start_epoch, iteration = 0, 0
    if resume is not None:
        load_state_dict_strict(core, resume["adaptors"], f"{cfg.resume} ['adaptors']")
        optimizer.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        queues.load_state_dict(resume["queues"])
        generator.set_state(resume["generator"])
        loader_gen.set_state(resume["loader_generator"])
        restore_rng_state(resume["rng"])
        start_epoch, iteration = int(resume["epoch"]), int(resume["iteration"])
        logger.info(f"resumed {cfg.resume} at epoch {start_epoch}")
    uff_state = resume.get("uff") if resume else None  # a UFF trained by this run (not one read from a file)

    def save(epochs_done: int) -> None:
        save_checkpoint({"package": PACKAGE, "adaptors": core.state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict(), "queues": queues.state_dict(),
                         "generator": generator.get_state(), "loader_generator": loader_gen.get_state(),
                         "rng": capture_rng_state(), "epoch": epochs_done, "iteration": iteration,
                         "config": config_to_dict(cfg), "backbones": random_backbones, "uff": uff_state},
                        out / "last.pt")

    t_train = time.perf_counter()
    if start_epoch >= cfg.optim.epochs and ctx.is_main:  # nothing to train (the M3DM baseline recipes)
        save(start_epoch)
    for epoch in range(start_epoch, cfg.optim.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        iteration = train_one_epoch(adaptors, core, extractor, loader, optimizer, scaler, queues, cfg, ctx, logger,
                                    epoch, iteration, cache, generator)
        if ctx.is_main:
            save(epoch + 1)
    train_seconds = time.perf_counter() - t_train
    metrics: dict[str, float] = {}
    if ctx.is_main:
        logger.info(f"adaptors trained for {cfg.optim.epochs} epochs ({iteration} iterations) in {train_seconds:.0f} s")
        uff = None
        if "m3dm_triple" in cfg.eval.methods:
            uff = build_uff(cfg, extractor, root, classes, ctx.device, logger, uff_state, out, per_class_cache)
            if not cfg.backbone.uff_checkpoint and uff_state is None:  # trained here: keep it with the run
                uff_state = uff.state_dict()
                save(max(start_epoch, cfg.optim.epochs))
        metrics = evaluate_classes(extractor, core, root, classes, cfg.scoring, cfg.eval.methods, ctx.device,
                                   cfg.data.batch_size, cfg.data.image_size, cfg.data.max_train_samples,
                                   per_class_cache, out, logger, cfg.eval.vis_images, uff)
        metrics.update(train_seconds=train_seconds, total_seconds=time.perf_counter() - t_start)
        logger.info(f"total {metrics['total_seconds']:.0f} s")
    logger.write_metrics(metrics)
    logger.close()
    return metrics


if __name__ == "__main__":
    main()
