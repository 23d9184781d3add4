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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from emo.config import DEFAULT_DET_CONFIG, PACKAGE, DetectionConfig, DetectorConfig, parse_checkpoint_config
from emo.detection import evaluate
from emo.train_det import detector_parts
from shared.detection import check_checkpoint_categories, coco_summary, sharded_loader
from shared.distributed import DistContext
from shared.entrypoints import finish_run, load_strict, load_trained_checkpoint, open_eval_logger, run_distributed

__all__ = ['DetEvalConfig', 'main', 'parse_args']


@dataclass
class DetEvalConfig(DetectionConfig):
    """The detection training config plus the checkpoint to evaluate."""

    checkpoint: str = field(default='', metadata={'help': 'train_det.py checkpoint (last.pt / best.pt)'})


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
    return run_distributed(cfg, lambda ctx: _evaluate(cfg, ctx))


def _evaluate(cfg: DetectorConfig, ctx: DistContext) -> dict[str, Any]:
    checkpoint = load_trained_checkpoint(cfg.checkpoint, PACKAGE, 'train_det.py')
    parts = detector_parts(cfg)
    _, val_set = parts.build_datasets(cfg.data)
    check_checkpoint_categories(checkpoint, cfg.checkpoint, val_set)
    num_classes = cfg.num_classes or val_set.num_classes
    model = parts.build_model(cfg, num_classes, load_pretrained=False).to(ctx.device)
    load_strict(model, checkpoint['model'], cfg.checkpoint, f'{parts.name}-{cfg.model} ({num_classes} classes)')
    out_dir, logger = open_eval_logger(cfg, ctx)
    eval_loader = sharded_loader(val_set, cfg.data.eval_batch_size, ctx, workers=cfg.data.workers)
    coco = evaluate(model, eval_loader, val_set, ctx, cfg.amp)
    metrics = {
        'model': f'{parts.name}_{cfg.model}',
        'checkpoint': str(cfg.checkpoint),
        'images': len(val_set),
        **coco,
    }
    summary = (
        f'{parts.name}-{cfg.model} COCO bbox (x100): {coco_summary(coco)}  '
        f"[{len(val_set)} images, {coco['num_detections']} detections]"
    )
    return finish_run(logger, metrics, summary, metrics_dir=out_dir)


if __name__ == '__main__':
    main(parse_args())
