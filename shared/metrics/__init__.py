"""Metrics shared by the paper packages, each tested against an independent reference.

Classification (:mod:`shared.metrics.classification`):
    topk_accuracy -- top-k accuracy in percent (torchvision references).

Anomaly / out-of-distribution detection (:mod:`shared.metrics.anomaly`), exact and streamed over one sort:
    roc_curve -- exact ROC curve (scikit-learn ``roc_curve(drop_intermediate=False)``).
    precision_recall_curve -- exact PR curve (scikit-learn layout).
    auroc -- area under the ROC curve (``roc_auc_score``).
    average_precision -- step-wise AP (``average_precision_score``).
    fpr_at_tpr -- FPR at the first ROC point with TPR >= (or >) a target, e.g. FPR95.
    ranking_metrics -- the three above from one sort (segmentation-scale test sets).
    aupro -- normalised area under the per-region-overlap curve up to an FPR limit (MVTec AD / 3D-AD).

Detection (:mod:`shared.metrics.detection`):
    coco_evaluate -- COCO AP/AR (and per-class AP) through pycocotools, with its pitfalls handled.
    expected_calibration_error -- equal-width-bin ECE (Guo et al. 2017).

Image harmonization (:mod:`shared.metrics.harmonization`):
    harmonization_metrics -- per-image MSE, fMSE, PSNR, fPSNR (saic-vul protocol).

Semantic segmentation (:mod:`shared.metrics.segmentation`):
    confusion_matrix -- the split-level confusion matrix, ignored pixels left out.
    segmentation_metrics -- aAcc, mIoU, mAcc and per-class IoU / Acc (mmseg convention).
"""

from shared.metrics.anomaly import (
    aupro,
    auroc,
    average_precision,
    fpr_at_tpr,
    precision_recall_curve,
    ranking_metrics,
    roc_curve,
)
from shared.metrics.classification import topk_accuracy
from shared.metrics.detection import coco_evaluate, expected_calibration_error
from shared.metrics.harmonization import harmonization_metrics
from shared.metrics.segmentation import confusion_matrix, segmentation_metrics

__all__ = [
    "aupro",
    "auroc",
    "average_precision",
    "coco_evaluate",
    "confusion_matrix",
    "expected_calibration_error",
    "fpr_at_tpr",
    "harmonization_metrics",
    "precision_recall_curve",
    "ranking_metrics",
    "roc_curve",
    "segmentation_metrics",
    "topk_accuracy",
]
