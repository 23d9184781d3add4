"""The configs of the PVG scripts: ImageNet classification (``train.py``/``eval.py``), COCO Mask R-CNN
(``train_det.py``/``eval_det.py``) and how an evaluation resolves its config from a checkpoint.

Every training config inherits :class:`shared.config.RunConfig` (``output_dir``, ``name``, ``resume``, ``seed``,
``device``, ``amp``, ``threads``, ``log_interval``, ``eval_interval``, ``checkpoint_interval``, ``tensorboard``); the
intervals count epochs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from shared.classification import ClassificationConfig, DataConfig
from shared.config import RunConfig
from shared.detection import CocoDataConfig
from shared.entrypoints import parse_checkpoint_config as parse_entry_checkpoint_config

__all__ = [
    'CONFIG_DIR',
    'DEFAULT_CONFIG',
    'DEFAULT_DET_CONFIG',
    'PACKAGE',
    'MaskRCNNConfig',
    'MaskRCNNDataConfig',
    'PVGTrainConfig',
    'ViGDataConfig',
    'parse_checkpoint_config',
]

PACKAGE = 'pvg'
CONFIG_DIR = Path(__file__).resolve().parent / 'configs'
DEFAULT_CONFIG = CONFIG_DIR / 'default.yaml'
DEFAULT_DET_CONFIG = CONFIG_DIR / 'maskrcnn_default.yaml'

T = TypeVar('T')


@dataclass
class ViGDataConfig(DataConfig):
    """`shared.classification.DataConfig` with the ViG recipe's data defaults: the models' mean = std = 0.5,
    eval crop 0.9 (bicubic), RandAugment m9, colour jitter 0.4, random erasing 0.25, 128 images per GPU."""

    crop_pct: float = 0.9
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    re_prob: float = 0.25
    batch_size: int = field(default=128, metadata={'help': 'images per process'})
    eval_batch_size: int = 128


@dataclass
class PVGTrainConfig(ClassificationConfig):
    """`shared.classification.ClassificationConfig` with the ViG ImageNet recipe as defaults (README, Recipes):
    AdamW lr 2e-3 at a global batch of 1024, wd 0.05, 300 epochs with 20 warm-up epochs from 1e-6, cosine to 1e-5,
    label smoothing 0.1, mixup 0.8, cutmix 1.0, EMA 0.99996, drop path 0.1, no gradient clipping."""

    model: str = field(default='pvg_s', metadata={'help': 'timm model (pvig_ti/s/m/b, pvg_ti/s/m/b, *_test)'})
    drop_path: float = 0.1
    data: ViGDataConfig = field(default_factory=ViGDataConfig)
    lr: float = 2e-3
    lr_base_batch: int = field(default=1024, metadata={'help': 'lr is given for this global batch; scaled linearly'})
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    clip_grad: float | None = None
    mixup: float = 0.8
    cutmix: float = 1.0
    ema_decay: float | None = field(default=0.99996, metadata={'help': 'per-step EMA decay; null disables EMA'})


@dataclass
class MaskRCNNDataConfig(CocoDataConfig):
    """Where the COCO data is, and mmdet's Mask R-CNN 1x pipeline (keep-ratio resize to 1333 x 800, flip 0.5)."""

    synthetic_train: int = 48
    synthetic_val: int = 16
    min_size: int = field(default=800, metadata={'help': 'shorter side after resizing (mmdet img_scale 1333x800)'})
    max_size: int = field(default=1333, metadata={'help': 'longer side limit after resizing'})
    batch_size: int = field(default=2, metadata={'help': 'images per process (mmdet 1x: 2 per GPU x 8)'})
    workers: int = 2


