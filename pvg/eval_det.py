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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pvg.config import DEFAULT_DET_CONFIG, PACKAGE, MaskRCNNConfig, parse_checkpoint_config
from pvg.detection import build_coco_datasets, build_detector, evaluate
from shared.checkpoint import load_checkpoint
from shared.detection import coco_summary, sharded_loader
from shared.distributed import cleanup_distributed, init_distributed
from shared.logger import RunLogger

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
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = init_distributed(cfg.device)
    try:
        checkpoint = load_checkpoint(cfg.checkpoint, package=PACKAGE, required=('model',))
        if not isinstance(checkpoint['model'], Mapping):
            raise ValueError(f"{cfg.checkpoint} is not a train_det.py checkpoint (no 'model' state_dict)")
        _, val_set = build_coco_datasets(cfg.data)
        stored_ids = checkpoint.get('categories', {}).get('ids')
        if stored_ids is not None and list(stored_ids) != val_set.cat_ids:
            raise ValueError(
                f'{cfg.checkpoint} was trained on category ids {stored_ids}, but {val_set.annotation_file} has '
                f'{val_set.cat_ids}'
            )
        num_classes = cfg.num_classes or val_set.num_classes
        model = build_detector(cfg, num_classes, load_pretrained=False).to(ctx.device)
        try:
            model.load_state_dict(checkpoint['model'], strict=True)
        except RuntimeError as e:
            raise ValueError(f'{cfg.checkpoint} does not fit mask_rcnn-{cfg.model} ({num_classes} classes): {e}') from e
        out_dir = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.checkpoint).parent / 'eval'
        logger = RunLogger(out_dir, is_main=ctx.is_main, tensorboard=False, name='eval')
        eval_loader = sharded_loader(val_set, cfg.data.eval_batch_size, ctx, workers=cfg.data.workers)
        coco = evaluate(model, eval_loader, val_set, ctx, cfg.amp, cfg.mask_threshold)
        metrics = {'model': f'mask_rcnn_{cfg.model}', 'checkpoint': str(cfg.checkpoint), 'images': len(val_set), **coco}
        logger.write_metrics(metrics)
        logger.info(f'mask_rcnn-{cfg.model} COCO bbox (x100): {coco_summary(coco)}')
        logger.info(
            f"mask_rcnn-{cfg.model} COCO segm (x100): {coco_summary(coco['segm'])}  "
            f"[{len(val_set)} images, {coco['num_detections']} detections]"
        )
        logger.info(f"metrics written to {out_dir / 'metrics.json'}")
        logger.close()
        return metrics
    finally:
        cleanup_distributed()


if __name__ == '__main__':
    main(parse_args())
