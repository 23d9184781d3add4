"""LSFA (ECCV 2024, arXiv 2401.03145): self-supervised feature adaptation for 3D industrial anomaly detection, on the
M3DM pipeline (CVPR 2023, arXiv 2303.00601): frozen DINO ViT + Point-MAE features, PatchCore memory banks and
decision-layer fusion; M3DM (no adaptors) is the baseline.
"""

from lsfa.adaptation import AdaptationQueues, AdaptationSettings, lsfa_loss
from lsfa.data import EYECANDIES_CLASSES, MVTEC3D_CLASSES, MVTec3DDataset, patch_rotation
from lsfa.losses import (
    FeatureQueue,
    compactness_loss,
    cross_modal_global_loss,
    cross_modal_patch_loss,
    info_nce,
    rotation_consistency_loss,
)
from lsfa.memory_bank import (
    LateFusion,
    ModalityBank,
    blur_anomaly_map,
    greedy_coreset,
    nearest_neighbours,
    reweighted_image_score,
    sparse_random_projection,
)
from lsfa.model import (
    POINT_VARIANTS,
    RGB_VARIANTS,
    VARIANTS,
    FeatureExtractor,
    LSFAAdaptors,
    MobileNetV2Patches,
    PointMAEEncoder,
    UnsupervisedFeatureFusion,
    convert_lsfa_point_encoder,
    create_model,
    create_point_encoder,
    create_rgb_backbone,
    load_dino_checkpoint,
    load_point_mae_checkpoint,
)
from lsfa.point_ops import farthest_point_sample, group_points, knn_indices, three_nn_interpolate
from lsfa.scoring import ScoringSettings, class_metrics, extract_features, score_class
from lsfa.synthetic import ensure_synthetic_mvtec3d
from lsfa.uff import load_uff_checkpoint, save_uff_checkpoint, train_uff

__all__ = [
    "DEMO_INFO",
    "EYECANDIES_CLASSES",
    "MVTEC3D_CLASSES",
    "POINT_VARIANTS",
    "RGB_VARIANTS",
    "VARIANTS",
    "AdaptationQueues",
    "AdaptationSettings",
    "FeatureExtractor",
    "FeatureQueue",
    "LSFAAdaptors",
    "LateFusion",
    "MVTec3DDataset",
    "MobileNetV2Patches",
    "ModalityBank",
    "PointMAEEncoder",
    "ScoringSettings",
    "UnsupervisedFeatureFusion",
    "blur_anomaly_map",
    "class_metrics",
    "compactness_loss",
    "convert_lsfa_point_encoder",
    "create_model",
    "create_point_encoder",
    "create_rgb_backbone",
    "cross_modal_global_loss",
    "cross_modal_patch_loss",
    "ensure_synthetic_mvtec3d",
    "extract_features",
    "farthest_point_sample",
    "greedy_coreset",
    "group_points",
    "info_nce",
    "knn_indices",
    "load_dino_checkpoint",
    "load_point_mae_checkpoint",
    "load_uff_checkpoint",
    "lsfa_loss",
    "nearest_neighbours",
    "patch_rotation",
    "reweighted_image_score",
    "rotation_consistency_loss",
    "save_uff_checkpoint",
    "score_class",
    "sparse_random_projection",
    "three_nn_interpolate",
    "train_uff",
]

DEMO_INFO = {
    "task": "multimodal (RGB + point cloud) anomaly detection and localisation",
    "dataset": "synthetic MVTec 3D-AD tree (3 classes, geometric and colour defects), preprocessed as the real data",
    "metrics": ["lsfa_i_auroc_mean", "lsfa_aupro_mean", "lsfa_p_auroc_mean", "m3dm_i_auroc_mean", "m3dm_aupro_mean"],
}