@dataclass
class MaskRCNNConfig(RunConfig):
    """Mask R-CNN with a Pyramid ViG / PVG + FPN backbone on COCO (defaults: the 1x recipe of README, Detection:
    8 GPUs x 2 images, AdamW 1e-4, wd 0.05, 12 epochs with steps at 8 and 11).

    ``eval_interval`` and ``checkpoint_interval`` count epochs."""

    #: what a ``--resume`` may not change (``RunConfig.RESUME_SECTIONS``): the detector (``graph_mode`` may: both
    #: paths compute the same graph)
    RESUME_SECTIONS: ClassVar[tuple[str, ...]] = (
        "model",
        "num_classes",
        "drop_path",
        "frozen_stages",
        "norm_eval",
        "fpn_channels",
        "roi_aligned",
    )

    #: a checkpoint written before ``roi_aligned`` existed pooled with torchvision's unaligned RoIAlign
    LEGACY_VALUES: ClassVar[Mapping[str, Any]] = {"roi_aligned": False}

    model: str = field(default='pvg_s', metadata={'help': 'backbone (pvig_ti/s/m/b, pvg_ti/s/m/b, *_test)'})
    pretrained_backbone: str | None = field(
        default=None,
        metadata={'help': 'ImageNet checkpoint of the backbone: an official pvig_*.pth or a pvg.train checkpoint'},
    )
    allow_random_backbone: bool = field(
        default=False,
        metadata={'help': 'train without pretrained_backbone (random init); the paper recipes need a pretrained one'},
    )
    num_classes: int | None = field(default=None, metadata={'help': 'default: categories of the train annotations'})
    drop_path: float = field(default=0.1, metadata={'help': 'backbone stochastic depth (official value unknown)'})
    graph_mode: str = field(default='fast', metadata={'help': "kNN graph path: 'fast' (chunked) or 'dense'"})
    frozen_stages: int = field(default=-1, metadata={'help': 'freeze stem + stages 1..N (-1: none)'})
    norm_eval: bool = field(default=True, metadata={'help': 'keep every BatchNorm of the backbone in eval mode'})
    fpn_channels: int = 256
    image_mean: tuple[float, float, float] = field(
        default=(0.485, 0.456, 0.406), metadata={'help': "input normalisation (mmdet's ImageNet statistics)"}
    )
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    roi_sampling_ratio: int = field(default=0, metadata={'help': 'RoIAlign sampling ratio (mmdet 0: adaptive)'})
    roi_aligned: bool = field(
        default=True, metadata={'help': "RoIAlign's half-pixel alignment, as mmdet (mmcv); false: torchvision's"}
    )
    rpn_post_nms_top_n_train: int = field(default=1000, metadata={'help': 'proposals kept per image in training'})
    roi_batch_size_per_image: int = field(default=512, metadata={'help': 'RoIs sampled per image for the heads'})
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 100
    mask_threshold: float = field(default=0.5, metadata={'help': 'mask probability binarisation (mmdet mask_thr)'})
    epochs: int = 12
    lr: float = 1e-4
    lr_base_batch: int = field(default=16, metadata={'help': 'lr is given for this global batch; scaled linearly'})
    weight_decay: float = 0.05
    no_decay_norm: bool = field(default=True, metadata={'help': 'no weight decay on BatchNorm weights and biases'})
    no_decay_keys: list[str] = field(
        default_factory=lambda: ['pos_embed'], metadata={'help': 'no weight decay on parameters whose name has one'}
    )
    opt_betas: tuple[float, float] = (0.9, 0.999)
    opt_eps: float = 1e-8
    warmup_iters: int = 500
    warmup_ratio: float = 1e-3
    lr_steps: list[int] = field(default_factory=lambda: [8, 11], metadata={'help': 'epochs where lr *= lr_gamma'})
    lr_gamma: float = 0.1
    clip_grad: float | None = None
    data: MaskRCNNDataConfig = field(default_factory=MaskRCNNDataConfig)


def parse_checkpoint_config(schema: type[T], argv: Sequence[str] | None, default_config: Path, description: str) -> T:
    """An evaluation's config: the config stored in ``--checkpoint`` (without its ``output_dir``/``resume``; ``-c``
    and flags override it), else ``default_config`` (a file without a config, e.g. an official release);
    flags override it. A foreign, missing or unreadable checkpoint is an error before anything is written."""
    return parse_entry_checkpoint_config(schema, argv, default_config, description, PACKAGE)
