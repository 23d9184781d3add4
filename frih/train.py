"""Train FRIH (or its iSSAM / iDIH stage 1 alone) on iHarmony4 or on the embedded synthetic iHarmony4 tree.

    cd frih && python train.py                                  # embedded default (configs/default.yaml), CPU
    python -m frih.train -c frih/configs/frih_iharmony4.yaml --data.root /data/iHarmony4
    torchrun --nproc_per_node=2 -m frih.train -c frih/configs/issam_iharmony4.yaml --data.root /data/iHarmony4

Writes config.yaml, train.log, log.csv, TensorBoard scalars, last.pt (every epoch), best.pt (lowest test MSE among
the evaluations), metrics.json (final evaluation: composite-as-output vs stage 1 vs FRIH, per subset, "All" and
foreground-ratio bins), per_image.csv and before_after.png into the run folder.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from frih.data import SUBSETS, EvalTransform, IHarmony4Dataset, TrainTransform, collate
from frih.evaluation import evaluate_harmonizer, flat_metrics, format_table, save_grid, summarize, write_per_image
from frih.inference import Harmonizer
from frih.losses import FRIHLoss
from frih.model import FRIHConfig, build_model, count_parameters, normalize_image
from shared.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_last_and_best
from shared.config import config_to_dict, parse_config, save_config
from shared.distributed import (
    barrier,
    cleanup_distributed,
    init_distributed,
    seed_everything,
    seed_worker,
)
from shared.logger import RunLogger, claim_run_dir, resolve_run_dir
from shared.training import autocast, make_grad_scaler, optimizer_step, unwrap_model

PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass
class DataConfig:
    root: str | None = field(default=None, metadata={"help": "iHarmony4 root; null = the embedded synthetic tree"})
    subsets: list[str] = field(default_factory=lambda: list(SUBSETS), metadata={"help": "training subsets"})
    test_subsets: list[str] | None = field(default=None, metadata={"help": "evaluation subsets (null = subsets)"})
    split_source: Literal["subset", "ihd"] = "subset"
    crop_size: int = field(default=256, metadata={"help": "RandomResizedCrop output side"})
    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip_p: float = 0.5
    keep_background_prob: float = 0.05
    eval_size: int = field(default=256, metadata={"help": "test-time Resize side (0 = native resolution)"})
    num_workers: int = 4
    synthetic_size: int = field(default=96, metadata={"help": "synthetic tree: image side"})
    synthetic_num_real: int = field(default=32, metadata={"help": "synthetic tree: real images per subset"})
    synthetic_seed: int = 0
    synthetic_root: str | None = field(default=None, metadata={
        "help": "synthetic tree cache folder (null: <synthetic_root()>/frih_iharmony4_s<size>_n<num>_seed<seed>)"})


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    batch_size: int = field(default=16, metadata={"help": "images per process"})
    epochs: int = 120
    milestones: list[int] = field(default_factory=lambda: [105, 115], metadata={"help": "MultiStepLR epochs"})
    gamma: float = 0.1


@dataclass
class LossConfig:
    min_area: float = field(default=100.0, metadata={"help": "FN-MSE A_min (iDIH 100, iSSAM's config 1000)"})
    final_weight: float = 1.0
    coarse_weight: float = field(default=1.0, metadata={"help": "FN-MSE on the stage-1 output [HYP]"})
    module_weight: float = field(default=1.0, metadata={"help": "FN-MSE of each module inside its submask [HYP]"})


@dataclass
class Config:
    name: str = field(default="default", metadata={"help": "run name: runs/frih/<name>/<time>"})
    model: FRIHConfig = field(default_factory=FRIHConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    output_dir: str | None = None
    resume: str | None = field(default=None, metadata={"help": "checkpoint to resume from (full state)"})
    stage1_pretrained: str | None = field(default=None, metadata={"help": "state_dict file for stage 1 (iSSAM/iDIH)"})
    seed: int = 0
    device: str | None = field(default=None, metadata={"help": "cuda / cpu (null: cuda when available)"})
    threads: int | None = field(default=None, metadata={"help": "torch intra-op CPU threads (null: torch default)"})
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False
    eval_every: int = field(default=0, metadata={"help": "evaluate every N epochs (0: only after the last)"})
    eval_batch_size: int = 16
    num_grid_images: int = 8
    log_every: int = 20


def resolve_data_root(data: DataConfig, is_main: bool = True) -> Path:
    """The configured iHarmony4 root, or the cached synthetic tree (generated on rank 0 on first use)."""
    if data.root is not None:
        return Path(data.root)
    from frih.synthetic import ensure_synthetic_iharmony4

    args = (data.synthetic_size, data.synthetic_num_real, data.synthetic_seed, data.synthetic_root)
    if is_main:
        root = ensure_synthetic_iharmony4(*args)
    barrier()
    if not is_main:
        root = ensure_synthetic_iharmony4(*args)
    return root


def build_eval_loader(data: DataConfig, root: Path, batch_size: int, split: str = "test",
                      num_workers: int | None = None) -> DataLoader:
    ds = IHarmony4Dataset(root, data.test_subsets or data.subsets, split,
                          EvalTransform(data.eval_size or None), split_source=data.split_source)
    workers = data.num_workers if num_workers is None else num_workers
    return DataLoader(ds, batch_size=batch_size if data.eval_size else 1, shuffle=False, num_workers=workers,
                      collate_fn=collate)


_STATE_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "best_mse", "rng")


def load_stage1_weights(model: torch.nn.Module, path: str) -> None:
    """Load an iSSAM/iDIH state_dict (raw, or under "model"/"state_dict") into stage 1 (or the stage-1-only model)."""
    state = load_checkpoint(path)
    for key in ("model", "state_dict"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
    target = model.stage1 if hasattr(model, "stage1") else model
    missing, unexpected = target.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{path} does not match the stage-1 network: missing keys {missing[:5]}"
                           f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                           f"{'...' if len(unexpected) > 5 else ''}")


def train_one_epoch(model: torch.nn.Module, criterion: FRIHLoss, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, device: torch.device, cfg: Config, epoch: int, step: int,
                    logger: RunLogger) -> tuple[dict[str, float], int]:
    model.train()
    totals: dict[str, float] = {}
    n_batches, n_images, t0 = 0, 0, time.perf_counter()
    for batch in logger.progress(loader, desc=f"epoch {epoch}", total=len(loader)):
        comp = normalize_image(batch["composite"].to(device, non_blocking=True))
        target = normalize_image(batch["target"].to(device, non_blocking=True))
        mask = batch["mask"].to(device, non_blocking=True)
        if cfg.channels_last:
            comp, target, mask = (t.contiguous(memory_format=torch.channels_last) for t in (comp, target, mask))
        with autocast(device, cfg.amp):
            outputs = model(comp, mask)
        loss, parts = criterion(outputs, target, mask)  # FN-MSE casts to float32 (AMP-safe)
        optimizer_step(loss, optimizer, scaler, step)
        step += 1
        n_batches += 1
        n_images += comp.shape[0]
        parts["loss"] = float(loss.detach())
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + v
        if step % cfg.log_every == 0:
            logger.scalars({**parts, "lr": optimizer.param_groups[0]["lr"]}, step, prefix="train/")
    seconds = time.perf_counter() - t0
    stats = {k: v / max(n_batches, 1) for k, v in totals.items()}
    stats.update(lr=optimizer.param_groups[0]["lr"], images_per_s=n_images / max(seconds, 1e-9), epoch_s=seconds)
    return stats, step


def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device, cfg_model: FRIHConfig, amp: str,
             num_grid: int) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """saic-vul protocol on `loader`: (summary, per-image records, grid samples)."""
    stage1_name = "stage1" if cfg_model.arch == "frih" else cfg_model.arch
    harmonizer = Harmonizer(unwrap_model(model), device, mode="full", amp=amp)
    records, grid = evaluate_harmonizer(harmonizer, loader, stage1_name=stage1_name, num_grid=num_grid)
    return summarize(records), records, grid


def write_evaluation(out_dir: Path, summary: dict[str, Any], records: list[dict[str, Any]],
                     grid: list[dict[str, Any]], main_row: str, extra: dict[str, Any],
                     logger: RunLogger | None = None) -> dict[str, Any]:
    """metrics.json + per_image.csv + before_after.png into `out_dir`; prints the table. Returns the metrics."""
    from shared.logger import write_json

    metrics = {**flat_metrics(summary, main_row), **extra}
    write_json(metrics, out_dir / "metrics.json")
    write_per_image(records, out_dir / "per_image.csv")
    save_grid(grid, out_dir / "before_after.png")
    table = format_table(summary)
    (logger.info if logger is not None else print)("\n" + table)
    (out_dir / "results.md").write_text(table + "\n")
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse_config(Config, argv, description=__doc__.splitlines()[0],
                       default_config=PACKAGE_DIR / "configs" / "default.yaml")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = init_distributed(cfg.device)
    device = ctx.device
    resume = load_checkpoint(cfg.resume, package="frih", required=_STATE_KEYS) if cfg.resume else None
    out_dir = resolve_run_dir("frih", cfg.name, cfg.output_dir, cfg.resume)
    claim_run_dir(out_dir, "frih", config_to_dict(cfg), resume=resume is not None, is_main=ctx.is_main)
    logger = RunLogger(out_dir, is_main=ctx.is_main)
    wall0 = time.perf_counter()
    try:
        if ctx.is_main:
            save_config(cfg, out_dir / "config.yaml")
        seed_everything(cfg.seed, ctx.rank)
        root = resolve_data_root(cfg.data, ctx.is_main)
        train_ds = IHarmony4Dataset(root, cfg.data.subsets, "train",
                                    TrainTransform(cfg.data.crop_size, tuple(cfg.data.crop_scale),
                                                   flip_p=cfg.data.flip_p,
                                                   keep_background_prob=cfg.data.keep_background_prob),
                                    split_source=cfg.data.split_source)
        if len(train_ds) < cfg.optim.batch_size * ctx.world_size:
            raise ValueError(f"{len(train_ds)} training images < one batch ({cfg.optim.batch_size} x "
                             f"{ctx.world_size} processes)")
        generator = torch.Generator()
        sampler = (DistributedSampler(train_ds, shuffle=True, seed=cfg.seed, drop_last=True) if ctx.distributed
                   else RandomSampler(train_ds, generator=generator))
        train_loader = DataLoader(train_ds, batch_size=cfg.optim.batch_size, sampler=sampler, drop_last=True,
                                  num_workers=cfg.data.num_workers, collate_fn=collate, worker_init_fn=seed_worker,
                                  pin_memory=device.type == "cuda", persistent_workers=False)
        test_loader = build_eval_loader(cfg.data, root, cfg.eval_batch_size) if ctx.is_main else None

        model = build_model(cfg.model).to(device)
        if cfg.data.root is None:
            logger.info("embedded default: synthetic iHarmony4-format data, random initialisation")
        if cfg.stage1_pretrained:
            load_stage1_weights(model, cfg.stage1_pretrained)
            logger.info(f"stage 1 initialised from {cfg.stage1_pretrained}")
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        n_params = count_parameters(model)
        arch = f"frih ({cfg.model.stage1} stage 1)" if cfg.model.arch == "frih" else cfg.model.arch
        logger.info(f"model {arch}: {n_params:,} parameters; "
                    f"{len(train_ds)} training composites from {root}; device {device}, world size {ctx.world_size}")
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                     eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.optim.milestones),
                                                         gamma=cfg.optim.gamma)
        scaler = make_grad_scaler(device, cfg.amp)
        criterion = FRIHLoss(cfg.loss.min_area, cfg.loss.final_weight, cfg.loss.coarse_weight, cfg.loss.module_weight)
        start_epoch, step, best_mse = 0, 0, float("inf")
        if resume is not None:
            state = resume
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            start_epoch, step, best_mse = state["epoch"] + 1, state["step"], state["best_mse"]
            restore_rng_state(state["rng"])
            logger.info(f"resumed from {cfg.resume} at epoch {start_epoch}")
        train_model = model
        if cfg.compile:
            train_model = torch.compile(train_model)
        if ctx.distributed:
            unused = getattr(model, "has_unused_parameters", False) and not cfg.loss.module_weight
            train_model = torch.nn.parallel.DistributedDataParallel(
                train_model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=unused)

        evaluation = None
        for epoch in range(start_epoch, cfg.optim.epochs):
            if ctx.distributed:
                sampler.set_epoch(epoch)
            else:
                generator.manual_seed(cfg.seed * 100003 + epoch)  # resumable shuffling
            stats, step = train_one_epoch(train_model, criterion, train_loader, optimizer, scaler, device, cfg,
                                          epoch, step, logger)
            scheduler.step()
            last = epoch == cfg.optim.epochs - 1
            if ctx.is_main and (last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0)):
                evaluation = evaluate(model, test_loader, device, cfg.model, cfg.amp, cfg.num_grid_images)
                main_row = "frih" if cfg.model.arch == "frih" else cfg.model.arch
                stats.update({f"test_{k}": evaluation[0][main_row]["All"][k] for k in ("mse", "fmse", "psnr")})
            logger.log_epoch(epoch, stats)
            if ctx.is_main:
                state = {"package": "frih", "model": unwrap_model(model).state_dict(),
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "scaler": scaler.state_dict(), "epoch": epoch, "step": step, "best_mse": best_mse,
                         "rng": capture_rng_state(), "config": config_to_dict(cfg)}
                is_best = "test_mse" in stats and stats["test_mse"] < best_mse
                if is_best:
                    best_mse = state["best_mse"] = stats["test_mse"]
                save_last_and_best(state, out_dir, is_best)
            barrier()

        metrics: dict[str, Any] = {}
        if ctx.is_main:
            if evaluation is None:  # resumed after the last epoch: evaluate the loaded weights
                evaluation = evaluate(model, test_loader, device, cfg.model, cfg.amp, cfg.num_grid_images)
            main_row = "frih" if cfg.model.arch == "frih" else cfg.model.arch
            extra = {"params": n_params, "epochs": cfg.optim.epochs, "steps": step,
                     "train_wall_s": time.perf_counter() - wall0, "device": str(device)}
            metrics = write_evaluation(out_dir, *evaluation, main_row=main_row, extra=extra, logger=logger)
            logger.info(f"done in {extra['train_wall_s']:.0f} s; run folder {out_dir}")
        return metrics
    finally:
        logger.close()
        cleanup_distributed()


if __name__ == "__main__":
    main()
