"""Train MixTeacher (or the supervised-only baseline) on COCO / VOC / the embedded synthetic COCO set.

    cd mixteacher && python train.py                     # embedded default: synthetic COCO, 10 % labeled, CPU
    python -m mixteacher.train -c mixteacher/configs/coco_partial_10.yaml --data.root data/coco \\
        --pretrained_backbone resnet50_msra-5891d200.pth --data.fold 1
    torchrun --nproc_per_node=8 -m mixteacher.train -c mixteacher/configs/coco_partial_10.yaml ...

Iteration-based, like the released mmdetection configs: SGD with linear warm-up and step decay, an EMA teacher
updated every iteration, evaluation of the teacher and the student at the regular and mixed test scales every
``eval_interval`` iterations. The run folder gets ``config.yaml``, ``train.log``, ``log.csv`` (one row per
``checkpoint_interval``), TensorBoard scalars, ``last.pt``/``best.pt`` and ``metrics.json``; ``--resume last.pt``
continues exactly. With ``compare_supervised`` (embedded default) a supervised-only run of the same length follows in
``<run>/supervised/`` and both are printed side by side.

Before anything is written, a ``--resume`` file is read and checked (:func:`read_checkpoint`: a missing, unreadable,
foreign or incomplete file is a ``CheckpointError``), and the run folder (and its ``supervised/`` sub-folder) is
claimed with ``shared.logger.claim_run_dir`` (``RUN.json``: a folder of another package or of a different config is
refused). A non-finite loss, gradient, parameter or EMA-teacher value stops the run with an error naming the step;
the last checkpoint on disk stays as it was.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from mixteacher.augment import ViewConfig
from mixteacher.data import (
    COCO_LAYOUT,
    CocoDetection,
    CocoImages,
    SemiBatchSampler,
    SemiSupervisedDataset,
    partial_split_files,
    semi_collate,
)
from mixteacher.mix_teacher import MixTeacher, MixTeacherSettings
from mixteacher.model import DetectorConfig, MixedScaleFasterRCNN, build_detector
from shared.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_last_and_best
from shared.config import config_from_dict, config_name, config_to_dict, parse_config, save_config
from shared.detection import COCO_METRIC_KEYS as COCO_KEYS
from shared.detection import coco_detections, coco_summary, evaluate_detections, sharded_loader
from shared.distributed import DistContext, all_reduce_mean, cleanup_distributed, init_distributed, seed_everything
from shared.logger import RunLogger, claim_run_dir, resolve_run_dir
from shared.training import AmpDtype, autocast, check_finite_parameters, make_grad_scaler, optimizer_step

__all__ = ["MODEL_KEYS", "RESUME_KEYS", "DataConfig", "TrainConfig", "build_datasets", "evaluate", "main",
           "read_checkpoint", "run", "step_schedule", "train_one_epoch"]

PACKAGE = "mixteacher"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
#: what evaluation and visualisation read from a checkpoint
MODEL_KEYS = ("student", "teacher", "config", "num_classes", "categories", "step")
#: what ``--resume`` reads
RESUME_KEYS = (*MODEL_KEYS, "optimizer", "scheduler", "scaler", "best", "rng")


@dataclass
class DataConfig:
    """Datasets (COCO-format jsons) and the view pipelines."""

    root: str = field(default="", metadata={"help": "dataset root (COCO: train2017/, val2017/, annotations/)"})
    train_images: str = "train2017"
    train_annotations: str = "annotations/instances_train2017.json"
    percent: float | None = field(default=10.0, metadata={
        "help": "labeled percentage of train (STAC partial protocol); null: all of train is labeled"})
    fold: int = field(default=1, metadata={"help": "partial-protocol fold (seed), 1..5"})
    seed_offset: int = 0
    sampling: Literal["softteacher", "stac"] = "softteacher"
    split_dir: str = "annotations/semi_supervised"
    unlabeled_images: list[str] = field(default_factory=list, metadata={
        "help": "image folders of extra unlabeled pools (unlabeled2017), relative to root or absolute"})
    unlabeled_annotations: list[str] = field(default_factory=list, metadata={
        "help": "their image-list jsons, one per folder (annotations/image_info_unlabeled2017.json)"})
    val_images: str = "val2017"
    val_annotations: str = "annotations/instances_val2017.json"
    synthetic: bool = False
    synthetic_train: int = 200
    synthetic_val: int = 24
    synthetic_unlabeled: int = 0
    synthetic_image_size: int = 192
    synthetic_categories: int = 6
    train_short_range: tuple[int, int] = (400, 1200)
    train_long_range: tuple[int, int] = (0, 0)
    weak_short_range: tuple[int, int] = (400, 1200)
    max_size: int = 1333
    hflip: float = 0.5
    batch_size: int = field(default=5, metadata={"help": "images per GPU (labeled + unlabeled)"})
    sample_ratio: tuple[float, float] = field(default=(1.0, 4.0), metadata={"help": "labeled : unlabeled"})
    eval_batch_size: int = 1
    workers: int = 4


@dataclass
class TrainConfig:
    """MixTeacher training (defaults: the COCO 10 % recipe, 8 GPUs x 5 images)."""

    method: Literal["mixteacher", "supervised"] = "mixteacher"
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    mixteacher: MixTeacherSettings = field(default_factory=MixTeacherSettings)
    data: DataConfig = field(default_factory=DataConfig)
    pretrained_backbone: str | None = field(default=None, metadata={"help": "ImageNet ResNet checkpoint"})
    allow_random_backbone: bool = field(default=False, metadata={
        "help": "train from random init (embedded default only; the recipes need a pretrained backbone)"})
    max_iters: int = 180_000
    lr: float = 0.01
    lr_base_batch: int = field(default=40, metadata={"help": "lr is given for this global batch; scaled linearly"})
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: list[int] = field(default_factory=lambda: [120_000, 160_000])
    lr_gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    clip_grad: float | None = None
    eval_interval: int = 4000
    checkpoint_interval: int = 4000
    test_scales: list[str] = field(default_factory=lambda: ["regular", "mixed"])
    report_scale: str = field(default="regular", metadata={"help": "teacher scale of the headline AP numbers"})
    compare_supervised: bool = field(default=False, metadata={
        "help": "after training, run the supervised-only baseline of the same length and print both"})
    amp: AmpDtype = "off"
    device: str | None = None
    torch_threads: int | None = None
    find_unused_parameters: bool = True
    seed: int = 0
    output_dir: str | None = None
    resume: str | None = None
    log_interval: int = 50
    tensorboard: bool = True


# ----------------------------------------------------------------------------------------------------- data


def _views(data: DataConfig) -> tuple[ViewConfig, ViewConfig, ViewConfig]:
    base = ViewConfig(short_range=data.train_short_range, long_range=data.train_long_range, max_size=data.max_size,
                      hflip=data.hflip)
    return (replace(base, colour=True), replace(base, short_range=data.weak_short_range, long_range=(0, 0)),
            replace(base, colour=True, geometric=True, erase=True))


def build_datasets(data: DataConfig, is_main: bool = True) -> tuple[SemiSupervisedDataset, CocoDetection]:
    """(train set with its labeled and unlabeled parts, val set)."""
    if data.synthetic:
        from shared.synthetic import synthetic_root, write_coco_detection

        root = synthetic_root() / (f"mixteacher_coco_n{data.synthetic_train}_v{data.synthetic_val}_u"
                                   f"{data.synthetic_unlabeled}_s{data.synthetic_image_size}_c"
                                   f"{data.synthetic_categories}")
        if is_main:
            write_coco_detection(root, num_train=data.synthetic_train, num_val=data.synthetic_val,
                                 image_size=data.synthetic_image_size, num_categories=data.synthetic_categories,
                                 num_unlabeled=data.synthetic_unlabeled, seed=0)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    else:
        root = Path(data.root)
        if not data.root or not root.is_dir():
            raise FileNotFoundError(
                f"dataset root {root!s} not found (data.root={data.root!r}). Expected the COCO 2017 layout: "
                "<root>/train2017/, val2017/, annotations/instances_{train,val}2017.json (VOC: VOCdevkit/ + "
                "annotations_json/); see `python -m shared.datasets info coco2017`.")
    train_ann = root / data.train_annotations
    unlabeled: list[CocoImages] = []
    if data.percent is not None:
        split = (train_ann, data.percent, data.fold, data.seed_offset, root / data.split_dir)
        if is_main:  # rank 0 writes the split files when missing, the others wait and read them
            partial_split_files(*split, is_main=True)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        labeled_file, unlabeled_file = partial_split_files(*split, is_main=False)
        unlabeled.append(CocoImages(root / data.train_images, unlabeled_file))
    else:
        labeled_file = train_ann
    labeled = CocoDetection(root / data.train_images, labeled_file, train=True, label_offset=1, layout=COCO_LAYOUT)
    if len(data.unlabeled_images) != len(data.unlabeled_annotations):
        raise ValueError("data.unlabeled_images and data.unlabeled_annotations need one entry each per pool, got "
                         f"{data.unlabeled_images} and {data.unlabeled_annotations}")
    for image_dir, image_list in zip(data.unlabeled_images, data.unlabeled_annotations):
        unlabeled.append(CocoImages(root / image_dir, root / image_list))
    val = CocoDetection(root / data.val_images, root / data.val_annotations, label_offset=1, categories=labeled.cat_ids,
                        layout=COCO_LAYOUT)
    if len(labeled) == 0:
        raise ValueError(f"no labeled image with a usable box in {labeled_file}")
    return SemiSupervisedDataset(labeled, unlabeled, *_views(data)), val


# ------------------------------------------------------------------------------------------------ schedule


def step_schedule(optimizer: torch.optim.Optimizer, steps: Sequence[int], gamma: float, warmup_iters: int,
                  warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """mmcv ``StepLrUpdaterHook`` with linear warm-up (per iteration): lr x gamma^(#steps passed), during warm-up
    multiplied by ``1 - (1 - i / warmup_iters) (1 - warmup_ratio)``."""

    def factor(i: int) -> float:
        f = gamma ** sum(i >= s for s in steps)
        if i < warmup_iters:
            f *= 1 - (1 - i / warmup_iters) * (1 - warmup_ratio)
        return f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# -------------------------------------------------------------------------------------------------- loops


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = dict(batch)
    for key in ("labeled_images", "weak_images", "strong_images"):
        out[key] = [im.to(device, non_blocking=True) for im in batch[key]]
    out["labeled_targets"] = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
                              for t in batch["labeled_targets"]]
    out["weak_to_strong"] = batch["weak_to_strong"].to(device)
    return out


def train_one_epoch(model: nn.Module, method: MixTeacher, batches, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler, ctx: DistContext,
                    step: int, num_steps: int, cfg: TrainConfig, logger: RunLogger) -> tuple[dict[str, float], int]:
    """``num_steps`` iterations (one logging/checkpoint period); returns (mean logged values, global step)."""
    model.train()
    sums: dict[str, float] = {}
    t0, images = time.perf_counter(), 0
    bar = logger.progress(range(num_steps), desc=f"iter {step}", total=num_steps)
    for _ in bar:
        batch = _to_device(next(batches), ctx.device)
        with autocast(ctx.device, cfg.amp):
            loss, logs = model(batch, step)
        optimizer_step(loss, optimizer, scaler, step, cfg.clip_grad, method.student.parameters())
        scheduler.step()
        method.update_teacher(step)
        # the student is checked by optimizer_step; the EMA teacher makes the pseudo labels and is checkpointed
        check_finite_parameters(method.teacher, step, "EMA teacher")
        step += 1
        images += len(batch["labeled_images"]) + len(batch["weak_images"])
        logs["loss"] = float(loss.detach())
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v
        if step % cfg.log_interval == 0:
            lr = optimizer.param_groups[0]["lr"]
            logger.scalars({**logs, "lr": lr}, step, prefix="train/")
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{logs['loss']:.3f}", lr=f"{lr:.2e}",
                                img_s=f"{images * ctx.world_size / (time.perf_counter() - t0):.1f}")
    elapsed = time.perf_counter() - t0
    row = {k: all_reduce_mean(v / num_steps) for k, v in sorted(sums.items())}
    row.update({"lr": optimizer.param_groups[0]["lr"], "img_s": images * ctx.world_size / elapsed,
                "s_per_iter": elapsed / num_steps})
    return row, step


def val_loader(dataset: CocoDetection, cfg: DataConfig, ctx: DistContext) -> DataLoader:
    """Every val image once over the ranks."""
    return sharded_loader(dataset, cfg.eval_batch_size, ctx, workers=min(cfg.workers, 2))


@torch.no_grad()
def evaluate(model: MixedScaleFasterRCNN, loader: DataLoader, dataset: CocoDetection, ctx: DistContext,
             scale: str = "regular", amp: AmpDtype = "off") -> dict[str, Any]:
    """COCO bbox metrics (pycocotools via ``shared.metrics.coco_evaluate``) of ``model`` at a test scale."""
    was_training = model.training
    model.eval()
    detections: list[dict[str, Any]] = []
    for images, targets in loader:
        with autocast(ctx.device, amp):
            outputs = model.predict([im.to(ctx.device) for im in images], scale)
        detections += coco_detections(outputs, targets, dataset.cat_ids, label_offset=1)
    model.train(was_training)
    return evaluate_detections(detections, dataset.coco, ctx)


def evaluate_all(method: MixTeacher, loader: DataLoader, dataset: CocoDetection, ctx: DistContext,
                 cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """``{"teacher_regular": ..., "teacher_mixed": ..., "student_regular": ...}`` (supervised: student only)."""
    models = {"student": method.student} if cfg.method == "supervised" else {"teacher": method.teacher,
                                                                              "student": method.student}
    return {f"{name}_{scale}": evaluate(model, loader, dataset, ctx, scale, cfg.amp)
            for name, model in models.items() for scale in cfg.test_scales}


def headline(results: dict[str, dict[str, Any]], cfg: TrainConfig) -> tuple[str, dict[str, Any]]:
    """The model/scale whose numbers head metrics.json: the teacher at ``report_scale`` (student if supervised)."""
    name = f"{'student' if cfg.method == 'supervised' else 'teacher'}_{cfg.report_scale}"
    if name not in results:
        name = next(iter(results))
    return name, results[name]


# -------------------------------------------------------------------------------------------------- run


def read_checkpoint(path: str | Path, required: Sequence[str] = RESUME_KEYS) -> dict[str, Any]:
    """A MixTeacher checkpoint (CPU tensors, safe unpickler), checked before anything else happens.

    Raises:
        shared.checkpoint.CheckpointError: ``not a mixteacher checkpoint: <why>`` for a missing file, a file that is
            not a checkpoint (text, a truncated or foreign pickle), another package's checkpoint or one that lacks
            any of ``required``.
    """
    return load_checkpoint(path, "cpu", package=PACKAGE, required=required)


def _state(method: MixTeacher, optimizer, scheduler, scaler, step: int, cfg: TrainConfig, best: dict,
           dataset: CocoDetection) -> dict[str, Any]:
    return {"package": PACKAGE, "student": method.student.state_dict(), "teacher": method.teacher.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "step": step, "best": best, "rng": capture_rng_state(), "config": config_to_dict(cfg),
            "num_classes": dataset.num_classes,
            "categories": {"ids": list(dataset.cat_ids), "names": list(dataset.category_names)}}


def run(cfg: TrainConfig, config_name: str = "default") -> dict[str, Any]:
    """Train and evaluate (then the supervised comparison when asked); returns the metrics of ``metrics.json``.

    Nothing is written before the ``--resume`` checkpoint is read and the run folder is claimed."""
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    compare = cfg.compare_supervised and cfg.method == "mixteacher"
    # a resumed run takes its weights from the checkpoint, the supervised comparison always starts from the backbone
    if (not cfg.resume or compare) and cfg.pretrained_backbone is None and not cfg.allow_random_backbone:
        raise ValueError("the recipes fine-tune an ImageNet-pretrained ResNet: pass --pretrained_backbone PATH "
                         "(mmdetection's detectron2 resnet50_caffe, resnet50_msra-5891d200.pth), or set "
                         "allow_random_backbone: true to train from random initialisation")
    resume = read_checkpoint(cfg.resume) if cfg.resume else None
    ctx = init_distributed(cfg.device)
    try:
        out_dir = resolve_run_dir(PACKAGE, config_name, cfg.output_dir, cfg.resume)
        sup_cfg = None
        if compare:
            # same iterations, the same expected number of labeled images per batch, labeled data only
            labeled_per_batch = cfg.data.batch_size * cfg.data.sample_ratio[0] / sum(cfg.data.sample_ratio)
            sup_cfg = replace(cfg, method="supervised", compare_supervised=False, resume=None,
                              output_dir=str(out_dir / "supervised"),
                              data=replace(cfg.data, batch_size=max(1, round(labeled_per_batch)),
                                           sample_ratio=(1.0, 0.0)))
        claim_run_dir(out_dir, PACKAGE, config_to_dict(cfg), resume=resume is not None, is_main=ctx.is_main)
        if sup_cfg is not None:  # the comparison is redone from scratch; a resumed run may redo it with new values
            claim_run_dir(out_dir / "supervised", PACKAGE, config_to_dict(sup_cfg), resume=resume is not None,
                          is_main=ctx.is_main)
        metrics = _run(cfg, ctx, out_dir, resume)
        if sup_cfg is not None:
            sup = _run(sup_cfg, ctx, out_dir / "supervised")
            metrics["supervised"] = sup["last"]
            metrics.update({f"supervised_{k}": sup["last"][k] for k in COCO_KEYS})
            if ctx.is_main:
                from shared.logger import write_json

                write_json(metrics, out_dir / "metrics.json")
                print("\n" + comparison_table(metrics), flush=True)
        return metrics
    finally:
        cleanup_distributed()


def comparison_table(metrics: dict[str, Any]) -> str:
    """MixTeacher's teacher next to the supervised-only run of the same length (COCO AP x100)."""
    rows = [("MixTeacher teacher (" + metrics["headline"] + ")", metrics["last"])]
    if "supervised" in metrics:
        rows.append(("supervised only (same iterations)", metrics["supervised"]))
    lines = [f"{'model':<40}" + "".join(f"{k:>7}" for k in ("AP", "AP50", "APs", "APm", "APl"))]
    for name, m in rows:
        lines.append(f"{name:<40}" + "".join(
            f"{100 * m[k]:7.1f}" if m.get(k) is not None and m[k] == m[k] else f"{'n/a':>7}"
            for k in ("AP", "AP50", "APs", "APm", "APl")))
    return "\n".join(lines)


def _run(cfg: TrainConfig, ctx: DistContext, out_dir: Path, resume: dict[str, Any] | None = None) -> dict[str, Any]:
    seed_everything(cfg.seed, ctx.rank)
    logger = RunLogger(out_dir, is_main=ctx.is_main, tensorboard=cfg.tensorboard)
    if ctx.is_main:
        save_config(cfg, out_dir / "config.yaml")
    logger.info(f"run folder {out_dir} | {cfg.method} | {ctx.world_size} process(es) on {ctx.device}")
    train_set, val_set = build_datasets(cfg.data, ctx.is_main)
    student = build_detector(train_set.labeled.num_classes, cfg.detector,
                             cfg.pretrained_backbone if resume is None else None)
    if resume is None:
        logger.info("backbone: " + (f"loaded {cfg.pretrained_backbone}" if cfg.pretrained_backbone
                                    else "random initialisation (no pretrained_backbone given)"))
    method = MixTeacher(student, cfg.mixteacher, cfg.method).to(ctx.device)
    global_batch = cfg.data.batch_size * ctx.world_size
    lr = cfg.lr * global_batch / cfg.lr_base_batch
    params = [p for p in method.student.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = step_schedule(optimizer, cfg.lr_steps, cfg.lr_gamma, cfg.warmup_iters, cfg.warmup_ratio)
    scaler = make_grad_scaler(ctx.device, cfg.amp)
    step, best = 0, {"AP": -math.inf, "step": -1}
    if resume is not None:
        method.student.load_state_dict(resume["student"])
        method.teacher.load_state_dict(resume["teacher"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        step, best = resume["step"], resume["best"]
        restore_rng_state(resume["rng"])
        logger.info(f"resumed from {cfg.resume} at step {step}")
    num_unlabeled = train_set.num_unlabeled if cfg.method == "mixteacher" else 0
    sampler = SemiBatchSampler(len(train_set.labeled), num_unlabeled, cfg.data.batch_size, cfg.data.sample_ratio,
                               cfg.max_iters, ctx.world_size, ctx.rank, cfg.seed, start_iter=step)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.data.workers, collate_fn=semi_collate,
                        pin_memory=ctx.device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed))
    eval_loader = val_loader(val_set, cfg.data, ctx)
    trainable = sum(p.numel() for p in params)
    logger.info(f"{cfg.method}: {sum(p.numel() for p in student.parameters()) / 1e6:.2f} M parameters "
                f"({trainable / 1e6:.2f} M trainable), {train_set.labeled.num_classes} classes, "
                f"{len(train_set.labeled)} labeled / {num_unlabeled} unlabeled / {len(val_set)} val images, "
                f"global batch {global_batch}, lr {lr:.3g}, {cfg.max_iters} iterations")
    model: nn.Module = method
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(
            method, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters)
    batches = iter(loader)
    results: dict[str, dict[str, Any]] = {}
    while step < cfg.max_iters:
        period = min(cfg.checkpoint_interval - step % cfg.checkpoint_interval, cfg.max_iters - step)
        row, step = train_one_epoch(model, method, batches, optimizer, scheduler, scaler, ctx, step, period, cfg,
                                    logger)
        is_best = False
        if step % cfg.eval_interval == 0 or step == cfg.max_iters:
            results = evaluate_all(method, eval_loader, val_set, ctx, cfg)
            name, main_metrics = headline(results, cfg)
            for key, m in results.items():
                row[f"{key}_AP"] = m["AP"]
                logger.info(f"step {step} {key} COCO bbox (x100): {coco_summary(m)}")
            is_best = main_metrics["AP"] > best["AP"]
            if is_best:
                best = {"AP": main_metrics["AP"], "step": step}
        if ctx.is_main:  # refused (NonFiniteStateError) if any tensor is NaN/inf: last.pt stays the last good one
            save_last_and_best(_state(method, optimizer, scheduler, scaler, step, cfg, best, train_set.labeled),
                               out_dir, is_best)
        logger.log_epoch(step, row)
    if not results:  # resumed at the end: evaluate once so metrics.json is complete
        results = evaluate_all(method, eval_loader, val_set, ctx, cfg)
    name, main_metrics = headline(results, cfg)
    strip = {k: {n: v for n, v in m.items() if n != "per_class"} for k, m in results.items()}
    metrics = {**{k: main_metrics[k] for k in COCO_KEYS}, "headline": name, "method": cfg.method,
               "iterations": cfg.max_iters, "last": strip[name], **strip,
               "per_class_AP": main_metrics.get("per_class", {}), "best_AP": best["AP"], "best_step": best["step"],
               "run_dir": str(out_dir)}
    logger.write_metrics(metrics)
    logger.info(f"done: {name} {coco_summary(main_metrics)}")
    logger.close()
    return metrics


def load_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """dataclass defaults < YAML (``-c``, else configs/default.yaml) < command line."""
    return parse_config(TrainConfig, argv, description="Train MixTeacher (CVPR 2023) on COCO/VOC/synthetic COCO.",
                        default_config=DEFAULT_CONFIG)


def config_from_checkpoint(state: dict[str, Any]) -> TrainConfig:
    """The training config stored in a checkpoint."""
    return config_from_dict(TrainConfig, state["config"])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train with the resolved config; returns the metrics written to ``metrics.json``."""
    return run(load_config(argv), config_name(argv))


if __name__ == "__main__":
    main()
