"""Train SLEEG's OoD head on a frozen DeepLabv3 segmentor, then evaluate max-softmax, energy and SLEEG.

    python train.py                                   # embedded default: synthetic scenes, small segmentor, CPU
    python train.py -c configs/cityscapes_r101.yaml --segmentor.checkpoint iter_40000.pth   # the paper's recipe
    torchrun --nproc_per_node=8 train.py -c configs/cityscapes_r101.yaml --segmentor.checkpoint ...

Phases (both resumable with ``--resume <run>/last.pt``):

1. segmentor: load ``--segmentor.checkpoint`` (the authors' mmseg ``iter_40000.pth`` or ``train_segmentor.py``'s
   ``last.pt``), or, when ``segmentor.train.iters > 0`` (the embedded default), train it here first;
2. OoD head (``iters`` of ``optim``): self-generated anomalies (pool + convex-polygon pastes), likelihood-guided
   Otsu refinement, TAE cross-entropy + 0.05 x TORE hinge, SGD with the poly schedule; only the head trains.

Writes ``config.yaml``, ``train.log``, ``log.csv``, TensorBoard scalars, ``last.pt`` (+ ``best.pt`` with periodic
evaluation) and ``metrics.json`` (the evaluation of ``eval.datasets``, as ``eval.py`` computes it).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from energy_anomaly_seg.data import CityscapesSegmentation
from energy_anomaly_seg.eval import EvalConfig, check_eval_datasets, evaluate_datasets
from energy_anomaly_seg.mmseg_checkpoint import load_mmseg_checkpoint
from energy_anomaly_seg.model import count_parameters, create_sleeg
from energy_anomaly_seg.self_generated_anomalies import AnomalyPatchPool
from energy_anomaly_seg.sleeg import SLEEGSettings, sleeg_losses
from energy_anomaly_seg.train_segmentor import (
    DataConfig,
    ModelConfig,
    SegOptimConfig,
    SyntheticConfig,
    build_train_loader,
    evaluate_segmentation,
    make_segmentor_optimizer,
    poly_lr,
    resolve_cityscapes_root,
    train_segmentor,
)
from shared.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from shared.config import config_name, config_to_dict, parse_config, save_config
from shared.distributed import DistContext, cleanup_distributed, init_distributed, seed_everything
from shared.logger import RunLogger, make_run_dir
from shared.training import autocast, make_grad_scaler, optimizer_step

__all__ = ["AnomalyConfig", "ObjectiveConfig", "OptimConfig", "SegmentorConfig", "TrainConfig", "get_args_parser",
           "main"]

PACKAGE = "energy_anomaly_seg"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"


@dataclass
class SegmentorConfig:
    checkpoint: str | None = field(default=None, metadata={
        "help": "segmentor weights: the authors' mmseg iter_40000.pth or train_segmentor.py's last.pt"})
    train: SegOptimConfig = field(default_factory=lambda: SegOptimConfig(iters=0), metadata={
        "help": "train the segmentor in this run first when train.iters > 0 (embedded default)"})
    allow_random_init: bool = field(default=False, metadata={
        "help": "let segmentor training start from random weights (no ImageNet backbone)"})
    backbone_pretrained: str | None = None


@dataclass
class AnomalyConfig:
    """Self-generated anomalies: the crop pool and the convex-polygon pastes."""

    pool_size: int = 30
    crops_per_image: int = 2
    area_range: tuple[float, float] = (0.03, 0.06)
    aspect_range: tuple[float, float] = (0.8, 1.2)
    pastes_per_image: int = 10
    noise_ratio: float = 0.1
    polygon: str = field(default="convex_hull", metadata={
        "help": "'convex_hull' of 15 random points (released code), 'harris' corners (paper), 'square' (ablation)"})
    hull_points: int = 15
    harris_k: float = 0.04


@dataclass
class ObjectiveConfig:
    refine: bool = field(default=True, metadata={"help": "likelihood-guided Otsu refinement of the pasted labels"})
    otsu_bins: int = 25
    refine_score: Literal["paper", "released", "head_plus_energy"] = field(default="paper", metadata={
        "help": "refinement score: 'paper' JEM for refine_warmup_iters then A(x) of eq. 9; 'released' JEM for the "
                "whole run (the released training forward); 'head_plus_energy' JEM then JEM + w h[1]"})
    refine_warmup_iters: int = field(default=6000, metadata={
        "help": "JEM-only refinement first (paper 6000; unused by refine_score 'released')"})
    refine_lambda: float = field(default=0.5, metadata={"help": "lambda of A(x) = log p_a + lambda log p_t (eq. 9)"})
    tore_guide: Literal["energy", "head_plus_energy"] = field(default="energy", metadata={
        "help": "stop-gradient guide S in the TORE hinge: 'energy' JEM (paper eq. 8 and released code) or "
                "'head_plus_energy' JEM + w h[1]"})
    head_plus_energy_weight: float = field(default=0.5, metadata={
        "help": "w of JEM + w h[1] in the 'head_plus_energy' options (the train config's merge_weight 0.5)"})
    margin: float = field(default=15.0, metadata={"help": "TORE margin gamma (paper 15, code 20)"})
    tae_weight: float = 1.0
    tore_weight: float = 0.05
    ce_average: str = field(default="all", metadata={"help": "'all' pixels (mmseg 0.27) or 'valid' pixels"})
    input_grad_nudge: bool = field(default=False, metadata={"help": "released code's input-gradient step"})


@dataclass
class OptimConfig:
    iters: int = field(default=40000, metadata={"help": "OoD-head iterations (paper 40k, code 80k)"})
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    power: float = 0.9
    min_lr: float = 1e-4


@dataclass
class TrainConfig:
    output_dir: str | None = None
    resume: str | None = None
    seed: int = 0
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu' or 'cuda'"})
    amp: str = field(default="none", metadata={"help": "'none', 'bf16' or 'fp16'"})
    log_interval: int = 50
    ckpt_interval: int = 4000
    eval_interval: int = field(default=0, metadata={"help": "evaluate every N head iterations (0: at the end)"})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    segmentor: SegmentorConfig = field(default_factory=SegmentorConfig)
    anomalies: AnomalyConfig = field(default_factory=AnomalyConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def get_args_parser():
    """The argparse parser of :class:`TrainConfig` (every key as ``--section.key``)."""
    from shared.config import build_parser

    return build_parser(TrainConfig, __doc__.splitlines()[0])


def settings_from_config(cfg: TrainConfig) -> SLEEGSettings:
    o = cfg.objective
    return SLEEGSettings(pastes_per_image=cfg.anomalies.pastes_per_image, noise_ratio=cfg.anomalies.noise_ratio,
                         refine=o.refine, otsu_bins=o.otsu_bins, refine_score=o.refine_score,
                         refine_warmup_iters=o.refine_warmup_iters, refine_lambda=o.refine_lambda,
                         tore_guide=o.tore_guide, head_plus_energy_weight=o.head_plus_energy_weight, margin=o.margin,
                         tae_weight=o.tae_weight, tore_weight=o.tore_weight, ce_average=o.ce_average,
                         input_grad_nudge=o.input_grad_nudge)


def make_pool(cfg: AnomalyConfig) -> AnomalyPatchPool:
    return AnomalyPatchPool(cfg.pool_size, cfg.crops_per_image, tuple(cfg.area_range), tuple(cfg.aspect_range),
                            cfg.polygon, cfg.hull_points, cfg.harris_k)


def main(argv: list[str] | None = None) -> dict[str, float]:
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_config(TrainConfig, argv, description=__doc__.splitlines()[0], default_config=DEFAULT_CONFIG)
    ctx = init_distributed(None if cfg.device == "auto" else cfg.device)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    try:
        return Trainer(cfg, ctx, config_name(argv)).run()
    finally:
        cleanup_distributed()


class Trainer:
    """The two phases of a run, sharing one model, logger and checkpoint file."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, config_name: str = "default"):
        self.cfg, self.ctx = cfg, ctx
        self.out = Path(cfg.output_dir) if cfg.output_dir else make_run_dir(PACKAGE, config_name)
        self.logger = RunLogger(self.out, is_main=ctx.is_main)
        if ctx.is_main:
            save_config(cfg, self.out / "config.yaml")
        seed_everything(cfg.seed, ctx.rank)
        self.model = create_sleeg(cfg.model.variant, cfg.model.num_classes,
                                  segmentor_dropout_in_train=cfg.model.segmentor_dropout_in_train)
        if ctx.distributed and ctx.device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(ctx.device)
        self.resume_state = load_checkpoint(cfg.resume, map_location="cpu") if cfg.resume else None
        self.metrics: dict[str, float] = {}

    def save(self, state: dict, name: str = "last.pt") -> None:
        if self.ctx.is_main:
            save_checkpoint({**state, "model": self.model.state_dict(), "rng": capture_rng_state(),
                             "config": config_to_dict(self.cfg), "metrics": dict(self.metrics)}, self.out / name)

    def run(self) -> dict[str, float]:
        cfg, log = self.cfg, self.logger
        check_eval_datasets(cfg.eval)  # a wrong name or path must stop the run before hours of training, not after
        log.info(f"SLEEG sleeg_{cfg.model.variant}: {count_parameters(self.model) / 1e6:.2f} M parameters, OoD head "
                 f"{count_parameters(self.model.patch_head)} trainable; device {self.ctx.device}, "
                 f"{self.ctx.world_size} process(es); run folder {self.out}")
        state = self.resume_state
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.metrics = dict(state.get("metrics", {}))
            log.info(f"resuming {cfg.resume}: phase {state['phase']}, iteration {state['iteration']}")
        if state is None or state["phase"] == "segmentor":
            self.prepare_segmentor(state)
            state = None
        self.train_ood_head(state if state is not None and state["phase"] == "ood_head" else None)
        if cfg.eval.datasets and self.ctx.is_main:
            self.metrics.update(self.evaluate())
        log.write_metrics(self.metrics)
        log.close()
        return self.metrics

    # phase 1 -----------------------------------------------------------------------------------------------------
    def prepare_segmentor(self, state: dict | None) -> None:
        cfg, log, model = self.cfg, self.logger, self.model
        if state is None and cfg.segmentor.checkpoint:
            info = load_mmseg_checkpoint(model, cfg.segmentor.checkpoint, allow_missing_ood_head=True)
            log.info(f"segmentor: {info['loaded_keys']} tensors from {cfg.segmentor.checkpoint} (strict)"
                     + ("; it also held an OoD head, training continues from it" if info["ood_head_loaded"] else ""))
            return
        seg_cfg = cfg.segmentor.train
        if seg_cfg.iters <= 0:
            raise ValueError("no segmentor: pass --segmentor.checkpoint PATH (the authors' DeepLabv3 iter_40000.pth "
                             "in mmseg layout, or train_segmentor.py's last.pt), or set segmentor.train.iters > 0 to "
                             "train one in this run; SLEEG never runs on a random segmentor")
        if state is None:
            if cfg.segmentor.backbone_pretrained:
                from energy_anomaly_seg.mmseg_checkpoint import load_backbone_pretrained

                load_backbone_pretrained(model, cfg.segmentor.backbone_pretrained)
            elif not cfg.segmentor.allow_random_init:
                raise ValueError("segmentor training needs --segmentor.backbone_pretrained PATH (ImageNet ResNetV1c) "
                                 "or --segmentor.allow_random_init")
            else:
                log.info("segmentor: training from random initialisation (no pretrained weights; embedded default)")
        model.set_segmentor_trainable(True)
        optimizer = make_segmentor_optimizer(model, seg_cfg)
        scaler = make_grad_scaler(self.ctx.device, cfg.amp)
        start = int(state["iteration"]) if state is not None else 0
        # the loader draws its base seed from the global RNG: create it before restoring the saved RNG state
        batches = build_train_loader(cfg.data, cfg.synthetic, self.ctx, cfg.seed, start)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            restore_rng_state(state["rng"])

        def save(iteration: int) -> None:
            self.save({"phase": "segmentor", "iteration": iteration, "optimizer": optimizer.state_dict(),
                       "scaler": scaler.state_dict()})

        t0 = time.perf_counter()
        train_segmentor(model, seg_cfg, batches, optimizer, scaler, self.ctx, log, start, cfg.amp, cfg.log_interval,
                        cfg.ckpt_interval, save)
        model.set_segmentor_trainable(False)
        if self.ctx.is_main:
            val = CityscapesSegmentation(resolve_cityscapes_root(cfg.data, cfg.synthetic), cfg.data.val_split)
            seg_metrics = evaluate_segmentation(model, val, self.ctx.device, cfg.model.num_classes)
            self.metrics.update({"segmentor_mIoU": seg_metrics["mIoU"], "segmentor_aAcc": seg_metrics["aAcc"],
                                 "segmentor_seconds": time.perf_counter() - t0})
            log.info(f"segmentor trained in {time.perf_counter() - t0:.0f} s: {cfg.data.val_split} mIoU "
                     f"{seg_metrics['mIoU']:.2f}, pixel accuracy {seg_metrics['aAcc']:.2f}")

    # phase 2 -----------------------------------------------------------------------------------------------------
    def train_ood_head(self, state: dict | None) -> None:
        cfg, ctx, log, model = self.cfg, self.ctx, self.logger, self.model
        settings = settings_from_config(cfg)
        head: nn.Module = model.patch_head
        if ctx.distributed:
            head = nn.parallel.DistributedDataParallel(head, device_ids=[ctx.device] if ctx.device.type == "cuda"
                                                       else None)
        optimizer = torch.optim.SGD(model.patch_head.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                    weight_decay=cfg.optim.weight_decay)
        scaler = make_grad_scaler(ctx.device, cfg.amp)
        pool = make_pool(cfg.anomalies)
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + ctx.rank + 1)
        start = int(state["iteration"]) if state is not None else 0
        batches = build_train_loader(cfg.data, cfg.synthetic, ctx, cfg.seed + 1, start)  # before the RNG restore
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            pool.load_state_dict(state["pool"], ctx.device)
            generator.set_state(state["generator"])
            restore_rng_state(state["rng"])
        best = self.metrics.get("best_sleeg_AP", -1.0)

        def checkpoint(iteration: int, name: str = "last.pt") -> None:
            self.save({"phase": "ood_head", "iteration": iteration, "optimizer": optimizer.state_dict(),
                       "scaler": scaler.state_dict(), "pool": pool.state_dict(), "generator": generator.get_state()},
                      name)

        model.train()
        t0, seen = time.perf_counter(), 0
        for iteration in log.progress(range(start, cfg.optim.iters), desc="OoD head", total=cfg.optim.iters - start):
            lr = poly_lr(cfg.optim.lr, iteration, cfg.optim.iters, cfg.optim.power, cfg.optim.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = next(batches)
            images = batch["image"].to(ctx.device, non_blocking=True)
            labels = batch["label"].to(ctx.device, non_blocking=True)
            with autocast(ctx.device, cfg.amp):
                loss, logs = sleeg_losses(model, images, labels, pool, generator, settings, iteration, ood_head=head)
            optimizer_step(loss, optimizer, scaler, iteration, what="SLEEG loss")
            seen += images.shape[0] * ctx.world_size
            done = iteration + 1
            if done % cfg.log_interval == 0 or done == cfg.optim.iters:
                log.log_epoch(done, {"phase": "ood_head", **logs, "lr": lr,
                                     "img_per_s": seen / max(time.perf_counter() - t0, 1e-9)})
            if done % cfg.ckpt_interval == 0 or done == cfg.optim.iters:
                checkpoint(done)
            if cfg.eval_interval and done % cfg.eval_interval == 0 and done < cfg.optim.iters and ctx.is_main:
                result = self.evaluate(write_outputs=False)
                log.info(f"iteration {done}: SLEEG AP {result['sleeg_AP']:.2f} on {result['dataset']}")
                if result["sleeg_AP"] > best:
                    best = self.metrics["best_sleeg_AP"] = result["sleeg_AP"]
                    self.metrics["best_iteration"] = done
                    checkpoint(done, "best.pt")
                model.train()
        self.metrics["ood_head_seconds"] = time.perf_counter() - t0

    def evaluate(self, write_outputs: bool = True) -> dict[str, float]:
        self.model.eval()
        return evaluate_datasets(self.model, self.cfg.eval, self.cfg.synthetic, self.out if write_outputs else None,
                                 self.logger if write_outputs else None)


if __name__ == "__main__":
    main()
