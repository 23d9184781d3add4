"""Evaluate a RetinaNet-EMO checkpoint of ``train_det.py`` on the COCO val split (or the synthetic set).

    python -m emo.eval_det --checkpoint runs/emo/retinanet_default/<time>/last.pt
    python -m emo.eval_det -c emo/configs/retinanet_emo_1m_coco_1x.yaml --checkpoint last.pt --data.root data/coco

COCO bbox AP, AP50, AP75, APs, APm, APl (and AR, per-class AP) through ``shared.detection.evaluate_detections``
(pycocotools), as fractions in ``metrics.json`` (``--output_dir``, default ``<checkpoint folder>/eval/``) and in
percent on the console. Without ``-c`` the checkpoint's own config (model, data, resize) is used; command-line flags
override it. A file that is not an emo checkpoint is refused before anything is written. torchrun-ready: the val
images are split over the ranks and the detections gathered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emo.config import DEFAULT_DET_CONFIG, PACKAGE, DetectionConfig, DetectorConfig, parse_checkpoint_config
from emo.detection import evaluate
from emo.train_det import detector_parts
from shared.checkpoint import load_checkpoint
from shared.detection import CocoDetection, coco_summary, sharded_loader
from shared.distributed import cleanup_distributed, init_distributed
from shared.logger import RunLogger

__all__ = ['DetEvalConfig', 'main', 'parse_args']


@dataclass
class DetEvalConfig(DetectionConfig):
    """The detection training config plus the checkpoint to evaluate."""

    checkpoint: str = field(default='', metadata={'help': 'train_det.py checkpoint (last.pt / best.pt)'})


def _check_categories(checkpoint: Mapping[str, Any], path: str, val_set: CocoDetection) -> None:
    """The checkpoint's category ids (in label order) must be the val annotations' ones."""
    stored_ids = checkpoint.get('categories', {}).get('ids')
    if stored_ids is not None and list(stored_ids) != val_set.cat_ids:
        raise ValueError(
            f'{path} was trained on category ids {stored_ids}, but {val_set.annotation_file} has {val_set.cat_ids}'
        )


def parse_args(argv: Sequence[str] | None = None) -> DetEvalConfig:
    """Resolve the config (flags > ``-c`` > the checkpoint's own config > the default)."""
    return parse_checkpoint_config(
        DetEvalConfig, argv, DEFAULT_DET_CONFIG, 'Evaluate a RetinaNet-EMO checkpoint on the COCO val split.'
    )


def main(cfg: DetectorConfig) -> dict[str, Any]:
    """Evaluate the detector of ``cfg.checkpoint`` on the val split; writes and returns the metrics.

    ``cfg`` is a :class:`DetEvalConfig` or an ``eval_ssdlite.py`` config (a detector config with ``checkpoint``)."""
    if not cfg.checkpoint:
        raise ValueError('--checkpoint PATH is required')
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = init_distributed(cfg.device)
    try:
        checkpoint = load_checkpoint(cfg.checkpoint, package=PACKAGE, required=('model',))
        if not isinstance(checkpoint['model'], Mapping):
            raise ValueError(f"{cfg.checkpoint} is not a train_det.py checkpoint (no 'model' state_dict)")
        parts = detector_parts(cfg)
        _, val_set = parts.build_datasets(cfg.data)
        _check_categories(checkpoint, cfg.checkpoint, val_set)
        num_classes = cfg.num_classes or val_set.num_classes
        model = parts.build_model(cfg, num_classes, load_pretrained=False).to(ctx.device)
        try:
            model.load_state_dict(checkpoint['model'], strict=True)
        except RuntimeError as e:
            raise ValueError(
                f'{cfg.checkpoint} does not fit {parts.name}-{cfg.model} ({num_classes} classes): {e}'
            ) from e
        out_dir = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.checkpoint).parent / 'eval'
        logger = RunLogger(out_dir, is_main=ctx.is_main, tensorboard=False, name='eval')
        eval_loader = sharded_loader(val_set, cfg.data.eval_batch_size, ctx, workers=cfg.data.workers)
        coco = evaluate(model, eval_loader, val_set, ctx, cfg.amp)
        metrics = {
            'model': f'{parts.name}_{cfg.model}',
            'checkpoint': str(cfg.checkpoint),
            'images': len(val_set),
            **coco,
        }
        logger.write_metrics(metrics)
        logger.info(
            f'{parts.name}-{cfg.model} COCO bbox (x100): {coco_summary(coco)}  '
            f"[{len(val_set)} images, {coco['num_detections']} detections]"
        )
        logger.info(f"metrics written to {out_dir / 'metrics.json'}")
        logger.close()
        return metrics
    finally:
        cleanup_distributed()


if __name__ == '__main__':
    main(parse_args())
