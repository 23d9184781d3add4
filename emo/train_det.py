"""COCO object detection with RetinaNet-EMO: the paper's RetinaNet 1x recipe on torchvision's RetinaNet.

The recipe of the official mmdet configs (zhangzjn/EMO ``down-stream-tasks/mmdetection/configs/retinanet_emo/
retinanet_emo_{1M,2M,5M}_fpn_1x_coco.py``): 12 epochs, AdamW lr 2e-4 (betas 0.9/0.999), weight decay 0.05 except
parameters whose name contains ``norm``, no gradient clipping, mmcv's ``CosineAnnealing`` (per epoch, to 0) with a
500-iteration linear warm-up from 1e-3 x lr, 4 images per GPU on 8 GPUs (global batch 32; lr scaled linearly for
other batches), resize to 1333 x 800 keeping the ratio, horizontal flip 0.5, batches grouped by aspect ratio, the
backbone initialised from an ImageNet checkpoint, ``frozen_stages=1``, ``norm_eval``; COCO evaluation of the val
split after every epoch (``shared.detection.evaluate_detections``). The model is
:func:`emo.detection.build_retinanet`, the config :class:`emo.config.DetectionConfig`.

    cd emo && python train_det.py                            # embedded default: synthetic COCO set, CPU
    python -m emo.train_det -c emo/configs/retinanet_emo_1m_coco_1x.yaml --data.root data/coco \\
        --pretrained_backbone net.pth
    torchrun --nproc_per_node=8 -m emo.train_det -c emo/configs/retinanet_emo_1m_coco_1x.yaml ...

The run folder gets ``config.yaml``, ``train.log``, ``log.csv``, TensorBoard scalars, ``last.pt``/``best.pt``
(best COCO AP) and ``metrics.json``; ``--resume last.pt`` continues a run exactly (the file is read and checked
before anything is written). ``eval_interval`` and ``checkpoint_interval`` count epochs.

``train_ssdlite.py`` runs this same loop for SSDLite-EMO (:func:`detector_parts` picks the model and data builders
from the config's type). The loop (epochs, resume, evaluation, checkpoints) is ``shared.detection_training``'s, as
pvg's Mask R-CNN: this script gives it the detector, the parameter groups, the schedule, the loss terms, the
evaluation and the summary (:func:`recipe`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emo.config import BACKBONE_SOURCES, DEFAULT_DET_CONFIG, PACKAGE, DetectionConfig, DetectorConfig, SSDLiteConfig
from emo.data import build_detection_datasets, build_ssdlite_datasets
from emo.detection import build_detector, evaluate
from emo.ssdlite import build_ssdlite_detector
from shared import detection_training
from shared.config import script_parser
from shared.detection import COCO_METRIC_KEYS, coco_summary
from shared.detection_training import DetectionRecipe, DetectionTraining, DetectorParts, EpochHook
from shared.distributed import DistContext
from shared.logger import RunLogger

__all__ = [
    'DetectorParts',
    'detection_param_groups',
    'detector_parts',
    'evaluate',
    'main',
    'mmdet_cosine_schedule',
    'parse_args',
    'train_one_epoch',
]

#: The model's losses (torchvision's RetinaNet) and their names in the log.
LOSS_NAMES = {'classification': 'loss_cls', 'bbox_regression': 'loss_bbox'}


def detection_param_groups(model: nn.Module, weight_decay: float, no_decay_keys: Sequence[str]) -> list[dict]:
    """AdamW groups as mmcv's ``DefaultOptimizerConstructor`` with ``custom_keys={key: dict(decay_mult=0.)}``.

    A trainable parameter whose full name contains one of ``no_decay_keys`` gets no weight decay; every other one
    (biases included, as in mmdet) gets ``weight_decay``. Frozen parameters are left out.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(key in name for key in no_decay_keys) else decay).append(param)
    return [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]


