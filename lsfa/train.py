"""Train the LSFA adaptors on frozen point / RGB features, then score LSFA and the M3DM-style baseline.

    python train.py                                    # embedded default: synthetic MVTec 3D-AD tree, CPU, ~3 min
    python train.py -c configs/mvtec3d_lsfa.yaml --data.root data/mvtec3d_preprocessed \\
        --backbone.rgb_checkpoint dino_vitbase8_pretrain.pth --backbone.point_checkpoint pointmae_pretrain.pth
    torchrun --nproc_per_node=N train.py -c ...       # data-parallel adaptor training

One adaptor pair is trained jointly on the normal training images of all classes (class-conditional IFC queues),
then every class gets its memory banks. Writes ``config.yaml``, ``train.log``, ``log.csv``, TensorBoard scalars,
``last.pt`` every ``checkpoint_interval`` epochs and at the end (adaptors, optimizer, scaler, every process's IFC
queues, RNG; the frozen backbones too when they are randomly initialised), ``metrics.json`` and the plots of
``eval.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from lsfa.adaptation import AdaptationQueues, lr_at, lsfa_loss
from lsfa.config import DEFAULT_CONFIG, TrainConfig
from lsfa.data import MVTec3DDataset, patch_rotation, resolve_classes
from lsfa.eval import score_run
from lsfa.model import FeatureExtractor, LSFAAdaptors
from lsfa.pipeline import build_adaptors, build_extractor, build_uff, check_uff_source, resolve_root
from lsfa.scoring import SplitFeatures, extract_features
from shared.checkpoint import (
    load_resume_state,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from shared.config import config_to_dict, save_config, script_parser
from shared.distributed import (
    DistContext,
    all_reduce_gradients,
    broadcast_module,
    cleanup_distributed,
    gather_rank_states,
    init_distributed,
    own_rank_entry,
    rank_entry_count,
    seed_everything,
)
from shared.logger import RunLogger, claim_run_dir, resolve_run_dir
from shared.training import autocast, check_finite, make_grad_scaler

__all__ = [
    "AdaptorTraining",
    "build_loader",
    "build_training",
    "build_training_set",
    "cache_training_features",
    "check_batch_split",
    "evaluate",
    "main",
    "parse_args",
    "train_one_epoch",
]

PACKAGE = "lsfa"
#: What every ``last.pt`` of this script holds (``backbones`` and ``uff`` may be None).
STATE_KEYS = (
    "adaptors",
    "optimizer",
    "scaler",
    "queues",
    "generator",
    "loader_generator",
    "rng",
    "epoch",
    "iteration",
    "config",
)

FeatureCache = dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def check_batch_split(batch_size: int, world_size: int) -> None:
    """``data.batch_size`` is the total batch: every process takes ``batch_size / world_size`` images, so the
    contrastive terms (gathered over the processes) see the same global batch for any process count."""
    if batch_size % world_size:
        raise ValueError(
            f"data.batch_size {batch_size} is the total batch over the {world_size} torchrun processes and must be "
            f"divisible by their number (each process takes batch_size / {world_size} images); pass e.g. "
            f"--data.batch_size {max(1, batch_size // world_size) * world_size}"
        )


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


@dataclass
class AdaptorTraining:
    """The state of an adaptor training, as ``last.pt`` stores it (:data:`STATE_KEYS`)."""

    core: LSFAAdaptors  # the adaptors (``adaptors`` below is the DDP wrapper under torchrun, else the same module)
    adaptors: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    queues: AdaptationQueues
    generator: torch.Generator  # patch rotation and loss sampling
    loader_generator: torch.Generator  # shuffling
    backbones: dict | None  # randomly initialised frozen backbones (cannot be re-created from a file)
    uff: dict | None = None  # a UFF trained by this run (not one read from a file)
    epoch: int = 0
    iteration: int = 0
    #: every process's queue state at the last :meth:`save` (rank 0; ``None`` elsewhere and before any save)
    rank_queues: list[dict] | None = None

    def _components(self) -> dict:
        """The objects whose state ``last.pt`` stores and a resumed run restores (besides the counters and the
        per-rank queues)."""
        return {
            "adaptors": self.core,
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            "generator": self.generator,
            "loader_generator": self.loader_generator,
        }

    def state(self, cfg: TrainConfig) -> dict:
        """``last.pt``'s content (rank 0). ``queues`` is a list with one queue state per process (each process fills
        its own queues from its own images), as gathered by the last :meth:`save`; ``[this process's]`` before."""
        queues = self.rank_queues if self.rank_queues is not None else [self.queues.state_dict()]
        return training_state(
            PACKAGE,
            cfg,
            **self._components(),
            queues=queues,
            epoch=self.epoch,
            iteration=self.iteration,
            backbones=self.backbones,
            uff=self.uff,
        )

    def save(self, cfg: TrainConfig, ctx: DistContext, path: Path) -> None:
        """Write ``path`` (rank 0) with every process's queues. Collective: every rank calls it."""
        self.rank_queues = gather_rank_states(self.queues.state_dict(), ctx)
        if ctx.is_main:
            save_checkpoint(self.state(cfg), path)

    def resume(self, state: dict, rank: int = 0) -> None:
        """Restore ``state``; this process takes its own entry of the per-rank queues (``own_rank_entry``)."""
        restore_training_state(state, **self._components())
        self.queues.load_state_dict(own_rank_entry(state["queues"], rank))
        self.epoch, self.iteration = int(state["epoch"]), int(state["iteration"])


def build_training_set(cfg: TrainConfig, root: Path, classes: list[str]) -> list[_ClassLabelled]:
    """The training images of every class, labelled with the class index (for the class-conditional queues)."""
    parts, offset = [], 0
    for ci, c in enumerate(classes):
        ds = MVTec3DDataset(
            root,
            c,
            "train",
            image_size=cfg.data.image_size,
            max_samples=cfg.data.max_train_samples,
            rgb_resize=cfg.data.rgb_resize,
        )
        parts.append(_ClassLabelled(ds, ci, offset))
        offset += len(ds)
    return parts


def cache_training_features(
    cfg: TrainConfig,
    extractor: FeatureExtractor,
    parts: list[_ClassLabelled],
    classes: list[str],
    device: torch.device,
    logger: RunLogger,
) -> tuple[FeatureCache | None, dict[str, SplitFeatures] | None]:
    """With ``data.cache_features``: the frozen features of every training image, extracted once, by item index
    (xyz, rgb pooled to the grid, validity) for the adaptor training and by class for the memory banks."""
    if not cfg.data.cache_features:
        return None, None
    t0 = time.perf_counter()
    cache, per_class = {}, {}
    for part, c in zip(parts, classes, strict=True):
        feats = extract_features(extractor, part.dataset, cfg.data.batch_size, device, num_workers=cfg.data.num_workers)
        per_class[c] = feats
        grid_rgb = torch.nn.functional.adaptive_avg_pool2d(feats.rgb, cfg.backbone.grid)
        for j in range(len(part)):
            cache[part.offset + j] = (feats.xyz[j], grid_rgb[j], feats.valid[j])
    logger.info(f"frozen features of {len(cache)} training images cached in {time.perf_counter() - t0:.0f} s")
    return cache, per_class


def build_loader(
    cfg: TrainConfig, train_set: Dataset, ctx: DistContext
) -> tuple[DataLoader, DistributedSampler | None, torch.Generator]:
    """Shuffled batches (``data.batch_size`` in total over the processes, last partial batch dropped)."""
    check_batch_split(cfg.data.batch_size, ctx.world_size)
    sampler = DistributedSampler(train_set, shuffle=True, seed=cfg.seed, drop_last=True) if ctx.distributed else None
    loader_generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        train_set,
        batch_size=cfg.data.batch_size // ctx.world_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        drop_last=True,
        generator=loader_generator,
    )
    if len(loader) == 0:
        raise ValueError(f"{len(train_set)} training images, fewer than one batch of {cfg.data.batch_size}")
    return loader, sampler, loader_generator


