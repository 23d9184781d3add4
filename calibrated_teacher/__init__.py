"""Calibrated Teacher for Sparsely Annotated Object Detection (AAAI 2023, arXiv 2303.07582): an EMA teacher whose
detection scores are Platt-calibrated on the sparse annotations, so that one threshold selects pseudo boxes at every
stage and for every detector, and the Focal IoU Weight (FIoU) on negative anchors. See README.md."""

from calibrated_teacher.calibration import CalibrationBuffer, ScoreCalibrator, calibration_set
from calibrated_teacher.config import CalibratedTeacherSettings, DataConfig, DetectorConfig, TrainConfig
from calibrated_teacher.losses import FIoUParams, fiou_anchor_weights, focal_iou_weight, retinanet_fiou_losses
from calibrated_teacher.model import VARIANTS, SparseRetinaNet, build_detector, create_model
from calibrated_teacher.pseudo_labels import MergeRules, box_iof, merge_pseudo_boxes, overlaps_annotation
from calibrated_teacher.sparse import drop_annotations, keep_one_per_category, kept_ratio, write_sparse_split
from calibrated_teacher.teacher_student import CalibratedTeacher

DEMO_INFO = {
    "task": "sparsely annotated object detection (Calibrated Teacher + FIoU, RetinaNet)",
    "dataset": "synthetic COCO 2017-format shapes with 50 % of the train annotations dropped",
    "metrics": ["student_AP", "teacher_AP", "ece_raw", "ece_calibrated"],
}

__all__ = [
    "DEMO_INFO",
    "VARIANTS",
    "CalibratedTeacher",
    "CalibratedTeacherSettings",
    "CalibrationBuffer",
    "DataConfig",
    "DetectorConfig",
    "FIoUParams",
    "MergeRules",
    "ScoreCalibrator",
    "SparseRetinaNet",
    "TrainConfig",
    "box_iof",
    "build_detector",
    "calibration_set",
    "create_model",
    "drop_annotations",
    "fiou_anchor_weights",
    "focal_iou_weight",
    "keep_one_per_category",
    "kept_ratio",
    "merge_pseudo_boxes",
    "overlaps_annotation",
    "retinanet_fiou_losses",
    "write_sparse_split",
]
