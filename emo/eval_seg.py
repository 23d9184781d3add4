"""Evaluate a DeepLabv3-/PSPNet-EMO checkpoint of ``train_seg.py`` on the ADE20K val split (or the synthetic set).

    python -m emo.eval_seg --checkpoint runs/emo/seg_default/<time>/last.pt
    python -m emo.eval_seg -c emo/configs/deeplabv3_emo_1m_ade20k_80k.yaml --checkpoint last.pt --data.root data/ade
    python -m emo.eval_seg --checkpoint last.pt --eval_scales 0.5 0.75 1.0 1.25 1.5 1.75 --eval_flip   # MS + flip

aAcc, mIoU, mAcc (and per-class IoU / Acc) from one confusion matrix over the split (``shared.metrics.segmentation``,
mmseg's convention), as fractions in ``metrics.json`` (``--output_dir``, default ``<checkpoint folder>/eval/``) and
in percent on the console. Single-scale by default (each image resized to fit (2048, 512), mmseg ``whole`` mode);
``--eval_scales`` / ``--eval_flip`` give mmseg's multi-scale + flip test (softmax averaged). Without ``-c`` the
checkpoint's own config is used; command-line flags override it. A file that is not an emo checkpoint is refused
before anything is written. torchrun-ready: the val images are split over the ranks and the matrices summed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emo.config import DEFAULT_SEG_CONFIG, PACKAGE, SegConfig, parse_checkpoint_config
from emo.data import build_segmentation_datasets
from emo.train_seg import build_model, evaluate
from shared.checkpoint import load_checkpoint
from shared.distributed import cleanup_distributed, init_distributed
from shared.logger import RunLogger

__all__ = ['SegEvalConfig', 'main', 'parse_args']


@dataclass
class SegEvalConfig(SegConfig):
    """The segmentation training config plus the checkpoint to evaluate."""

    checkpoint: str = field(default='', metadata={'help': 'train_seg.py checkpoint (last.pt / best.pt)'})


def parse_args(argv: Sequence[str] | None = None) -> SegEvalConfig:
    """Resolve the config (flags > ``-c`` > the checkpoint's own config > the default)."""
    return parse_checkpoint_config(
        SegEvalConfig, argv, DEFAULT_SEG_CONFIG, 'Evaluate a DeepLabv3-/PSPNet-EMO checkpoint on the ADE20K val split.'
    )


def main(cfg: SegEvalConfig) -> dict[str, Any]:
    """Evaluate the segmentor of ``cfg.checkpoint`` on the val split; writes and returns the metrics."""
    if not cfg.checkpoint:
        raise ValueError('--checkpoint PATH is required')
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = init_distributed(cfg.device)
    try:
        checkpoint = load_checkpoint(cfg.checkpoint, package=PACKAGE, required=('model',))
        if not isinstance(checkpoint['model'], Mapping):
            raise ValueError(f"{cfg.checkpoint} is not a train_seg.py checkpoint (no 'model' state_dict)")
        _, val_set = build_segmentation_datasets(cfg.data)
        model = build_model(cfg, load_pretrained=False).to(ctx.device)
        try:
            model.load_state_dict(checkpoint['model'], strict=True)
        except RuntimeError as e:
            raise ValueError(
                f'{cfg.checkpoint} does not fit {cfg.head}-{cfg.model} with {cfg.num_classes} classes: {e}'
            ) from e
        out_dir = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.checkpoint).parent / 'eval'
        logger = RunLogger(out_dir, is_main=ctx.is_main, tensorboard=False, name='eval')
        result = evaluate(model, val_set, ctx, cfg)
        metrics = {
            'model': f'{cfg.head}_{cfg.model}',
            'checkpoint': str(cfg.checkpoint),
            'images': len(val_set),
            'scales': list(cfg.eval_scales),
            'flip': cfg.eval_flip,
            **result,
        }
        logger.write_metrics(metrics)
        logger.info(
            f"{cfg.head}-{cfg.model} ({'multi-scale' if len(cfg.eval_scales) > 1 else 'single-scale'}"
            f"{' + flip' if cfg.eval_flip else ''}, {len(val_set)} images): mIoU {100 * result['mIoU']:.2f}  "
            f"mAcc {100 * result['mAcc']:.2f}  aAcc {100 * result['aAcc']:.2f}"
        )
        logger.info(f"metrics written to {out_dir / 'metrics.json'}")
        logger.close()
        return metrics
    finally:
        cleanup_distributed()


if __name__ == '__main__':
    main(parse_args())
