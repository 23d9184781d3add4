"""DMLP chain: self-supervised features -> meta label purification (IPC + EAC) -> retraining (Naive or DivideMix).

    cd dmlp && python train.py                                 # embedded default: synthetic CIFAR-10, 80 % sym noise
    python -m dmlp.train -c dmlp/configs/cifar10_sym80.yaml --data.root /data/cifar
    python -m dmlp.train -c dmlp/configs/cifar10_sym80_dividemix.yaml --data.root /data/cifar
    torchrun --nproc_per_node=2 -m dmlp.train -c dmlp/configs/cifar10_sym80.yaml --data.root /data/cifar

Stages (``--stages``, any subset in order; a stage whose output exists in the run folder is reused when it records
the same config fragment and data digests as this run would write, otherwise it is rebuilt, see dmlp/provenance.py):
  ssl      SimCLR on the training images (CIFAR) or an external checkpoint (``--ssl.checkpoint``) -> ssl.pt
  purify   frozen features -> IPC + EAC -> purified_labels.json (hard + soft, noise-file format), purifier.pt
  retrain  DMLP-Naive (CE on the purified labels) or DMLP-DivideMix, plus the baselines ``retrain.baselines``
           (CE on the noisy labels + the meta rows' true labels, CE on the meta set only) -> last.pt, metrics.json
Under torchrun the ssl and purify stages run on rank 0 (the others wait); the CE retraining runs DDP.
``--resume PATH`` must name a dmlp checkpoint of the run (its last.pt or a stage file); anything else is refused
before the run writes anything. A non-finite (or diverged) stage stops with an error naming the stage.
The stages themselves are in dmlp/stages.py; this script checks and claims the run folder, runs them and writes
last.pt (what eval.py reads).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from dmlp.config import DEFAULT_CONFIG, PINNED_RUN_KEYS, Config, check_run_settings
from dmlp.data import NoisyTask, build_task, save_noise
from dmlp.provenance import PACKAGE, verify_resume_file
from dmlp.stages import features_of, run_purify, run_retrain, run_ssl, stage_guard, summary
from shared.checkpoint import save_checkpoint
from shared.config import config_to_dict, save_config, script_parser
from shared.distributed import DistContext, barrier, seed_everything
from shared.entrypoints import run_logging, start_run
from shared.logger import RunLogger, claim_run_dir, resolve_run_dir
from shared.noisy.data import load_label_file
from shared.noisy.metrics import label_accuracy


def claimed_config(cfg: Config) -> dict[str, Any]:
    """The config recorded in the run folder's RUN.json; ``stages`` is left out (which stages run now is not part
    of what the folder holds: each stage file records its own provenance), and so are the RunConfig keys that dmlp
    pins (:data:`dmlp.config.PINNED_RUN_KEYS`)."""
    return {k: v for k, v in config_to_dict(cfg).items() if k not in ("stages", *PINNED_RUN_KEYS)}


def prepare_run(cfg: Config, ctx: DistContext) -> tuple[Path, NoisyTask]:
    """Check everything that can be checked before the run folder is touched, then claim it.

    Order: the --resume file is read and verified (a missing, text or foreign file is refused), the data and an
    existing noise file are read (a noise file of another recipe is refused), the folder's RUN.json is checked
    (another package's folder or another config is refused); only then is anything written.
    """
    if cfg.resume:
        verify_resume_file(cfg.resume, {*claimed_config(cfg), "stages"})
        if cfg.output_dir and Path(cfg.output_dir).resolve() != Path(cfg.resume).resolve().parent:
            raise ValueError(
                f"--resume {cfg.resume} belongs to the run folder {Path(cfg.resume).parent}, but "
                f"--output_dir is {cfg.output_dir}; give one of them"
            )
    known_dir = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.resume).parent if cfg.resume else None
    task = build_task(cfg.data, known_dir, write_noise=False)
    out_dir = resolve_run_dir(PACKAGE, cfg.name, cfg.output_dir, cfg.resume)
    claim_run_dir(
        out_dir, PACKAGE, claimed_config(cfg), resume=bool(cfg.resume), is_main=ctx.is_main, reuse_results=True
    )
    return out_dir, task


def run_stages(
    cfg: Config, task: NoisyTask, out_dir: Path, ctx: DistContext, logger: RunLogger
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The selected stages in order; returns (metrics, the retrained models' state dicts)."""
    metrics: dict[str, Any] = {
        "dataset": cfg.data.dataset if cfg.data.root else f"synthetic {cfg.data.dataset}",
        "noise": f"{cfg.data.noise_type} {cfg.data.noise_rate}",
    }
    if task.clean_labels is not None:
        metrics["label_acc_noisy_all"] = label_accuracy(task.noisy_labels, task.clean_labels)
    if ctx.is_main and ("purify" in cfg.stages or "ssl" in cfg.stages):
        with stage_guard("ssl"):
            encoder = run_ssl(cfg, task, out_dir, ctx.device, logger)
        if "purify" in cfg.stages:
            with stage_guard("ssl"):
                feats = features_of(cfg, task, encoder, out_dir, ctx.device, logger)
            with stage_guard("purify"):
                metrics.update(run_purify(cfg, task, feats, out_dir, ctx.device, logger))
    barrier()
    task = build_task(cfg.data, out_dir, write_noise=False) if ctx.rank else task
    states: dict[str, Any] = {}
    if "retrain" in cfg.stages:
        seed_everything(cfg.seed, ctx.rank)
        with stage_guard("retrain"):
            retrain_metrics, states = run_retrain(cfg, task, out_dir, ctx, logger)
        metrics.update(retrain_metrics)
    return metrics, states


def save_results(cfg: Config, task: NoisyTask, metrics: dict[str, Any], states: dict[str, Any], out_dir: Path) -> Path:
    """last.pt: the config, the retrained models, the finite metrics and the noisy / purified / clean labels."""
    bundle = {
        "package": PACKAGE,
        "config": config_to_dict(cfg),
        "models": states,
        "metrics": {
            k: v
            for k, v in metrics.items()
            if isinstance(v, (int, float, str)) and not (isinstance(v, float) and math.isnan(v))
        },
    }
    purified = out_dir / "purified_labels.json"
    if purified.is_file():
        record = load_label_file(purified)
        bundle["purified_labels"] = torch.from_numpy(record.labels.copy())
    bundle["noisy_labels"] = task.noisy_labels
    if task.clean_labels is not None:
        bundle["clean_labels"] = task.clean_labels
        if task.meta_indices is not None:
            bundle["meta_indices"] = task.meta_indices
    return save_checkpoint(bundle, out_dir / "last.pt")


parse_args = script_parser(Config, __doc__.splitlines()[0], DEFAULT_CONFIG)


def main(cfg: Config) -> dict[str, Any]:
    """Run the selected stages of ``cfg`` in its run folder; returns the metrics (also in metrics.json)."""
    check_run_settings(cfg)
    ctx, (out_dir, task) = start_run(cfg, lambda ctx: prepare_run(cfg, ctx))
    with run_logging(cfg, ctx, out_dir) as logger:
        wall0 = time.perf_counter()
        seed_everything(cfg.seed, 0)
        if ctx.is_main:
            save_config(cfg, out_dir / "config.yaml")
            save_noise(cfg.data, task, out_dir)
        logger.info(f"run folder {out_dir} | {ctx.world_size} process(es) on {ctx.device}")
        metrics, states = run_stages(cfg, task, out_dir, ctx, logger)
        metrics["wall_time_s"] = time.perf_counter() - wall0
        if ctx.is_main:
            save_results(cfg, task, metrics, states, out_dir)
            logger.write_metrics(metrics)
            logger.info(summary(metrics))
        return metrics


if __name__ == "__main__":
    main(parse_args())
