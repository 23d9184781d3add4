"""Plain cross-entropy training on given (hard or soft) labels: the CE baseline and the "naive retraining" stage.

Used by DMLP-Naive (CE on purified labels), by the CE-on-noisy-labels and clean-subset baselines, and by anm/crema
as their standard baseline. SGD with momentum and a step schedule (DivideMix's CIFAR optimiser by default), runs in
one process or under ``torchrun`` (DDP, gloo on CPU), writes a full-state checkpoint every epoch and resumes exactly
(model, optimizer, scheduler, epoch, accuracy tracker, RNG states).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from shared.checkpoint import capture_rng_state, reseed_other_ranks, restore_rng_state, save_checkpoint
from shared.distributed import DistContext, all_reduce_mean
from shared.logger import RunLogger
from shared.noisy.data import ViewDataset, balanced_subset
from shared.noisy.metrics import AccuracyTracker
from shared.training import check_finite, unwrap_model

__all__ = ["SupervisedConfig", "evaluate_accuracy", "set_learning_rate", "train_supervised"]


@dataclass
class SupervisedConfig:
    """CE training recipe (defaults: DivideMix's CIFAR optimiser, SGD 0.02, momentum 0.9, wd 5e-4)."""

    epochs: int = 300
    batch_size: int = field(default=128, metadata={"help": "images per process"})
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: list[int] = field(default_factory=lambda: [150], metadata={"help": "lr x gamma at these epochs"})
    gamma: float = 0.1
    epoch_samples: int | None = field(
        default=None,
        metadata={
            "help": "train each epoch on a fresh class-balanced sample (by the given labels) of this size, e.g. "
            "Clothing1M's per-epoch budget; null: every sample every epoch"
        },
    )
    num_workers: int = 0
    eval_batch_size: int = 512


@torch.no_grad()
def set_learning_rate(optimizers: Sequence[torch.optim.Optimizer], lr: float) -> float:
    """Set the learning rate of every parameter group of ``optimizers`` to ``lr``; returns ``lr``."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr
    return lr


def evaluate_accuracy(
    models: nn.Module | list[nn.Module],
    source: Any,
    labels: Any,
    transform: Callable[[Any], torch.Tensor],
    device: torch.device,
    batch_size: int = 512,
    num_workers: int = 0,
) -> float:
    """Top-1 accuracy (percent) of ``models`` (a list is an ensemble: summed logits, as DivideMix's test)."""
    models = models if isinstance(models, list) else [models]
    states = [m.training for m in models]
    for m in models:
        m.eval()
    labels = torch.as_tensor(np.array(labels), dtype=torch.int64)
    if isinstance(source, torch.Tensor):
        batches = (
            (transform(source[s : s + batch_size]), torch.arange(s, min(s + batch_size, len(source))))
            for s in range(0, len(source), batch_size)
        )
    else:
        batches = DataLoader(ViewDataset(source, transform), batch_size=batch_size, num_workers=num_workers)
    hits = 0
    for images, index in batches:
        logits = sum(m(images.to(device)) for m in models)
        hits += int((logits.argmax(1).cpu() == labels[index]).sum())
    for m, s in zip(models, states, strict=True):
        m.train(s)
    return 100.0 * hits / len(labels)


def train_supervised(
    model: nn.Module,
    source: Any,
    labels: Any,
    train_transform: Callable[[Any], torch.Tensor],
    test_source: Any,
    test_labels: Any,
    test_transform: Callable[[Any], torch.Tensor],
    cfg: SupervisedConfig,
    ctx: DistContext,
    logger: RunLogger,
    checkpoint_path: str | Path | None,
    indices: Any | None = None,
    resume_state: dict[str, Any] | None = None,
    seed: int = 0,
    tag: str = "ce",
    extra_state: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` with cross-entropy on ``labels`` and test it after every epoch.

    Args:
        model: the network (on ``ctx.device``); wrapped in DDP when ``ctx.distributed``.
        source: training images (uint8 tensor ``N x 3 x H x W`` or an indexable image source).
        labels: hard labels (``N``) or soft labels (``N x C``, soft cross-entropy) for every sample of ``source``.
        train_transform: per-image training transform.
        test_source, test_labels, test_transform: the clean test split.
        cfg: the optimiser recipe.
        ctx: process context (rank, world size, device).
        logger: the run logger (rank 0 writes).
        checkpoint_path: where the full state goes after every epoch (rank 0), or ``None``.
        indices: train only on these samples (e.g. the clean meta set); default all.
        resume_state: a state written by this function: training continues after its epoch.
        seed: seeds the sampler's shuffling (a function of seed and epoch only, for exact resumption).
        tag: name of the run in the log lines and checkpoint.
        extra_state: stored in every checkpoint under ``"extra"`` (e.g. the labels used).
        on_epoch_end: ``hook(epoch, row)`` called after the epoch's checkpoint is on disk.

    Returns:
        ``{"best": .., "best_epoch": .., "last": .., "epochs": ..}`` (test accuracy in percent).
    """
    labels = torch.as_tensor(np.array(labels))  # a copy: label files give read-only arrays
    labels = labels.float() if labels.ndim == 2 else labels.long()
    pool = np.arange(len(labels)) if indices is None else np.asarray(indices, dtype=np.int64)

    def epoch_loader(epoch: int) -> tuple[DataLoader, DistributedSampler]:
        chosen = pool
        if cfg.epoch_samples is not None:  # a function of (seed, epoch) only: identical on every rank and on resume
            hard = (labels.argmax(1) if labels.ndim == 2 else labels)[pool].numpy()
            num_classes = int(labels.shape[1]) if labels.ndim == 2 else int(labels.max()) + 1
            picked = balanced_subset(hard, cfg.epoch_samples, num_classes, np.random.default_rng([seed, epoch]))
            chosen = pool[picked]
        dataset = ViewDataset(source, train_transform, 1, chosen)
        sampler = DistributedSampler(
            dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True
        )
        sampler.set_epoch(epoch)
        loader = DataLoader(
            dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers, drop_last=True
        )
        if len(loader) == 0:
            raise ValueError(
                f"{tag}: batch_size {cfg.batch_size} x {ctx.world_size} processes exceeds the "
                f"{len(dataset)} training samples"
            )
        return loader, sampler

    loader, _ = epoch_loader(0)  # checks the batch size before anything is trained
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestones, cfg.gamma)
    tracker, start_epoch, step = AccuracyTracker(), 0, 0
    if resume_state is not None:
        unwrap_model(model).load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        tracker.load_state_dict(resume_state["tracker"])
        start_epoch, step = resume_state["epoch"] + 1, resume_state["step"]
        restore_rng_state(resume_state["rng"])
        reseed_other_ranks()  # the ranks drew apart before the checkpoint; they do again
        logger.info(f"{tag}: resumed at epoch {start_epoch}")
    train_model = model
    if ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None
        )
    for epoch in range(start_epoch, cfg.epochs):
        loader, _ = epoch_loader(epoch)
        train_model.train()
        loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
        for images, index in logger.progress(loader, desc=f"{tag} epoch {epoch}", total=len(loader)):
            images = images.to(ctx.device, non_blocking=True)
            target = labels[index].to(ctx.device)
            logits = train_model(images)
            if target.ndim == 2:
                loss = -(F.log_softmax(logits, 1) * target).sum(1).mean()
            else:
                loss = F.cross_entropy(logits, target)
            check_finite(loss, step, f"{tag} loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item() * len(images)
            seen += len(images)
        scheduler.step()
        elapsed = time.perf_counter() - t0
        acc = evaluate_accuracy(
            unwrap_model(model),
            test_source,
            test_labels,
            test_transform,
            ctx.device,
            cfg.eval_batch_size,
            cfg.num_workers,
        )
        tracker.update(acc, epoch)
        row = {
            "loss": all_reduce_mean(loss_sum / max(seen, 1)),
            "test_acc": acc,
            "lr": optimizer.param_groups[0]["lr"],
            "img_s": seen * ctx.world_size / elapsed,
        }
        if ctx.is_main and checkpoint_path is not None:
            save_checkpoint(
                {
                    "model": unwrap_model(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "tracker": tracker.state_dict(),
                    "epoch": epoch,
                    "step": step,
                    "rng": capture_rng_state(),
                    "tag": tag,
                    "extra": extra_state or {},
                },
                checkpoint_path,
            )
        logger.log_epoch(epoch, row)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    return {"best": tracker.best, "best_epoch": tracker.best_epoch, "last": tracker.last, "epochs": cfg.epochs}
