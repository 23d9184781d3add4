"""The configuration of every energy_anomaly_seg script: ``train.py`` (:class:`TrainConfig`), ``train_segmentor.py``
(:class:`SegmentorTrainConfig`) and ``eval.py`` (the :class:`TrainConfig` stored in a checkpoint).

Both training configs inherit :class:`shared.config.RunConfig` (output_dir, name, resume, seed, device, amp, threads,
log_interval, eval_interval, checkpoint_interval, tensorboard); their loops count iterations, so the intervals are
in iterations. The sections below are shared by the scripts; the values of the recipes are in ``configs/*.yaml``
(README, Recipes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from shared.config import RunConfig

__all__ = [
    "CONFIG_DIR",
    "PACKAGE",
    "AnomalyConfig",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "SegOptimConfig",
    "SegmentorConfig",
    "SegmentorTrainConfig",
    "SyntheticConfig",
    "TrainConfig",
]

PACKAGE = "energy_anomaly_seg"
#: The recipes (README, Recipes): ``default.yaml`` is train.py's embedded default.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class ModelConfig:
    variant: str = field(default="deeplabv3_r101_d8", metadata={"help": "a name of energy_anomaly_seg.model.VARIANTS"})
    num_classes: int = 19
    segmentor_dropout_in_train: bool = field(
        default=False,
        metadata={"help": "keep the frozen decode head's Dropout2d active while training the OoD head (released code)"},
    )


@dataclass
class SyntheticConfig:
    """The embedded synthetic Cityscapes-format scenes (used when data.dataset is 'synthetic')."""

    root: str | None = field(default=None, metadata={"help": "cache folder (default shared synthetic root)"})
    height: int = 128
    width: int = 256
    n_train: int = 160
    n_val: int = 40
    n_anomaly: int = 24
    seed: int = 0


@dataclass
class DataConfig:
    dataset: str = field(default="cityscapes", metadata={"help": "'cityscapes' or 'synthetic'"})
    root: str = field(default="data/cityscapes", metadata={"help": "Cityscapes root (leftImg8bit/, gtFine/)"})
    split: str = "train"
    val_split: str = "val"
    img_scale: tuple[int, int] = field(default=(2048, 1024), metadata={"help": "(W, H) base scale, as mmseg"})
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] = field(default=(512, 1024), metadata={"help": "(H, W)"})
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    batch_size: int = field(default=8, metadata={"help": "total batch over all processes"})
    num_workers: int = 4


@dataclass
class SegOptimConfig:
    iters: int = 40000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    power: float = 0.9
    min_lr: float = 1e-4
    aux_weight: float = 0.4
    ce_average: Literal["all", "valid"] = field(
        default="all", metadata={"help": "'all' (mmseg 0.27) or 'valid' pixels"}
    )


@dataclass
class SegmentorTrainConfig(RunConfig):
    """``train_segmentor.py``: the DeepLabv3 segmentor alone (mmseg's 40k-iteration Cityscapes recipe)."""

    #: what a ``--resume`` may not change (``RunConfig.RESUME_SECTIONS``): the segmentor
    RESUME_SECTIONS: ClassVar[tuple[str, ...]] = ("model",)

    checkpoint_interval: int = field(
        default=4000, metadata={"help": "write last.pt every N iterations (0: only at the end)"}
    )
    backbone_pretrained: str | None = field(
        default=None,
        metadata={
            "help": "ImageNet ResNetV1c checkpoint (open-mmlab resnet101_v1c layout); required unless allow_random_init"
        },
    )
    allow_random_init: bool = field(default=False, metadata={"help": "train from random init (no ImageNet weights)"})
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    optim: SegOptimConfig = field(default_factory=SegOptimConfig)


@dataclass
class SegmentorConfig:
    checkpoint: str | None = field(
        default=None,
        metadata={"help": "segmentor weights: the authors' mmseg iter_40000.pth or train_segmentor.py's last.pt"},
    )
    train: SegOptimConfig = field(
        default_factory=lambda: SegOptimConfig(iters=0),
        metadata={"help": "train the segmentor in this run first when train.iters > 0 (embedded default)"},
    )
    allow_random_init: bool = field(
        default=False, metadata={"help": "let segmentor training start from random weights (no ImageNet backbone)"}
    )
    backbone_pretrained: str | None = None


@dataclass
class AnomalyConfig:
    """Self-generated anomalies: the crop pool and the convex-polygon pastes."""

    pool_size: int = 30
    crops_per_image: int = 2
    area_range: tuple[float, float] = (0.03, 0.06)
    aspect_range: tuple[float, float] = (0.8, 1.2)
    pastes_per_image: int = 10
    noise_ratio: float = 0.1
    polygon: Literal["convex_hull", "harris", "square"] = field(
        default="convex_hull",
        metadata={
            "help": "'convex_hull' of 15 random points (released code), 'harris' corners (paper), 'square' (ablation)"
        },
    )
    hull_points: int = 15
    harris_k: float = 0.04


@dataclass
class ObjectiveConfig:
    """The OoD head's objective; every field is the :class:`energy_anomaly_seg.sleeg.SLEEGSettings` field of the
    same name."""

    refine: bool = field(default=True, metadata={"help": "likelihood-guided Otsu refinement of the pasted labels"})
    otsu_bins: int = 25
    refine_score: Literal["paper", "released", "head_plus_energy"] = field(
        default="paper",
        metadata={
            "help": "refinement score: 'paper' JEM for refine_warmup_iters then A(x) of eq. 9; 'released' JEM for the "
            "whole run (the released training forward); 'head_plus_energy' JEM then JEM + w h[1]"
        },
    )
    refine_warmup_iters: int = field(
        default=6000, metadata={"help": "JEM-only refinement first (paper 6000; unused by refine_score 'released')"}
    )
    refine_lambda: float = field(default=0.5, metadata={"help": "lambda of A(x) = log p_a + lambda log p_t (eq. 9)"})
    tore_guide: Literal["energy", "head_plus_energy"] = field(
        default="energy",
        metadata={
            "help": "stop-gradient guide S in the TORE hinge: 'energy' JEM (paper eq. 8 and released code) or "
            "'head_plus_energy' JEM + w h[1]"
        },
    )
    head_plus_energy_weight: float = field(
        default=0.5,
        metadata={"help": "w of JEM + w h[1] in the 'head_plus_energy' options (the train config's merge_weight 0.5)"},
    )
    margin: float = field(default=15.0, metadata={"help": "TORE margin gamma (paper 15, code 20)"})
    tae_weight: float = 1.0
    tore_weight: float = 0.05
    ce_average: Literal["all", "valid"] = field(
        default="all", metadata={"help": "'all' pixels (mmseg 0.27) or 'valid' pixels"}
    )
    input_grad_nudge: bool = field(default=False, metadata={"help": "released code's input-gradient step"})


@dataclass
class OptimConfig:
    iters: int = field(default=40000, metadata={"help": "OoD-head iterations (paper 40k, code 80k)"})
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    power: float = 0.9
    min_lr: float = 1e-4


@dataclass
class EvalConfig:
    datasets: list[str] = field(
        default_factory=lambda: ["synthetic"],
        metadata={
            "help": "'layout:path' or 'name=layout:path' per set (layouts: fs_static, fs_laf, fs_laf_official, "
            "road_anomaly, smiyc, synboost), or 'synthetic' for the embedded anomaly set"
        },
    )
    img_scale: tuple[int, int] = field(default=(2048, 1024), metadata={"help": "(W, H) test scale, keep ratio"})
    scales: list[float] = field(default_factory=lambda: [0.75, 1.0, 1.25, 1.5])
    flip: bool = True
    score_formula: Literal["paper", "code"] = field(
        default="paper", metadata={"help": "'paper' (eq. 9) or 'code' (released)"}
    )
    score_weight: float = field(default=0.5, metadata={"help": "lambda (paper 0.5; code 0.3 static / 0.0 LAF)"})
    vis_images: int = field(default=8, metadata={"help": "per-image PNG panels written per dataset"})
    curve_pixels: int = field(default=2_000_000, metadata={"help": "random valid pixels drawn for the curve plots"})


@dataclass
class TrainConfig(RunConfig):
    """``train.py``: SLEEG's two phases (segmentor, then the OoD head) and the final evaluation.

    ``eval_interval`` N > 0 evaluates every N OoD-head iterations and keeps ``best.pt`` by SLEEG AP."""

    #: what a ``--resume`` may not change (``RunConfig.RESUME_SECTIONS``): the network, the anomalies and the objective
    #: (``segmentor`` only says where the segmentor comes from: ``last.pt`` holds its weights)
    RESUME_SECTIONS: ClassVar[tuple[str, ...]] = ("model", "anomalies", "objective")

    checkpoint_interval: int = field(
        default=4000,
        metadata={"help": "write last.pt every N iterations of each phase (0: only at the end of a phase)"},
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    segmentor: SegmentorConfig = field(default_factory=SegmentorConfig)
    anomalies: AnomalyConfig = field(default_factory=AnomalyConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
