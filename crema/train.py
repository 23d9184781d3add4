"""Train CREMA (coarse-to-fine sample credibility) on noisy labels.

    cd crema && python train.py                                    # embedded default: synthetic CIFAR-10, 50 % sym
    python -m crema.train -c crema/configs/cifar10_sym50.yaml --data.root /data/cifar
    python -m crema.train -c crema/configs/imdb_sym40.yaml --data.root /data/imdb
    torchrun --nproc_per_node=2 -m crema.train -c crema/configs/cifar10_sym50.yaml --data.root /data/cifar

Writes to the run folder: config.yaml, noisy_labels.json, log.csv (per epoch: clean-set precision / recall, weights
of correct and wrong clean-set labels, updated labels and their accuracy, reversions, test accuracy), TensorBoard
scalars and the clean-set weight histogram, last.pt / best.pt and metrics.json. ``--resume runs/.../last.pt``
continues a run and ends where an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crema.coarse_to_fine import CremaTrainer
from crema.config import DEFAULT_CONFIG, PACKAGE, Config, check_config
from crema.data import NoisyTask, build_task, save_noise
from crema.model import create_model
from shared.checkpoint import load_resume_state, save_checkpoint
from shared.config import config_to_dict, save_config, script_parser
from shared.distributed import DistContext, seed_everything
from shared.entrypoints import run_logging, start_run
from shared.logger import RunLogger, claim_run_dir, resolve_run_dir
from shared.noisy.metrics import label_accuracy

__all__ = ["build_nets", "main", "parse_args"]

RESUME_KEYS = ("config", "net1", "opt1", "memories", "updates", "tracker", "epoch", "step", "rng")


def build_nets(cfg: Config, task: NoisyTask, device: torch.device) -> list[nn.Module]:
    """``model.num_nets`` networks of ``model.arch``, initialised from the run's seed (each its own draw)."""
    nets = []
    for _ in range(cfg.model.num_nets):
        overrides: dict[str, Any] = {}
        if cfg.model.arch.startswith("preact"):
            overrides["width"] = cfg.model.width
        elif cfg.model.arch == "resnet50":
            overrides["pretrained"] = cfg.model.pretrained
        elif cfg.model.arch.startswith("text"):
            overrides["vocab_size"] = task.vocab_size
        elif cfg.model.arch == "digits_mlp":
            overrides["in_features"] = int(task.train_source[0].numel())
        nets.append(create_model(cfg.model.arch, task.num_classes, **overrides).to(device))
    return nets


def _prepare(cfg: Config, ctx: DistContext) -> tuple[Path, NoisyTask, dict[str, Any] | None]:
    """Read and check everything (resume file, data, noise file, run folder) before anything is written."""
    state = load_resume_state(cfg, PACKAGE, required=RESUME_KEYS)
    out_dir = resolve_run_dir(PACKAGE, cfg.name or "default", cfg.output_dir, cfg.resume)
    task = build_task(cfg.data, out_dir)
    claim_run_dir(out_dir, PACKAGE, config_to_dict(cfg), resume=bool(cfg.resume), is_main=ctx.is_main)
    return out_dir, task, state


def _summary(trainer: CremaTrainer, task: NoisyTask, result: dict[str, Any], rows: list[dict]) -> dict[str, Any]:
    metrics: dict[str, Any] = {"test_acc_best": result["best"], "test_acc_last": result["last"]}
    metrics["best_epoch"] = result["best_epoch"]
    if task.clean_labels is not None:
        metrics["noisy_label_acc"] = label_accuracy(task.noisy_labels, task.clean_labels)
    if rows:
        last = rows[-1]
        for key in ("clean_n", "clean_precision", "clean_recall", "updated_n", "updated_label_acc", "reversions"):
            metrics[key] = last.get(key, math.nan)
        metrics["reversions_total"] = sum(
            r["reversions"] for r in rows if not math.isnan(r.get("reversions", math.nan))
        )
    return metrics


def _train(
    cfg: Config,
    ctx: DistContext,
    task: NoisyTask,
    nets: list[nn.Module],
    out_dir: Path,
    state: dict[str, Any] | None,
    logger: RunLogger,
    histograms: Any,
) -> dict[str, Any]:
    """The training run proper: the trainer's schedule, best.pt at each new best, metrics.json."""
    if cfg.model.arch == "resnet50" and cfg.model.pretrained is None:
        logger.info("ResNet-50 from random initialisation (the Clothing1M recipe needs --model.pretrained)")
    logger.info(
        f"run folder {out_dir} | {ctx.world_size} process(es) on {ctx.device} | {len(task.noisy_labels)} samples"
    )
    trainer = CremaTrainer(nets, task, cfg, ctx, logger, histograms)
    rows: list[dict[str, Any]] = []

    def on_epoch_end(epoch: int, row: dict[str, Any]) -> None:
        rows.append(row)
        if ctx.is_main and trainer.tracker.best_epoch == epoch:
            save_checkpoint(trainer.state_dict(), out_dir / "best.pt")

    wall0 = time.perf_counter()
    result = trainer.fit(out_dir / "last.pt", state, on_epoch_end)
    metrics = _summary(trainer, task, result, rows)
    metrics["wall_time_s"] = time.perf_counter() - wall0
    logger.write_metrics(metrics)
    logger.info(
        f"test accuracy best {metrics['test_acc_best']:.2f} / last {metrics['test_acc_last']:.2f} "
        f"({metrics['wall_time_s']:.0f} s); metrics in {out_dir / 'metrics.json'}"
    )
    return metrics


parse_args = script_parser(Config, __doc__.splitlines()[0], DEFAULT_CONFIG)


def main(cfg: Config) -> dict[str, Any]:
    """Train ``cfg`` in its run folder; returns the metrics (also written to metrics.json)."""
    check_config(cfg)
    ctx, (out_dir, task, state) = start_run(cfg, lambda ctx: _prepare(cfg, ctx))
    with run_logging(cfg, ctx, out_dir) as logger:
        histograms = None
        try:
            seed_everything(cfg.seed, 0)  # same initial weights on every rank
            nets = build_nets(cfg, task, ctx.device)
            seed_everything(cfg.seed, ctx.rank)
            if ctx.is_main:
                save_config(cfg, out_dir / "config.yaml")
                save_noise(cfg.data, task, out_dir)
                if cfg.tensorboard:
                    from torch.utils.tensorboard import SummaryWriter

                    histograms = SummaryWriter(log_dir=str(out_dir / "histograms"))
            return _train(cfg, ctx, task, nets, out_dir, state, logger, histograms)
        finally:
            if histograms is not None:
                histograms.close()


if __name__ == "__main__":
    main(parse_args())