def build_training(
    cfg: TrainConfig,
    ctx: DistContext,
    core: LSFAAdaptors,
    extractor: FeatureExtractor,
    num_classes: int,
    loader_generator: torch.Generator,
    backbones: dict | None,
) -> AdaptorTraining:
    """AdamW (the release's betas), the GradScaler of ``amp``, the per-class IFC queues and the loss generator."""
    # The loss calls the adaptors' parts directly (lsfa_loss), never a module forward, so a DDP wrapper would not
    # sync anything: rank 0's weights are broadcast here and the gradients averaged before every optimizer step.
    broadcast_module(core)
    adaptors: nn.Module = core
    optimizer = torch.optim.AdamW(
        core.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay
    )
    queues = AdaptationQueues(
        num_classes,
        extractor.xyz_dim,
        extractor.rgb_dim,
        patch_capacity=cfg.adaptor.patch_queue,
        global_capacity=cfg.adaptor.global_queue,
        device=ctx.device,
    )
    return AdaptorTraining(
        core=core,
        adaptors=adaptors,
        optimizer=optimizer,
        scaler=make_grad_scaler(ctx.device, cfg.amp),
        queues=queues,
        generator=torch.Generator().manual_seed(cfg.seed + 1000 * ctx.rank),
        loader_generator=loader_generator,
        backbones=backbones,
    )


