"""SLEEG (AAAI 2024, arXiv 2302.06815): self-supervised likelihood estimation with energy guidance for anomaly
segmentation in urban scenes, on a frozen DeepLabv3-ResNet101-V1c segmentor.

Importing this package registers ``sleeg_deeplabv3_r101_d8`` (the paper's model), ``sleeg_deeplabv3_r50_d8``,
``sleeg_deeplabv3_r18_d8``, ``sleeg_deeplabv3_r18_d8_tiny`` (embedded default) and ``sleeg_deeplabv3_r18_d8_test``
with timm.
"""

from energy_anomaly_seg.data import (
    ANOMALY_LAYOUTS,
    AnomalySegmentationDataset,
    CityscapesSegmentation,
    SegTrainTransform,
    ensure_synthetic_data,
    normalize_anomaly_labels,
    render_street_scene,
)
from energy_anomaly_seg.losses import (
    cross_entropy,
    jem_energy,
    segmentation_loss,
    task_agnostic_loss,
    task_oriented_residual_loss,
)
from energy_anomaly_seg.mmseg_checkpoint import load_backbone_pretrained, load_mmseg_checkpoint
from energy_anomaly_seg.model import (
    SLEEG,
    VARIANTS,
    ASPPHead,
    DeepLabV3,
    FCNHead,
    ResNetV1c,
    count_parameters,
    create_deeplabv3,
    create_model,
)
from energy_anomaly_seg.self_generated_anomalies import AnomalyPatchPool, convex_hull, harris_corner_points
from energy_anomaly_seg.sleeg import (
    SLEEGSettings,
    anomaly_score,
    otsu_threshold,
    predict_anomaly_maps,
    refine_anomaly_labels,
    refinement_score,
    sleeg_losses,
    tore_guide,
)

__all__ = [
    "ANOMALY_LAYOUTS",
    "DEMO_INFO",
    "SLEEG",
    "VARIANTS",
    "ASPPHead",
    "AnomalyPatchPool",
    "AnomalySegmentationDataset",
    "CityscapesSegmentation",
    "DeepLabV3",
    "FCNHead",
    "ResNetV1c",
    "SLEEGSettings",
    "SegTrainTransform",
    "anomaly_score",
    "convex_hull",
    "count_parameters",
    "create_deeplabv3",
    "create_model",
    "cross_entropy",
    "ensure_synthetic_data",
    "harris_corner_points",
    "jem_energy",
    "load_backbone_pretrained",
    "load_mmseg_checkpoint",
    "normalize_anomaly_labels",
    "otsu_threshold",
    "predict_anomaly_maps",
    "refine_anomaly_labels",
    "refinement_score",
    "render_street_scene",
    "segmentation_loss",
    "sleeg_losses",
    "task_agnostic_loss",
    "task_oriented_residual_loss",
    "tore_guide",
]

DEMO_INFO = {
    "task": "anomaly segmentation (SLEEG OoD head on a frozen DeepLabv3)",
    "dataset": "synthetic street scenes in the Cityscapes layout + a Fishyscapes-Static-format anomaly set",
    "metrics": ["sleeg_AP", "sleeg_FPR95", "energy_AP", "msp_AP"],
}
