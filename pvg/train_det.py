"""COCO instance segmentation with Mask R-CNN on a Pyramid ViG / PVG + FPN backbone: the papers' Mask R-CNN 1x.

The recipe (README, Detection): mmdet's Mask R-CNN 1x (12 epochs, lr x 0.1 after epochs 8 and 11, 500-iteration
linear warm-up from 1e-3 x lr, 2 images per GPU on 8 GPUs, resize to 1333 x 800 keeping the ratio, flip 0.5, batches
grouped by aspect ratio) with AdamW (lr 1e-4 for a global batch of 16, scaled linearly; weight decay 0.05, none on
BatchNorm parameters and the position embedding), the backbone initialised from an ImageNet checkpoint. COCO box and
mask AP of the val split after every epoch (``shared.detection.evaluate_detections``). The model is
:func:`pvg.detection.build_mask_rcnn`, the config :class:`pvg.config.MaskRCNNConfig`.

    cd pvg && python train_det.py                           # embedded default: synthetic COCO set, CPU
    python -m pvg.train_det -c pvg/configs/maskrcnn_pvg_s_coco_1x.yaml --data.root data/coco \\
        --pretrained_backbone pvg_s.pth
    torchrun --nproc_per_node=8 -m pvg.train_det -c pvg/configs/maskrcnn_pvig_s_coco_1x.yaml ...

The run folder gets ``config.yaml``, ``train.log``, ``log.csv``, TensorBoard scalars, ``last.pt``/``best.pt`` (best
box AP) and ``metrics.json``; ``--resume last.pt`` continues a run exactly (the file is read and checked before
anything is written). A non-finite loss stops the run naming the step (the last checkpoint stays). The loop (epochs,
resume, evaluation, checkpoints) is ``shared.detection_training``'s, as emo's RetinaNet / SSDLite: this script gives
it the detector, the parameter groups, the schedule, the loss terms, the evaluation and the summary (``RECIPE``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pvg.config import DEFAULT_DET_CONFIG, PACKAGE, MaskRCNNConfig
from pvg.detection import MASK_RCNN, evaluate
from shared import detection_training
from shared.config import script_parser
from shared.detection import COCO_METRIC_KEYS, coco_summary
from shared.detection_training import DetectionRecipe, DetectionTraining, EpochHook
from shared.distributed import DistContext
from shared.logger import RunLogger

__all__ = ['LOSS_NAMES', 'main', 'mmdet_step_schedule', 'param_groups', 'parse_args', 'train_one_epoch']

#: torchvision's Mask R-CNN losses, in the order they are logged.
LOSS_NAMES = ('loss_objectness', 'loss_rpn_box_reg', 'loss_classifier', 'loss_box_reg', 'loss_mask')


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm: bool, no_decay_keys: Sequence[str]) -> list:
    """AdamW groups: no weight decay for BatchNorm parameters (``no_decay_norm``) and for parameters whose name
    contains one of ``no_decay_keys``; frozen parameters are left out."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, _BatchNorm) for p in m.parameters()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = (no_decay_norm and id(param) in norm_params) or any(key in name for key in no_decay_keys)
        (no_decay if skip else decay).append(param)
    return [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]


def mmdet_step_schedule(
    optimizer: torch.optim.Optimizer,
    iters_per_epoch: int,
    steps: Sequence[int],
    gamma: float,
    warmup_iters: int,
    warmup_ratio: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """mmcv's ``StepLrUpdaterHook`` (by epoch, ``lr x gamma`` at each epoch of ``steps``) with a linear warm-up,
    stepped per iteration: during the first ``warmup_iters`` iterations the factor is multiplied by
    ``1 - (1 - i / warmup_iters) * (1 - warmup_ratio)``."""

    def factor(step: int) -> float:
        epoch = step // iters_per_epoch
        value = gamma ** sum(epoch >= s for s in steps)
        if step < warmup_iters:
            value *= 1 - (1 - step / warmup_iters) * (1 - warmup_ratio)
        return value

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _build_training(cfg: MaskRCNNConfig, ctx: DistContext, logger: RunLogger, pretrained: bool) -> DetectionTraining:
    return detection_training.build_detection_training(
        cfg,
        ctx,
        logger,
        pretrained,
        parts=MASK_RCNN,
        param_groups=lambda model: param_groups(model, cfg.weight_decay, cfg.no_decay_norm, cfg.no_decay_keys),
        schedule=lambda optimizer, steps_per_epoch: mmdet_step_schedule(
            optimizer, steps_per_epoch, cfg.lr_steps, cfg.lr_gamma, cfg.warmup_iters, cfg.warmup_ratio
        ),
    )


#: One pass over the training loader: (mean losses and throughput, global step after the epoch).
train_one_epoch = functools.partial(detection_training.train_one_epoch, loss_names={n: n for n in LOSS_NAMES})


def _evaluate_epoch(t: DetectionTraining, ctx: DistContext, cfg: MaskRCNNConfig, logger: RunLogger, epoch: int):
    coco = evaluate(t.model, t.eval_loader, t.val_set, ctx, cfg.amp, cfg.mask_threshold)
    logger.info(f'epoch {epoch} COCO bbox (x100): {coco_summary(coco)}')
    logger.info(f'epoch {epoch} COCO segm (x100): {coco_summary(coco["segm"])}')
    values = {f'bbox_{k}': coco[k] for k in COCO_METRIC_KEYS}
    values.update({f'segm_{k}': coco['segm'][k] for k in COCO_METRIC_KEYS})
    return coco, values, {'AP': coco['AP'], 'segm_AP': coco['segm']['AP']}


def _summarize(cfg: MaskRCNNConfig, coco: dict[str, Any], best: dict[str, Any], out_dir: Path):
    metrics = {
        'model': f'mask_rcnn_{cfg.model}',
        'epochs': cfg.epochs,
        'bbox': {k: v for k, v in coco.items() if k not in ('segm', 'per_class')},
        'segm': {k: v for k, v in coco.get('segm', {}).items() if k != 'per_class'},
        'per_class_AP': coco.get('per_class', {}),
        'best': best,
        'run_dir': str(out_dir),
    }
    return metrics, f"done: best box AP {100 * best['AP']:.1f} at epoch {best['epoch']}"


RECIPE = DetectionRecipe(
    package=PACKAGE,
    default_name='maskrcnn_default',
    recipe='Mask R-CNN',
    sources='an official pvig_*.pth, see pvg.OFFICIAL_RELEASE, or a pvg.train checkpoint',
    build=_build_training,
    train_one_epoch=train_one_epoch,
    evaluate=_evaluate_epoch,
    summarize=_summarize,
)

parse_args = script_parser(
    MaskRCNNConfig,
    'Train Mask R-CNN with a Pyramid ViG / PVG backbone on COCO (or the synthetic set).',
    DEFAULT_DET_CONFIG,
)


def main(cfg: MaskRCNNConfig, on_epoch_end: EpochHook | None = None) -> dict[str, Any]:
    """Train and evaluate; returns (and writes to ``metrics.json``) the final metrics.

    Args:
        cfg: the resolved config (its ``name`` names the run folder ``runs/pvg/<name>/<time>``).
        on_epoch_end: called as ``hook(epoch, row)`` after each epoch's checkpoint is on disk.
    """
    return detection_training.train_detector(cfg, RECIPE, on_epoch_end)


if __name__ == '__main__':
    main(parse_args())
