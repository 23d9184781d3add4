"""Train SLEEG's OoD head on a frozen DeepLabv3 segmentor, then evaluate max-softmax, energy and SLEEG.

    python train.py                                   # embedded default: synthetic scenes, small segmentor, CPU
    python train.py -c configs/cityscapes_r101.yaml --segmentor.checkpoint iter_40000.pth   # the paper's recipe
    torchrun --nproc_per_node=8 train.py -c configs/cityscapes_r101.yaml --segmentor.checkpoint ...

Phases (both resumable with ``--resume <run>/last.pt``; intervals count iterations):

1. segmentor: load ``--segmentor.checkpoint`` (the authors' mmseg ``iter_40000.pth`` or ``train_segmentor.py``'s
   ``last.pt``), or, when ``segmentor.train.iters > 0`` (the embedded default), train it here first with
   ``train_segmentor.py``'s loop;
2. OoD head (``iters`` of ``optim``, :func:`train_steps`): self-generated anomalies (pool + convex-polygon pastes),
   likelihood-guided Otsu refinement, TAE cross-entropy + 0.05 x TORE hinge, SGD with the poly schedule; only the
   head trains.

Writes ``config.yaml``, ``train.log``, ``log.csv``, TensorBoard scalars, ``last.pt`` (+ ``best.pt`` with periodic
evaluation) and ``metrics.json`` (the evaluation of ``eval.datasets``, as ``eval.py`` computes it).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energy_anomaly_seg import train_segmentor
from energy_anomaly_seg.config import CONFIG_DIR, PACKAGE, AnomalyConfig, TrainConfig
from energy_anomaly_seg.data import CityscapesSegmentation, build_train_loader, resolve_cityscapes_root
from energy_anomaly_seg.evaluation import check_eval_datasets, evaluate_datasets
from energy_anomaly_seg.mmseg_checkpoint import load_backbone_pretrained, load_mmseg_checkpoint
from energy_anomaly_seg.model import SLEEG, count_parameters, create_model
from energy_anomaly_seg.self_generated_anomalies import AnomalyPatchPool
from energy_anomaly_seg.sleeg import SLEEGSettings, sleeg_losses
from shared.checkpoint import (
    CheckpointError,
    check_resume_state,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from shared.config import config_to_dict, save_config, script_parser
from shared.distributed import (
    DistContext,
    cleanup_distributed,
    gather_rank_states,
    init_distributed,
    own_rank_entry,
    rank_entry_count,
    seed_everything,
)
from shared.logger import RunLogger, claim_run_dir, resolve_run_dir
from shared.training import autocast, check_finite_parameters, make_grad_scaler, optimizer_step

__all__ = [
    "TrainConfig",
    "evaluate",
    "main",
    "make_pool",
    "parse_args",
    "read_resume_state",
    "run_phases",
    "sleeg_settings",
    "train_steps",
]

DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
#: What an ood_head-phase checkpoint holds besides the segmentor phase's keys.
OOD_HEAD_KEYS = ("pool", "generator")


# builders ------------------------------------------------------------------------------------------------------------
def sleeg_settings(cfg: TrainConfig) -> SLEEGSettings:
    """The OoD-head step's settings: every ``objective`` key plus the pastes of ``anomalies``."""
    return SLEEGSettings(
        **dataclasses.asdict(cfg.objective),
        pastes_per_image=cfg.anomalies.pastes_per_image,
        noise_ratio=cfg.anomalies.noise_ratio,
    )


def make_pool(cfg: AnomalyConfig) -> AnomalyPatchPool:
    return AnomalyPatchPool(
        pool_size=cfg.pool_size,
        crops_per_image=cfg.crops_per_image,
        area_range=tuple(cfg.area_range),
        aspect_range=tuple(cfg.aspect_range),
        polygon=cfg.polygon,
        hull_points=cfg.hull_points,
        harris_k=cfg.harris_k,
    )