def mmdet_cosine_schedule(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    iters_per_epoch: int,
    warmup_iters: int,
    warmup_ratio: float,
    min_lr: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """mmcv's ``CosineAnnealingLrUpdaterHook`` (``by_epoch=True``) with ``warmup='linear'``, stepped per iteration.

    The regular lr of epoch e is ``min_lr + (base - min_lr) * (1 + cos(pi * e / epochs)) / 2``; during the first
    ``warmup_iters`` iterations it is multiplied by ``1 - (1 - i / warmup_iters) * (1 - warmup_ratio)``.
    """
    bases = [g['lr'] for g in optimizer.param_groups]

    def factor(base: float):
        def f(step: int) -> float:
            epoch = min(step // iters_per_epoch, epochs)
            regular = min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * epoch / epochs))
            if step < warmup_iters:
                regular *= 1 - (1 - step / warmup_iters) * (1 - warmup_ratio)
            return regular / base if base else 0.0

        return f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(b) for b in bases])


def detector_parts(cfg: DetectorConfig) -> DetectorParts:
    """RetinaNet for a :class:`DetectionConfig`, SSDLite for an :class:`SSDLiteConfig`."""
    if isinstance(cfg, SSDLiteConfig):
        return DetectorParts('ssdlite', build_ssdlite_detector, build_ssdlite_datasets)
    if isinstance(cfg, DetectionConfig):
        return DetectorParts('retinanet', build_detector, build_detection_datasets)
    raise TypeError(f'no detector for a {type(cfg).__name__}')


def _build_training(cfg: DetectorConfig, ctx: DistContext, logger: RunLogger, pretrained: bool) -> DetectionTraining:
    """Datasets, detector (backbone checkpoint loaded when ``pretrained``), loaders, AdamW and its schedule."""
    parts = detector_parts(cfg)
    return detection_training.build_detection_training(
        cfg,
        ctx,
        logger,
        pretrained,
        parts=parts,
        param_groups=lambda model: detection_param_groups(model, cfg.weight_decay, cfg.no_decay_keys),
        schedule=lambda optimizer, steps_per_epoch: mmdet_cosine_schedule(
            optimizer, cfg.epochs, steps_per_epoch, cfg.warmup_iters, cfg.warmup_ratio, cfg.min_lr
        ),
    )


#: One pass over the training loader: (epoch statistics, global step after the epoch); log.csv has the total first.
train_one_epoch = functools.partial(detection_training.train_one_epoch, loss_names=LOSS_NAMES, total_first=True)


def _evaluate_epoch(t: DetectionTraining, ctx: DistContext, cfg: DetectorConfig, logger: RunLogger, epoch: int):
    coco = evaluate(t.model, t.eval_loader, t.val_set, ctx, cfg.amp)
    logger.info(f'epoch {epoch} COCO bbox (x100): {coco_summary(coco)}')
    return coco, {k: coco[k] for k in COCO_METRIC_KEYS}, {'AP': coco['AP']}


def _summarize(cfg: DetectorConfig, coco: dict[str, Any], best: dict[str, Any], out_dir: Path):
    metrics = {
        'model': f'{detector_parts(cfg).name}_{cfg.model}',
        'epochs': cfg.epochs,
        'last': {k: v for k, v in coco.items() if k != 'per_class'},
        'per_class_AP': coco.get('per_class', {}),
        'best_AP': best['AP'],
        'best_epoch': best['epoch'],
        'run_dir': str(out_dir),
    }
    return metrics, f"done: best AP {100 * best['AP']:.1f} at epoch {best['epoch']}"


def recipe(cfg: DetectorConfig) -> DetectionRecipe:
    """How :func:`shared.detection_training.train_detector` trains the detector of ``cfg``."""
    name = detector_parts(cfg).name
    return DetectionRecipe(
        package=PACKAGE,
        default_name=f'{name}_default',
        recipe=name,
        sources=BACKBONE_SOURCES,
        build=_build_training,
        train_one_epoch=train_one_epoch,
        evaluate=_evaluate_epoch,
        summarize=_summarize,
    )


parse_args = script_parser(DetectionConfig, 'Train RetinaNet-EMO on COCO (or the synthetic set).', DEFAULT_DET_CONFIG)


def main(cfg: DetectorConfig, on_epoch_end: EpochHook | None = None) -> dict[str, Any]:
    """Train and evaluate; returns (and writes to ``metrics.json``) the final metrics.

    Args:
        cfg: the resolved config (its ``name`` names the run folder ``runs/emo/<name>/<time>``).
        on_epoch_end: called as ``hook(epoch, row)`` after each epoch's checkpoint is on disk.
    """
    return detection_training.train_detector(cfg, recipe(cfg), on_epoch_end)


if __name__ == '__main__':
    main(parse_args())
