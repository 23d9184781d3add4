"""MixTeacher (CVPR 2023, arXiv 2303.09061): mining promising labels with a mixed-scale teacher for semi-supervised
object detection, on torchvision's Faster R-CNN (R50-FPN for the paper's recipes, ImageNet MobileNetV2-FPN for the
embedded default and the evidence) and, as the paper's FCOS variant, on torchvision's FCOS (P3-P7)."""

from mixteacher.augment import ViewConfig, box_transform, make_view, transform_boxes, transform_points
from mixteacher.data import CocoDetection, CocoImages, SemiBatchSampler, SemiSupervisedDataset, voc_to_coco
from mixteacher.fcos import fcos_losses, fcos_match
from mixteacher.losses import fast_rcnn_loss, soft_teacher_weights
from mixteacher.mining import dense_score_promotion, match_low_confidence, promoted_by_score, score_promotion
from mixteacher.mix_teacher import MixTeacher, MixTeacherSettings
from mixteacher.model import (
    VARIANTS,
    DetectorConfig,
    MixedScaleFasterRCNN,
    MixedScaleFCOS,
    ScaleGate,
    build_detector,
    create_model,
    crop_to,
    downscale_image_list,
    load_backbone_weights,
    mix_pyramids,
)
from mixteacher.teacher import PseudoLabels, box_jitter_uncertainty, ema_update, unsup_weight

__all__ = [
    "DEMO_INFO",
    "VARIANTS",
    "CocoDetection",
    "CocoImages",
    "DetectorConfig",
    "MixTeacher",
    "MixTeacherSettings",
    "MixedScaleFCOS",
    "MixedScaleFasterRCNN",
    "PseudoLabels",
    "ScaleGate",
    "SemiBatchSampler",
    "SemiSupervisedDataset",
    "ViewConfig",
    "box_jitter_uncertainty",
    "box_transform",
    "build_detector",
    "create_model",
    "crop_to",
    "dense_score_promotion",
    "downscale_image_list",
    "ema_update",
    "fast_rcnn_loss",
    "fcos_losses",
    "fcos_match",
    "load_backbone_weights",
    "make_view",
    "match_low_confidence",
    "mix_pyramids",
    "promoted_by_score",
    "score_promotion",
    "soft_teacher_weights",
    "transform_boxes",
    "transform_points",
    "unsup_weight",
    "voc_to_coco",
]

DEMO_INFO = {
    "task": "semi-supervised object detection (MixTeacher, Faster R-CNN FPN)",
    "dataset": "synthetic COCO 2017-format shapes of ~6-96 px, 10 % labeled (STAC split) + 90 % unlabeled",
    "metrics": ["AP", "AP50", "APs", "APm", "APl", "supervised_AP"],
}
