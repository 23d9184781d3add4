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

import functools
from typing import Any

from pvg.config import DEFAULT_DET_CONFIG, PACKAGE, MaskRCNNConfig, parse_checkpoint_config
from pvg.detection import MASK_RCNN, evaluate
from shared.detection_training import (
    checkpoint_eval_config,
    eval_script_parser,
    evaluate_detector_checkpoint,
    run_checkpoint_eval,
)
from shared.distributed import DistContext

__all__ = ['MaskRCNNEvalConfig', 'main', 'parse_args']


MaskRCNNEvalConfig = checkpoint_eval_config(MaskRCNNConfig, 'train_det.py', 'MaskRCNNEvalConfig', __name__)
parse_args = eval_script_parser(
    parse_checkpoint_config,
    MaskRCNNEvalConfig,
    DEFAULT_DET_CONFIG,
    'Evaluate a Mask R-CNN (Pyramid ViG / PVG) checkpoint on COCO.',
)


def main(cfg: MaskRCNNEvalConfig) -> dict[str, Any]:
    """Evaluate the detector of ``cfg.checkpoint`` on the val split; writes and returns the metrics."""
    return run_checkpoint_eval(cfg, _evaluate)


def _evaluate(cfg: MaskRCNNEvalConfig, ctx: DistContext) -> dict[str, Any]:
    with_threshold = functools.partial(evaluate, mask_threshold=cfg.mask_threshold)
    return evaluate_detector_checkpoint(cfg, ctx, PACKAGE, 'train_det.py', MASK_RCNN, with_threshold)


if __name__ == '__main__':
    main(parse_args())
