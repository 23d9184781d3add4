"""Train FRIH (or its iSSAM / iDIH stage 1 alone) on iHarmony4 or on the embedded synthetic iHarmony4 tree.

    cd frih && python train.py                                  # embedded default (configs/default.yaml), CPU
    python -m frih.train -c frih/configs/frih_iharmony4.yaml --data.root /data/iHarmony4
    torchrun --nproc_per_node=2 -m frih.train -c frih/configs/issam_iharmony4.yaml --data.root /data/iHarmony4

Writes config.yaml, train.log, log.csv, TensorBoard scalars, last.pt (every `checkpoint_interval` epochs and at the
end), best.pt (lowest test MSE among the evaluations, every `eval_interval` epochs and after the last), metrics.json
(final evaluation: composite-as-output vs stage 1 vs FRIH, per subset, "All" and foreground-ratio bins),
per_image.csv and before_after.png into the run folder runs/frih/<name>/<time>/ (`--output_dir` to choose it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from frih.config import DEFAULT_CONFIG, PACKAGE, Config, DataConfig, LossConfig, OptimConfig
from frih.evaluation import evaluate_model, row_names, write_evaluation
from frih.inference import Harmonizer
from frih.loaders import build_eval_loader, build_train_loader, resolve_data_root
from frih.losses import FRIHLoss
from frih.model import build_model, count_parameters, normalize_image
from shared.checkpoint import (
    load_checkpoint,
    load_resume_state,
    restore_training_state,
    save_last_and_best,
    training_state,
)
from shared.config import config_to_dict, save_config, script_parser
from shared.distributed import DistContext, barrier, cleanup_distributed, init_distributed, seed_everything
from shared.logger import RunLogger, claim_run_dir, resolve_run_dir
from shared.training import autocast, make_grad_scaler, optimizer_step, unwrap_model

__all__ = [
    "Config",
    "DataConfig",
    "LossConfig",
    "OptimConfig",
    "evaluate",
    "main",
    "parse_args",
    "train_and_evaluate",
    "train_one_epoch",
]

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
        raise RuntimeError(
            f"{path} does not match the stage-1 network: missing keys {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )


def build_training_model(cfg: Config, device: torch.device, logger: RunLogger) -> torch.nn.Module:
    """The network of `cfg.model` on `device` (initialised, then stage 1 from `stage1_pretrained` if given)."""
    model = build_model(cfg.model).to(device)
    if cfg.data.root is None:
        logger.info("embedded default: synthetic iHarmony4-format data, random initialisation")
    if cfg.stage1_pretrained:
        load_stage1_weights(model, cfg.stage1_pretrained)
        logger.info(f"stage 1 initialised from {cfg.stage1_pretrained}")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_optimizer(
    optim: OptimConfig, model: torch.nn.Module
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.MultiStepLR]:
    """Adam and the per-epoch MultiStepLR schedule of the iSSAM/iDIH reference."""
    optimizer = torch.optim.Adam(
        model.parameters(), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(optim.milestones), gamma=optim.gamma)
    return optimizer, scheduler


def build_criterion(loss: LossConfig) -> FRIHLoss:
    return FRIHLoss(
        min_area=loss.min_area,
        final_weight=loss.final_weight,
        coarse_weight=loss.coarse_weight,
        module_weight=loss.module_weight,
    )


def wrap_for_training(model: torch.nn.Module, cfg: Config, ctx: DistContext) -> torch.nn.Module:
    """torch.compile and/or DDP around `model` (the unwrapped model is what is evaluated and saved)."""
    train_model = torch.compile(model) if cfg.compile else model
    if ctx.distributed:
        # parameters without a gradient: FRIH's, given the loss terms (frih.model.FRIH.has_unused_parameters), and
        # stage 2 during the stage-1-only epochs; iSSAM / iDIH alone use every parameter
        unused = cfg.model.arch == "frih" and (
            model.has_unused_parameters(cfg.loss.coarse_weight, cfg.loss.module_weight) or cfg.stage1_epochs > 0
        )
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=unused,
        )
    return train_model


def train_one_epoch(
    model: torch.nn.Module,
    criterion: FRIHLoss,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    cfg: Config,
    epoch: int,
    step: int,
    logger: RunLogger,
) -> tuple[dict[str, float], int]:
    """One pass over `loader`; returns (mean loss terms, lr, images/s, seconds) and the global step after it.

    During the first `cfg.stage1_epochs` epochs of a FRIH run only stage 1 runs, trained on its own FN-MSE (logged
    as "coarse"); stage 2 gets no gradient and Adam leaves it untouched.
    """
    model.train()
    stage1_only = cfg.model.arch == "frih" and epoch < cfg.stage1_epochs
    totals: dict[str, float] = {}
    n_batches, n_images, t0 = 0, 0, time.perf_counter()
    for batch in logger.progress(loader, desc=f"epoch {epoch}", total=len(loader)):
        comp = normalize_image(batch["composite"].to(device, non_blocking=True))
        target = normalize_image(batch["target"].to(device, non_blocking=True))
        mask = batch["mask"].to(device, non_blocking=True)
        if cfg.channels_last:
            comp, target, mask = (t.contiguous(memory_format=torch.channels_last) for t in (comp, target, mask))
        with autocast(device, cfg.amp):
            outputs = model(comp, mask, stage1_only=True) if stage1_only else model(comp, mask)
        loss, parts = criterion(outputs, target, mask)  # FN-MSE casts to float32 (AMP-safe)
        if stage1_only:
            parts = {"coarse": parts["final"]}
        optimizer_step(loss, optimizer, scaler, step)
        step += 1
        n_batches += 1
        n_images += comp.shape[0]
        parts["loss"] = float(loss.detach())
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + v
        if step % cfg.log_interval == 0:
            logger.scalars({**parts, "lr": optimizer.param_groups[0]["lr"]}, step, prefix="train/")
    seconds = time.perf_counter() - t0
    stats = {k: v / max(n_batches, 1) for k, v in totals.items()}
    stats.update(lr=optimizer.param_groups[0]["lr"], images_per_s=n_images / max(seconds, 1e-9), epoch_s=seconds)
    return stats, step


def evaluate(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, cfg: Config
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """saic-vul protocol on `loader` at full resolution: (summary, per-image records, grid samples)."""
    harmonizer = Harmonizer(unwrap_model(model), device, mode="full", amp=cfg.amp)
    return evaluate_model(harmonizer, loader, cfg.model.arch, num_grid=cfg.num_grid_images)


def _epoch_due(epoch: int, interval: int) -> bool:
    return bool(interval) and (epoch + 1) % interval == 0


def train_and_evaluate(
    cfg: Config, ctx: DistContext, resume: dict[str, Any] | None, out_dir: Path, logger: RunLogger
) -> dict[str, Any]:
    """Build data, model and optimizer, run (or resume) the epochs, evaluate, write the results (rank 0)."""
    wall0 = time.perf_counter()
    device = ctx.device
    if ctx.is_main:
        save_config(cfg, out_dir / "config.yaml")
    seed_everything(cfg.seed, ctx.rank)
    root = resolve_data_root(cfg.data, ctx.is_main)
    train_loader, generator = build_train_loader(cfg.data, root, cfg.optim.batch_size, cfg.seed, ctx)
    test_loader = build_eval_loader(cfg.data, root, cfg.eval_batch_size) if ctx.is_main else None
    model = build_training_model(cfg, device, logger)
    n_params = count_parameters(model)
    arch = f"frih ({cfg.model.stage1} stage 1)" if cfg.model.arch == "frih" else cfg.model.arch
    logger.info(
        f"model {arch}: {n_params:,} parameters; {len(train_loader.dataset)} training composites from "
        f"{root}; device {device}, world size {ctx.world_size}"
    )
    optimizer, scheduler = build_optimizer(cfg.optim, model)
    scaler = make_grad_scaler(device, cfg.amp)
    criterion = build_criterion(cfg.loss)
    start_epoch, step, best_mse = 0, 0, float("inf")
    if resume is not None:
        restore_training_state(resume, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        start_epoch, step, best_mse = resume["epoch"] + 1, resume["step"], resume["best_mse"]
        logger.info(f"resumed from {cfg.resume} at epoch {start_epoch}")
    train_model = wrap_for_training(model, cfg, ctx)

    evaluation = None
    for epoch in range(start_epoch, cfg.optim.epochs):
        if ctx.distributed:
            train_loader.sampler.set_epoch(epoch)
        else:
            generator.manual_seed(cfg.seed * 100003 + epoch)  # resumable shuffling
        stats, step = train_one_epoch(
            train_model, criterion, train_loader, optimizer, scaler, device, cfg, epoch, step, logger
        )
        scheduler.step()
        last = epoch == cfg.optim.epochs - 1
        if ctx.is_main and (last or _epoch_due(epoch, cfg.eval_interval)):
            evaluation = evaluate(model, test_loader, device, cfg)
            main_row = row_names(cfg.model.arch)[1]
            stats.update({f"test_{k}": evaluation[0][main_row]["All"][k] for k in ("mse", "fmse", "psnr")})
        logger.log_epoch(epoch, stats)
        if ctx.is_main:
            is_best = "test_mse" in stats and stats["test_mse"] < best_mse
            if is_best:
                best_mse = stats["test_mse"]
            if is_best or last or _epoch_due(epoch, cfg.checkpoint_interval):
                state = training_state(
                    PACKAGE,
                    cfg,
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    scaler=scaler,
                    epoch=epoch,
                    step=step,
                    best_mse=best_mse,
                )
                save_last_and_best(state, out_dir, is_best)
        barrier()

    if not ctx.is_main:
        return {}
    if evaluation is None:  # resumed after the last epoch: evaluate the loaded weights
        evaluation = evaluate(model, test_loader, device, cfg)
    extra = {
        "params": n_params,
        "epochs": cfg.optim.epochs,
        "steps": step,
        "train_wall_s": time.perf_counter() - wall0,
        "device": str(device),
    }
    metrics = write_evaluation(
        out_dir, *evaluation, main_row=row_names(cfg.model.arch)[1], extra=extra, log=logger.info
    )
    logger.info(f"done in {extra['train_wall_s']:.0f} s; run folder {out_dir}")
    return metrics


parse_args = script_parser(Config, __doc__.splitlines()[0], DEFAULT_CONFIG)


def main(cfg: Config) -> dict[str, Any]:
    """Train with `cfg`; returns the final metrics (rank 0; {} on the other ranks)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = init_distributed(cfg.device)
    resume = load_resume_state(cfg, PACKAGE, required=_STATE_KEYS)  # before anything is written
    out_dir = resolve_run_dir(PACKAGE, cfg.name or "default", cfg.output_dir, cfg.resume)
    claim_run_dir(out_dir, PACKAGE, config_to_dict(cfg), resume=resume is not None, is_main=ctx.is_main)
    logger = RunLogger(out_dir, is_main=ctx.is_main, tensorboard=cfg.tensorboard)
    try:
        return train_and_evaluate(cfg, ctx, resume, out_dir, logger)
    finally:
        logger.close()
        cleanup_distributed()


if __name__ == "__main__":
    main(parse_args())