def _batch_features(
    batch: dict, extractor: FeatureExtractor, cache: FeatureCache | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frozen (xyz, rgb on the grid, validity) of a batch: from the cache, else extracted now."""
    if cache is not None:
        return tuple(torch.stack([cache[int(j)][k] for j in batch["index"]]).to(device) for k in range(3))
    feats = extractor(batch["rgb"].to(device), batch["xyz"].to(device))
    return feats["xyz"], feats["rgb"], feats["valid"]


def train_one_epoch(
    t: AdaptorTraining,
    extractor: FeatureExtractor,
    loader: DataLoader,
    cfg: TrainConfig,
    ctx: DistContext,
    logger: RunLogger,
    epoch: int,
    cache: FeatureCache | None,
) -> None:
    """One pass over the training images (``t.iteration`` counts the iterations of the whole run)."""
    t.adaptors.train()
    accum = max(1, cfg.optim.accum_iter)
    sums: dict[str, float] = {}
    t0, seen = time.perf_counter(), 0
    for i, batch in enumerate(logger.progress(loader, desc=f"epoch {epoch}")):
        lr = lr_at(i / len(loader) + epoch, cfg.optim, 1)
        for group in t.optimizer.param_groups:
            group["lr"] = lr
        rgb = batch["rgb"].to(ctx.device)
        xyz_f, rgb_f, valid = _batch_features(batch, extractor, cache, ctx.device)
        rgb_rot = extractor.rgb_features(patch_rotation(rgb, generator=t.generator), extractor.grid)
        with autocast(ctx.device, cfg.amp):
            loss, logs = lsfa_loss(
                t.core, xyz_f, rgb_f, rgb_rot, valid, batch["class_index"], t.queues, t.iteration, cfg.loss, t.generator
            )
        check_finite(loss, t.iteration, "LSFA loss")
        if cfg.optim.released_zero_grad:
            t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss / accum).backward()
        if (i + 1) % accum == 0 or i + 1 == len(loader):
            all_reduce_gradients(t.core.parameters())
            t.scaler.step(t.optimizer)
            t.scaler.update()
            t.optimizer.zero_grad(set_to_none=True)
        t.iteration += 1
        seen += rgb.shape[0] * ctx.world_size
        for k, v in {"loss": loss.item(), **logs}.items():
            sums[k] = sums.get(k, 0.0) + v
        if cfg.log_interval and t.iteration % cfg.log_interval == 0:
            logger.scalars({"loss": loss.item(), "lr": lr, **logs}, t.iteration, prefix="train/")
    n = max(1, len(loader))
    logger.log_epoch(
        epoch + 1,
        {
            **{k: v / n for k, v in sums.items()},
            "lr": lr if n else 0.0,
            "img_per_s": seen / max(time.perf_counter() - t0, 1e-9),
        },
    )


def fit(
    t: AdaptorTraining,
    extractor: FeatureExtractor,
    loader: DataLoader,
    sampler: DistributedSampler | None,
    cache: FeatureCache | None,
    cfg: TrainConfig,
    ctx: DistContext,
    logger: RunLogger,
    out: Path,
) -> None:
    """The epochs from ``t.epoch`` to ``optim.epochs``; ``last.pt`` every ``checkpoint_interval`` epochs and after
    the last one (also when there is nothing left to train: the M3DM baseline recipes train 0 epochs)."""
    if t.epoch >= cfg.optim.epochs:
        t.save(cfg, ctx, out / "last.pt")
    for epoch in range(t.epoch, cfg.optim.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        train_one_epoch(t, extractor, loader, cfg, ctx, logger, epoch, cache)
        t.epoch = epoch + 1
        due = t.epoch == cfg.optim.epochs or (cfg.checkpoint_interval and t.epoch % cfg.checkpoint_interval == 0)
        if due:
            t.save(cfg, ctx, out / "last.pt")


def evaluate(
    t: AdaptorTraining,
    extractor: FeatureExtractor,
    root: Path,
    classes: list[str],
    cfg: TrainConfig,
    ctx: DistContext,
    logger: RunLogger,
    out: Path,
    train_cache: dict[str, SplitFeatures] | None,
) -> dict[str, float]:
    """Memory banks and scores of every class (:func:`lsfa.eval.score_run`). For ``m3dm_triple`` the UFF is
    loaded, or pre-trained here and then kept in ``last.pt``."""
    uff = None
    if "m3dm_triple" in cfg.eval.methods:
        uff = build_uff(
            cfg, extractor, root, classes, ctx.device, logger=logger, saved=t.uff, out_dir=out, train_cache=train_cache
        )
        if not cfg.backbone.uff_checkpoint and t.uff is None:  # trained here: keep it with the run
            t.uff = uff.state_dict()
            save_checkpoint(t.state(cfg), out / "last.pt")  # rank 0 only: the queues gathered by fit's last save
    return score_run(cfg, extractor, t.core, root, classes, ctx.device, out, logger, uff=uff, train_cache=train_cache)


def _open_run(cfg: TrainConfig, ctx: DistContext) -> tuple[Path, RunLogger, dict | None]:
    """The checkpoint to resume (checked before anything is written), the claimed run folder and its logger."""
    resume = load_resume_state(cfg, PACKAGE, required=STATE_KEYS)
    check_uff_source(cfg, resume.get("uff") if resume else None)  # m3dm_triple scores after training: check now
    out = resolve_run_dir(PACKAGE, cfg.name or "default", cfg.output_dir, cfg.resume)
    claim_run_dir(out, PACKAGE, config_to_dict(cfg), resume=resume is not None, is_main=ctx.is_main)
    logger = RunLogger(out, is_main=ctx.is_main, tensorboard=cfg.tensorboard)
    if ctx.is_main:
        save_config(cfg, out / "config.yaml")
    return out, logger, resume


def _backbones_to_keep(cfg: TrainConfig, extractor: FeatureExtractor, resume: dict | None) -> dict | None:
    """Randomly initialised backbones cannot be re-created from a file: their weights go into ``last.pt``."""
    backbones = resume.get("backbones") if resume else None
    if backbones is None and not (cfg.backbone.rgb_checkpoint and cfg.backbone.point_checkpoint):
        backbones = {"rgb": extractor.rgb_backbone.state_dict(), "point": extractor.point_encoder.state_dict()}
    return backbones


def _run(cfg: TrainConfig, ctx: DistContext) -> dict[str, float]:
    t_start = time.perf_counter()
    out, logger, resume = _open_run(cfg, ctx)
    seed_everything(cfg.seed, ctx.rank)
    extractor = build_extractor(cfg, resume.get("backbones") if resume else None, logger).to(ctx.device)
    broadcast_module(extractor)  # randomly initialised backbones (embedded default) are rank 0's on every rank
    root = resolve_root(cfg)
    classes = resolve_classes(root, cfg.data.classes)
    backbones = _backbones_to_keep(cfg, extractor, resume)
    core = build_adaptors(cfg, extractor).to(ctx.device)
    logger.info(
        f"LSFA: {cfg.backbone.rgb_variant} ({extractor.rgb_dim}-d) + {cfg.backbone.point_variant} "
        f"({extractor.xyz_dim}-d), grid {cfg.backbone.grid}; adaptors "
        f"{sum(p.numel() for p in core.parameters()) / 1e6:.2f} M parameters; classes {classes}; "
        f"device {ctx.device}, {ctx.world_size} process(es); run folder {out}"
    )
    parts = build_training_set(cfg, root, classes)
    cache, per_class_cache = cache_training_features(cfg, extractor, parts, classes, ctx.device, logger)
    loader, sampler, loader_generator = build_loader(cfg, ConcatDataset(parts), ctx)
    t = build_training(cfg, ctx, core, extractor, len(classes), loader_generator, backbones)
    if resume is not None:
        t.resume(resume, ctx.rank)
        logger.info(f"resumed {cfg.resume} at epoch {t.epoch}")
        entries = rank_entry_count(resume["queues"])
        if entries < ctx.world_size:
            logger.info(
                f"{cfg.resume} holds the IFC queues of {entries} process(es): ranks {entries}..{ctx.world_size - 1} "
                "start from rank 0's"
            )
        t.uff = resume.get("uff")
    t_train = time.perf_counter()
    fit(t, extractor, loader, sampler, cache, cfg, ctx, logger, out)
    train_seconds = time.perf_counter() - t_train
    metrics: dict[str, float] = {}
    if ctx.is_main:
        logger.info(
            f"adaptors trained for {cfg.optim.epochs} epochs ({t.iteration} iterations) in {train_seconds:.0f} s"
        )
        metrics = evaluate(t, extractor, root, classes, cfg, ctx, logger, out, per_class_cache)
        metrics.update(train_seconds=train_seconds, total_seconds=time.perf_counter() - t_start)
        logger.info(f"total {metrics['total_seconds']:.0f} s")
    logger.write_metrics(metrics)
    logger.close()
    return metrics


parse_args = script_parser(
    TrainConfig,
    f"{__doc__.splitlines()[0]} checkpoint_interval counts epochs; eval_interval must stay 0 (the banks are built and "
    "scored once, after the last epoch).",
    DEFAULT_CONFIG,
)


def main(cfg: TrainConfig) -> dict[str, float]:
    """Train the adaptors, build the memory banks and score every class; returns the metrics ({} off rank 0)."""
    if cfg.eval_interval:
        raise ValueError(
            f"eval_interval {cfg.eval_interval}: lsfa builds its memory banks and scores once, after "
            "the last epoch; leave eval_interval at 0 (re-score any last.pt with eval.py)"
        )
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    ctx = init_distributed(None if cfg.device == "auto" else cfg.device)
    try:
        check_batch_split(cfg.data.batch_size, ctx.world_size)  # before the run folder is claimed
        return _run(cfg, ctx)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main(parse_args())
