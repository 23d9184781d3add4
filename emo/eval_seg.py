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

from typing import Any

from emo.config import DEFAULT_SEG_CONFIG, PACKAGE, SegConfig, parse_checkpoint_config
from emo.data import build_segmentation_datasets
from emo.train_seg import build_model, evaluate
from shared.detection_training import checkpoint_eval_config, eval_script_parser, run_checkpoint_eval
from shared.distributed import DistContext
from shared.entrypoints import finish_run, load_strict, load_trained_checkpoint, open_eval_logger

__all__ = ['SegEvalConfig', 'main', 'parse_args']


SegEvalConfig = checkpoint_eval_config(SegConfig, 'train_seg.py', 'SegEvalConfig', __name__)
parse_args = eval_script_parser(
    parse_checkpoint_config,
    SegEvalConfig,
    DEFAULT_SEG_CONFIG,
    'Evaluate a DeepLabv3-/PSPNet-EMO checkpoint on the ADE20K val split.',
)


def main(cfg: SegEvalConfig) -> dict[str, Any]:
    """Evaluate the segmentor of ``cfg.checkpoint`` on the val split; writes and returns the metrics."""
    return run_checkpoint_eval(cfg, _evaluate)


def _evaluate(cfg: SegEvalConfig, ctx: DistContext) -> dict[str, Any]:
    checkpoint = load_trained_checkpoint(cfg.checkpoint, PACKAGE, 'train_seg.py')
    _, val_set = build_segmentation_datasets(cfg.data)
    model = build_model(cfg, load_pretrained=False).to(ctx.device)
    load_strict(model, checkpoint['model'], cfg.checkpoint, f'{cfg.head}-{cfg.model} with {cfg.num_classes} classes')
    out_dir, logger = open_eval_logger(cfg, ctx)
    result = evaluate(model, val_set, ctx, cfg)
    metrics = {
        'model': f'{cfg.head}_{cfg.model}',
        'checkpoint': str(cfg.checkpoint),
        'images': len(val_set),
        'scales': list(cfg.eval_scales),
        'flip': cfg.eval_flip,
        **result,
    }
    summary = (
        f"{cfg.head}-{cfg.model} ({'multi-scale' if len(cfg.eval_scales) > 1 else 'single-scale'}"
        f"{' + flip' if cfg.eval_flip else ''}, {len(val_set)} images): mIoU {100 * result['mIoU']:.2f}  "
        f"mAcc {100 * result['mAcc']:.2f}  aAcc {100 * result['aAcc']:.2f}"
    )
    return finish_run(logger, metrics, summary, metrics_dir=out_dir)


if __name__ == '__main__':
    main(parse_args())