def _checked_resume_state(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg.resume`` read (:func:`read_resume_state`) and compared with ``cfg``: an OoD-head checkpoint in
    ``TrainConfig.RESUME_SECTIONS``; a segmentor-phase one in ``model`` only, since no OoD head has been trained from
    it yet (the evidence rows branch there, each with its own anomalies and objective)."""
    state = read_resume_state(cfg.resume)
    return check_resume_state(cfg, state, None if state["phase"] == "ood_head" else ("model",))


def read_resume_state(path: str | Path) -> dict[str, Any]:
    """The checkpoint to resume, read and checked before anything is written: a ``train.py`` (or
    ``train_segmentor.py``) checkpoint with every key its phase needs, else ``CheckpointError``."""
    state = train_segmentor.read_resume_state(path)
    missing = [key for key in OOD_HEAD_KEYS if key not in state]
    if state["phase"] not in ("segmentor", "ood_head") or (state["phase"] == "ood_head" and missing):
        raise CheckpointError(
            f"not a {PACKAGE} checkpoint: {path} has phase {state['phase']!r}"
            + (f" but lacks {', '.join(map(repr, missing))}" if missing else "")
        )
    if not any(key.startswith("patch_head.") for key in state["model"]):
        raise CheckpointError(
            f"not a train.py checkpoint: {path} holds a segmentor without an OoD head "
            "(train_segmentor.py's last.pt); pass it as --segmentor.checkpoint instead"
        )
    return state


def build_model(cfg: TrainConfig, ctx: DistContext) -> SLEEG:
    model = create_model(
        cfg.model.variant,
        num_classes=cfg.model.num_classes,
        segmentor_dropout_in_train=cfg.model.segmentor_dropout_in_train,
    )
    if ctx.distributed and ctx.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(ctx.device)


@dataclasses.dataclass
class Run:
    """What the two phases share: the config, the process, the run folder and logger, the model and the metrics."""

    cfg: TrainConfig
    ctx: DistContext
    out: Path
    logger: RunLogger
    model: SLEEG
    metrics: dict[str, Any]

    def save(self, name: str = "last.pt", **components: Any) -> None:
        """``training_state`` of the model, the metrics so far and `components` (phase, iteration, optimizer ...)."""
        if self.ctx.is_main:
            save_checkpoint(
                training_state(PACKAGE, self.cfg, **components, model=self.model, metrics=dict(self.metrics)),
                self.out / name,
            )


def start_run(cfg: TrainConfig, ctx: DistContext, resuming: bool) -> Run:
    """Claim the run folder, open the logger, write config.yaml, seed, build the model."""
    out = resolve_run_dir(PACKAGE, cfg.name, cfg.output_dir, cfg.resume)
    claim_run_dir(out, PACKAGE, config_to_dict(cfg), resume=resuming, is_main=ctx.is_main)
    logger = RunLogger(out, is_main=ctx.is_main, tensorboard=cfg.tensorboard)
    if ctx.is_main:
        save_config(cfg, out / "config.yaml")
    seed_everything(cfg.seed, ctx.rank)
    return Run(cfg=cfg, ctx=ctx, out=out, logger=logger, model=build_model(cfg, ctx), metrics={})


# phase 1 -------------------------------------------------------------------------------------------------------------
def _initialise_backbone(run: Run) -> None:
    cfg, log = run.cfg, run.logger
    if cfg.segmentor.backbone_pretrained:
        load_backbone_pretrained(run.model, cfg.segmentor.backbone_pretrained)
    elif not cfg.segmentor.allow_random_init:
        raise ValueError(
            "segmentor training needs --segmentor.backbone_pretrained PATH (ImageNet ResNetV1c) "
            "or --segmentor.allow_random_init"
        )
    else:
        log.info("segmentor: training from random initialisation (no pretrained weights; embedded default)")


def prepare_segmentor(run: Run, state: dict[str, Any] | None) -> None:
    """Phase 1: load the segmentor checkpoint, or train the segmentor here (``train_segmentor.train_steps``) and
    record its validation mIoU."""
    cfg, ctx, log, model = run.cfg, run.ctx, run.logger, run.model
    if state is None and cfg.segmentor.checkpoint:
        info = load_mmseg_checkpoint(model, cfg.segmentor.checkpoint, allow_missing_ood_head=True)
        log.info(
            f"segmentor: {info['loaded_keys']} tensors from {cfg.segmentor.checkpoint} (strict)"
            + ("; it also held an OoD head, training continues from it" if info["ood_head_loaded"] else "")
        )
        return
    seg_cfg = cfg.segmentor.train
    if seg_cfg.iters <= 0:
        raise ValueError(
            "no segmentor: pass --segmentor.checkpoint PATH (the authors' DeepLabv3 iter_40000.pth "
            "in mmseg layout, or train_segmentor.py's last.pt), or set segmentor.train.iters > 0 to "
            "train one in this run; SLEEG never runs on a random segmentor"
        )
    if state is None:
        _initialise_backbone(run)
    model.set_segmentor_trainable(True)
    # the OoD head takes no part in this phase: under torchrun, DDP (which wraps the whole model here) would
    # otherwise wait for gradients of its parameters that never come
    model.patch_head.requires_grad_(False)
    optimizer = train_segmentor.make_segmentor_optimizer(model, seg_cfg)
    scaler = make_grad_scaler(ctx.device, cfg.amp)
    start = int(state["iteration"]) if state is not None else 0
    # the loader draws its base seed from the global RNG: create it before restoring the saved RNG state
    batches = build_train_loader(cfg.data, cfg.synthetic, ctx, cfg.seed, start)
    if state is not None:
        restore_training_state(state, optimizer=optimizer, scaler=scaler)

    def save(iteration: int) -> None:
        run.save(phase="segmentor", iteration=iteration, optimizer=optimizer, scaler=scaler)

    t0 = time.perf_counter()
    train_segmentor.train_steps(
        model,
        batches,
        optim=seg_cfg,
        run=cfg,
        optimizer=optimizer,
        scaler=scaler,
        ctx=ctx,
        logger=log,
        start_iteration=start,
        save=save,
    )
    model.set_segmentor_trainable(False)
    model.patch_head.requires_grad_(True)
    if ctx.is_main:
        val = CityscapesSegmentation(resolve_cityscapes_root(cfg.data, cfg.synthetic), cfg.data.val_split)
        seg_metrics = train_segmentor.evaluate(model, val, ctx.device, cfg.model.num_classes)
        run.metrics.update(
            {
                "segmentor_mIoU": seg_metrics["mIoU"],
                "segmentor_aAcc": seg_metrics["aAcc"],
                "segmentor_seconds": time.perf_counter() - t0,
            }
        )
        log.info(
            f"segmentor trained in {time.perf_counter() - t0:.0f} s: {cfg.data.val_split} mIoU "
            f"{seg_metrics['mIoU']:.2f}, pixel accuracy {seg_metrics['aAcc']:.2f}"
        )


# phase 2 -------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class HeadTraining:
    """The OoD head's training objects: what its checkpoints hold besides the model."""

    head: nn.Module  # model.patch_head, or its DDP wrapper under torchrun
    optimizer: torch.optim.SGD
    scaler: torch.amp.GradScaler
    pool: AnomalyPatchPool
    generator: torch.Generator
    settings: SLEEGSettings

    def checkpoint(self, run: Run, iteration: int, name: str = "last.pt", pools: list[dict] | None = None) -> None:
        """Write ``name`` (rank 0) with every process's crop pool (``pool``: one state per rank, each process
        pastes from its own). Collective (gathers the pools) unless ``pools``, gathered already, is given."""
        check_finite_parameters(run.model.patch_head, iteration - 1, "OoD head")  # BN statistics included
        if pools is None:
            pools = gather_rank_states(self.pool.state_dict(), run.ctx)
        run.save(
            name,
            phase="ood_head",
            iteration=iteration,
            optimizer=self.optimizer,
            scaler=self.scaler,
            pool=pools,
            generator=self.generator,
        )


def train_steps(run: Run, training: HeadTraining, batches: Iterator[dict], start: int) -> None:
    """OoD-head iterations ``start .. optim.iters``: poly lr, :func:`energy_anomaly_seg.sleeg.sleeg_losses`, SGD;
    log, checkpoint and (every ``eval_interval`` iterations) evaluate + keep ``best.pt`` by SLEEG AP."""
    cfg, ctx, log, model = run.cfg, run.ctx, run.logger, run.model
    iters = cfg.optim.iters
    model.train()
    t0, seen = time.perf_counter(), 0
    for iteration in log.progress(range(start, iters), desc="OoD head", total=iters - start):
        lr = train_segmentor.poly_lr(cfg.optim.lr, iteration, iters, cfg.optim.power, cfg.optim.min_lr)
        for group in training.optimizer.param_groups:
            group["lr"] = lr
        batch = next(batches)
        images = batch["image"].to(ctx.device, non_blocking=True)
        labels = batch["label"].to(ctx.device, non_blocking=True)
        with autocast(ctx.device, cfg.amp):
            loss, logs = sleeg_losses(
                model,
                images,
                labels,
                training.pool,
                training.generator,
                training.settings,
                iteration,
                ood_head=training.head,
            )
        optimizer_step(loss, training.optimizer, training.scaler, iteration, what="SLEEG loss")
        seen += images.shape[0] * ctx.world_size
        done = iteration + 1
        if train_segmentor.is_due(done, cfg.log_interval, iters):
            log.log_epoch(
                done, {"phase": "ood_head", **logs, "lr": lr, "img_per_s": seen / max(time.perf_counter() - t0, 1e-9)}
            )
        if train_segmentor.is_due(done, cfg.checkpoint_interval, iters):
            training.checkpoint(run, done)
        if cfg.eval_interval and done % cfg.eval_interval == 0 and done < iters:
            # every rank gathers (a collective), though only rank 0 decides on and writes best.pt
            pools = gather_rank_states(training.pool.state_dict(), ctx)
            if ctx.is_main:
                _keep_best(run, training, done, pools)
                model.train()
    run.metrics["ood_head_seconds"] = time.perf_counter() - t0


def _keep_best(run: Run, training: HeadTraining, done: int, pools: list[dict] | None) -> None:
    result = evaluate(run, write_outputs=False)
    run.logger.info(f"iteration {done}: SLEEG AP {result['sleeg_AP']:.2f} on {result['dataset']}")
    if result["sleeg_AP"] > run.metrics.get("best_sleeg_AP", -1.0):
        run.metrics["best_sleeg_AP"] = result["sleeg_AP"]
        run.metrics["best_iteration"] = done
        training.checkpoint(run, done, "best.pt", pools)


def train_ood_head(run: Run, state: dict[str, Any] | None) -> None:
    """Phase 2: build (or restore) the head's optimizer, scaler, crop pool and generator, then :func:`train_steps`."""
    cfg, ctx, model = run.cfg, run.ctx, run.model
    head: nn.Module = model.patch_head
    if ctx.distributed:
        head = nn.parallel.DistributedDataParallel(head, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
    training = HeadTraining(
        head=head,
        optimizer=torch.optim.SGD(
            model.patch_head.parameters(),
            lr=cfg.optim.lr,
            momentum=cfg.optim.momentum,
            weight_decay=cfg.optim.weight_decay,
        ),
        scaler=make_grad_scaler(ctx.device, cfg.amp),
        pool=make_pool(cfg.anomalies),
        generator=torch.Generator().manual_seed(cfg.seed * 1000 + ctx.rank + 1),
        settings=sleeg_settings(cfg),
    )
    start = int(state["iteration"]) if state is not None else 0
    batches = build_train_loader(cfg.data, cfg.synthetic, ctx, cfg.seed + 1, start)  # before the RNG restore
    if state is not None:
        training.pool.load_state_dict(own_rank_entry(state["pool"], ctx.rank), ctx.device)
        saved_pools = rank_entry_count(state["pool"])
        if saved_pools < ctx.world_size:
            run.logger.info(
                f"{cfg.resume} holds the crop pools of {saved_pools} process(es): ranks "
                f"{saved_pools}..{ctx.world_size - 1} start from rank 0's"
            )
        restore_training_state(
            state, optimizer=training.optimizer, scaler=training.scaler, generator=training.generator
        )
    train_steps(run, training, batches, start)


def run_phases(run: Run, state: dict[str, Any] | None) -> dict[str, Any]:
    """Restore a resumed state, phase 1, phase 2, the final evaluation; writes metrics.json."""
    cfg, log = run.cfg, run.logger
    log.info(
        f"SLEEG sleeg_{cfg.model.variant}: {count_parameters(run.model) / 1e6:.2f} M parameters, OoD head "
        f"{count_parameters(run.model.patch_head)} trainable; device {run.ctx.device}, "
        f"{run.ctx.world_size} process(es); run folder {run.out}"
    )
    if state is not None:
        run.model.load_state_dict(state["model"])  # the RNG states are restored by the phase, after its loader
        run.metrics.update(state.get("metrics", {}))
        log.info(f"resuming {cfg.resume}: phase {state['phase']}, iteration {state['iteration']}")
    if state is None or state["phase"] == "segmentor":
        prepare_segmentor(run, state)
        state = None
    train_ood_head(run, state)
    if cfg.eval.datasets and run.ctx.is_main:
        run.metrics.update(evaluate(run))
    log.write_metrics(run.metrics)
    log.close()
    return run.metrics


def evaluate(run: Run, write_outputs: bool = True) -> dict[str, Any]:
    """``eval.datasets`` through the protocol of :mod:`energy_anomaly_seg.evaluation` (as ``eval.py``)."""
    run.model.eval()
    return evaluate_datasets(
        run.model,
        run.cfg.eval,
        run.cfg.synthetic,
        run.out if write_outputs else None,
        run.logger if write_outputs else None,
    )


# command line --------------------------------------------------------------------------------------------------------
parse_args = script_parser(TrainConfig, __doc__.splitlines()[0], DEFAULT_CONFIG)


def main(cfg: TrainConfig) -> dict[str, Any]:
    """Both phases and the final evaluation; returns (and writes to metrics.json) the metrics."""
    state = _checked_resume_state(cfg) if cfg.resume else None  # before anything is written
    check_eval_datasets(cfg.eval)  # a wrong name or path must stop the run before hours of training, not after
    ctx = init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        run = start_run(cfg, ctx, resuming=state is not None)
        return run_phases(run, state)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main(parse_args())
