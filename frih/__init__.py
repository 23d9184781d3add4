"""FRIH: Fine-Grained Region-Aware Image Harmonization (AAAI 2024, arXiv 2205.06448) on an iSSAM / iDIH base.

Public API: the networks (`FRIH`, `SSAMHarmonizer` = iSSAM, `DIHHarmonizer` = iDIH, `VARIANTS` and `create_model`),
the K-means region split (`kmeans_submasks`), the FN-MSE loss, the iHarmony4 loader and transforms, the synthetic
iHarmony4-format generator and the any-resolution `Harmonizer`.
"""

from frih.data import SUBSETS, EvalTransform, IHarmony4Dataset, TrainTransform, resize_hadobe5k
from frih.inference import Harmonizer, load_model_from_checkpoint
from frih.losses import FNMSELoss, FRIHLoss, fn_mse
from frih.model import (
    FRIH,
    VARIANTS,
    DIHHarmonizer,
    FRIHConfig,
    SSAMHarmonizer,
    build_model,
    count_parameters,
    create_model,
    list_models,
)
from frih.submasks import kmeans_submasks
from frih.synthetic import ensure_synthetic_iharmony4, write_synthetic_iharmony4

DEMO_INFO = {
    "task": "image harmonization",
    "dataset": "synthetic iHarmony4-format composites (colour-transferred foregrounds of wheel photos), 4 subsets",
    "metrics": ["mse", "fmse", "psnr", "composite_mse", "composite_fmse", "stage1_mse"],
}

__all__ = [
    "DEMO_INFO",
    "FRIH",
    "SUBSETS",
    "VARIANTS",
    "DIHHarmonizer",
    "EvalTransform",
    "FNMSELoss",
    "FRIHConfig",
    "FRIHLoss",
    "Harmonizer",
    "IHarmony4Dataset",
    "SSAMHarmonizer",
    "TrainTransform",
    "build_model",
    "count_parameters",
    "create_model",
    "ensure_synthetic_iharmony4",
    "fn_mse",
    "kmeans_submasks",
    "list_models",
    "load_model_from_checkpoint",
    "resize_hadobe5k",
    "write_synthetic_iharmony4",
]
