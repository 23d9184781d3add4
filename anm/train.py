"""Train SANM (or its DivideMix / CE arms) on noisy labels.  Usage: python -m anm.train [-c FILE] [--key value ...]

    cd anm && python train.py                                    # embedded default: synthetic CIFAR-10, 50 % sym
    python -m anm.train -c anm/configs/cifar10_sym50.yaml --data.root data/cifar --model.pretrained PATH
    python -m anm.train -c anm/configs/clothing1m.yaml --data.root data/clothing1m --model.pretrained PATH
    python -m anm.train --resume runs/anm/default/<time>/last.pt

The two networks train as in DivideMix (co-divide, co-refinement, co-guessing, MixMatch) with SANM's masked groups
and reconstruction loss (anm/sanm.py). Every epoch tests the two-network ensemble and writes last.pt (atomic); with
a clean validation split (Clothing1M) the best-validation epoch is also written to best.pt and its test accuracy
reported. DivideMix's co-divide fits a GMM on the whole training set in one process: under torchrun the run is
refused (start it without torchrun). A non-finite loss stops the run naming the step; the last good last.pt stays.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from anm.config import DEFAULT_CONFIG, PACKAGE, Config, check_run_settings
from anm.data import NoisyTask, build_task, save_noise
from anm.engine import build_engine, build_models
from anm.sanm import SANM
from anm.visualize import attention_grid
from shared.checkpoint import load_resume_state, save_checkpoint
from shared.config import config_to_dict, save_config, script_parser
from shared.distributed import DistContext, seed_everything
from shared.entrypoints import run_logging, start_run
from shared.logger import claim_run_dir, resolve_run_dir
from shared.noisy.supervised import evaluate_accuracy


def prepare_run(cfg: Config, ctx: DistContext) -> tuple[Path, NoisyTask, dict[str, Any] | None]:
    """Refuse torchrun, read and check the --resume file and the data, then claim the run folder (nothing is
    written before)."""
    if ctx.world_size > 1:
        raise ValueError(
            "anm trains DivideMix's two networks in one process (its GMM co-divide needs the whole training "
            "set); start it without torchrun"
        )
    resume_state = load_resume_state(cfg, PACKAGE, required=("net1", "net2", "config", "epoch"))
    known_dir = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.resume).parent if cfg.resume else None
    task = build_task(cfg.data, known_dir, write_noise=False)
    out_dir = resolve_run_dir(PACKAGE, cfg.name, cfg.output_dir, cfg.resume)
    claim_run_dir(out_dir, PACKAGE, config_to_dict(cfg), resume=bool(cfg.resume))
    return out_dir, task, resume_state


#: per-epoch log values copied into metrics.json from the last epoch (what shows the mechanism engaging)
MECHANISM_KEYS = ("mask_ratio", "mask_pixels", "l_rec", "labeled", "labeled_precision", "labeled_recall")


class _Validation:
    """Clothing1M model selection: after each epoch, the ensemble's accuracy on the clean validation split (logged as
    ``val_acc``); the best epoch is written to best.pt and its test accuracy kept. The record lives in the engine's
    ``model_selection`` and so in every checkpoint: a resumed run compares against the best before the resume."""

    def __init__(self, engine: SANM, task: NoisyTask, out_dir: Path, cfg: Config):
        self.engine, self.task, self.out_dir, self.cfg = engine, task, out_dir, cfg
        engine.model_selection = {"best_val": -1.0, "test_at_best": float("nan"), "best_epoch": -1}

    def __call__(self, epoch: int, row: dict[str, Any]) -> None:
        acc = evaluate_accuracy(
            self.engine.nets,
            self.task.val_source,
            self.task.val_labels,
            self.task.eval_transform,
            self.engine.device,
            self.cfg.dividemix.eval_batch_size,
            self.cfg.dividemix.num_workers,
        )
        row["val_acc"] = acc
        record = self.engine.model_selection
        if acc > record["best_val"]:
            record.update(best_val=acc, test_at_best=row["test_acc"], best_epoch=epoch)
            save_checkpoint(self.engine.state_dict(), self.out_dir / "best.pt")

    @property
    def metrics(self) -> dict[str, float]:
        record = self.engine.model_selection
        return {
            "val_acc_best": record["best_val"],
            "test_acc_at_best_val": record["test_at_best"],
            "best_val_epoch": record["best_epoch"],
        }


parse_args = script_parser(Config, __doc__.splitlines()[0], DEFAULT_CONFIG)


def main(cfg: Config) -> dict[str, Any]:
    """Train in ``cfg``'s run folder; returns the metrics (also written to metrics.json)."""
    check_run_settings(cfg)
    ctx, (out_dir, task, resume_state) = start_run(cfg, lambda ctx: prepare_run(cfg, ctx))
    with run_logging(cfg, ctx, out_dir) as logger:
        wall0 = time.perf_counter()
        seed_everything(cfg.seed, 0)
        save_config(cfg, out_dir / "config.yaml")
        save_noise(cfg.data, task, out_dir)
        logger.info(f"run folder {out_dir} | {cfg.sanm.method} on {ctx.device}")
        engine = build_engine(cfg, task, build_models(cfg, task.num_classes, logger), ctx.device, logger)
        validation = _Validation(engine, task, out_dir, cfg) if task.val_source is not None else None
        last_row: dict[str, Any] = {}

        def on_epoch_end(epoch: int, row: dict[str, Any]) -> None:
            if validation is not None:
                validation(epoch, row)
            last_row.clear()
            last_row.update(row)

        result = engine.fit(out_dir / "last.pt", resume_state, on_epoch_end=on_epoch_end)
        metrics: dict[str, Any] = {
            "method": cfg.sanm.method,
            "test_acc_last": result["last"],
            "test_acc_best": result["best"],
            "best_epoch": result["best_epoch"],
            "wall_time_s": time.perf_counter() - wall0,
        }
        for key in MECHANISM_KEYS:  # both networks' values of the last epoch, averaged
            values = [last_row[f"{key}{k}"] for k in (1, 2) if f"{key}{k}" in last_row]
            if values:
                metrics[f"last_epoch_{key}"] = sum(values) / len(values)
        if validation is not None:
            metrics.update(validation.metrics)
        if cfg.sanm.method == "sanm" and isinstance(task.test_source, torch.Tensor):
            rows = range(min(8, len(task.test_source)))
            images = torch.stack([task.eval_transform(task.test_source[i]) for i in rows]).to(ctx.device)
            attention_grid(engine.nets[0], images, out_dir / "attention_masks.png", 0.5, cfg.sanm.masker, cfg.seed)
        logger.write_metrics(metrics)
        logger.info(
            f"test accuracy (2-net ensemble): last {metrics['test_acc_last']:.2f} | best {metrics['test_acc_best']:.2f}"
        )
        return metrics


if __name__ == "__main__":
    main(parse_args())
