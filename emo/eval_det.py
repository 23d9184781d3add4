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

from typing import Any

from emo.config import DEFAULT_DET_CONFIG, PACKAGE, DetectionConfig, DetectorConfig, parse_checkpoint_config
from emo.detection import evaluate
from emo.train_det import detector_parts
from shared.detection_training import (
    checkpoint_eval_config,
    eval_script_parser,
    evaluate_detector_checkpoint,
    run_checkpoint_eval,
)
from shared.distributed import DistContext

__all__ = ['DetEvalConfig', 'main', 'parse_args']


DetEvalConfig = checkpoint_eval_config(DetectionConfig, 'train_det.py', 'DetEvalConfig', __name__)
parse_args = eval_script_parser(
    parse_checkpoint_config,
    DetEvalConfig,
    DEFAULT_DET_CONFIG,
    'Evaluate a RetinaNet-EMO checkpoint on the COCO val split.',
)


def main(cfg: DetectorConfig) -> dict[str, Any]:
    """Evaluate the detector of ``cfg.checkpoint`` on the val split; writes and returns the metrics.

    ``cfg`` is a :class:`DetEvalConfig` or an ``eval_ssdlite.py`` config (a detector config with ``checkpoint``)."""
    return run_checkpoint_eval(cfg, _evaluate)


def _evaluate(cfg: DetectorConfig, ctx: DistContext) -> dict[str, Any]:
    return evaluate_detector_checkpoint(cfg, ctx, PACKAGE, 'train_det.py', detector_parts(cfg), evaluate)


if __name__ == '__main__':
    main(parse_args())
