"""Evaluate a Mask R-CNN checkpoint of ``train_det.py`` on the COCO val split (or the synthetic set).

    python -m pvg.eval_det --checkpoint runs/pvg/maskrcnn_default/<time>/last.pt
    python -m pvg.eval_det -c pvg/configs/maskrcnn_pvg_s_coco_1x.yaml --checkpoint last.pt --data.root data/coco

COCO box AP and mask AP (AP, AP50, AP75, APs, APm, APl, AR, per-class AP) through
``shared.detection.evaluate_detections`` (pycocotools), as fractions in ``metrics.json`` (``--output_dir``, default
``<checkpoint folder>/eval/``; box metrics at the top level, mask metrics under ``segm``) and in percent on the
console. Without ``-c`` the checkpoint's own config (model, data, resize) is used; command-line flags override it. A
file that is not a pvg checkpoint is refused before anything is written. torchrun-ready: the val images are split
over the ranks and the detections gathered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pvg.config import DEFAULT_DET_CONFIG, PACKAGE, MaskRCNNConfig, parse_checkpoint_config
from pvg.detection import build_coco_datasets, build_detector, evaluate
from shared.detection import check_checkpoint_categories, coco_summary, sharded_loader
from shared.distributed import DistContext
from shared.entrypoints import finish_run, load_strict, load_trained_checkpoint, open_eval_logger, run_distributed

__all__ = ['MaskRCNNEvalConfig', 'main', 'parse_args']


@dataclass
class MaskRCNNEvalConfig(MaskRCNNConfig):
    """The Mask R-CNN training config plus the checkpoint to evaluate."""

    checkpoint: str = field(default='', metadata={'help': 'train_det.py checkpoint (last.pt / best.pt)'})


def parse_args(argv: Sequence[str] | None = None) -> MaskRCNNEvalConfig:
    """Resolve the config (flags > ``-c`` > the checkpoint's own config > the default)."""
    return parse_checkpoint_config(
        MaskRCNNEvalConfig, argv, DEFAULT_DET_CONFIG, 'Evaluate a Mask R-CNN (Pyramid ViG / PVG) checkpoint on COCO.'
    )


def main(cfg: MaskRCNNEvalConfig) -> dict[str, Any]:
    """Evaluate the detector of ``cfg.checkpoint`` on the val split; writes and returns the metrics."""
    if not cfg.checkpoint:
        raise ValueError('--checkpoint PATH is required')
    return run_distributed(cfg, lambda ctx: _evaluate(cfg, ctx))


def _evaluate(cfg: MaskRCNNEvalConfig, ctx: DistContext) -> dict[str, Any]:
    checkpoint = load_trained_checkpoint(cfg.checkpoint, PACKAGE, 'train_det.py')
    _, val_set = build_coco_datasets(cfg.data)
    check_checkpoint_categories(checkpoint, cfg.checkpoint, val_set)
    num_classes = cfg.num_classes or val_set.num_classes
    model = build_detector(cfg, num_classes, load_pretrained=False).to(ctx.device)
    load_strict(model, checkpoint['model'], cfg.checkpoint, f'mask_rcnn-{cfg.model} ({num_classes} classes)')
    out_dir, logger = open_eval_logger(cfg, ctx)
    eval_loader = sharded_loader(val_set, cfg.data.eval_batch_size, ctx, workers=cfg.data.workers)
    coco = evaluate(model, eval_loader, val_set, ctx, cfg.amp, cfg.mask_threshold)
    metrics = {'model': f'mask_rcnn_{cfg.model}', 'checkpoint': str(cfg.checkpoint), 'images': len(val_set), **coco}
    return finish_run(
        logger,
        metrics,
        f'mask_rcnn-{cfg.model} COCO bbox (x100): {coco_summary(coco)}',
        f"mask_rcnn-{cfg.model} COCO segm (x100): {coco_summary(coco['segm'])}  "
        f"[{len(val_set)} images, {coco['num_detections']} detections]",
        metrics_dir=out_dir,
    )


if __name__ == '__main__':
    main(parse_args())
