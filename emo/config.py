"""The configs of the EMO scripts: ImageNet classification (``train.py``/``eval.py``), COCO RetinaNet
(``train_det.py``/``eval_det.py``) and SSDLite (``train_ssdlite.py``/``eval_ssdlite.py``), ADE20K segmentation
(``train_seg.py``/``eval_seg.py``), and how an evaluation resolves its config from a checkpoint.

Every training config inherits :class:`shared.config.RunConfig` (``output_dir``, ``name``, ``resume``, ``seed``,
``device``, ``amp``, ``threads``, ``log_interval``, ``eval_interval``, ``checkpoint_interval``, ``tensorboard``); the
intervals count epochs, except in the iteration-based segmentation loop (:class:`SegConfig`), where they count
iterations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from shared.classification import ClassificationConfig
from shared.config import RunConfig
from shared.detection import CocoDataConfig as SharedCocoDataConfig
from shared.entrypoints import parse_checkpoint_config as parse_entry_checkpoint_config

__all__ = [
    'BACKBONE_SOURCES',
    'DEFAULT_CONFIG',
    'DEFAULT_DET_CONFIG',
    'DEFAULT_SEG_CONFIG',
    'DEFAULT_SSDLITE_CONFIG',
    'OFFICIAL_DROP_PATH',
    'PACKAGE',
    'BackboneFinetuneConfig',
    'CocoDataConfig',
    'DetDataConfig',
    'DetectionConfig',
    'DetectorConfig',
    'EMOTrainConfig',
    'SSDLiteConfig',
    'SSDLiteDataConfig',
    'SegConfig',
    'SegDataConfig',
    'parse_checkpoint_config',
    'resolve_drop_path',
]

PACKAGE = 'emo'
CONFIG_DIR = Path(__file__).resolve().parent / 'configs'
DEFAULT_CONFIG = CONFIG_DIR / 'default.yaml'
DEFAULT_DET_CONFIG = CONFIG_DIR / 'retinanet_default.yaml'
DEFAULT_SSDLITE_CONFIG = CONFIG_DIR / 'ssdlite_default.yaml'
DEFAULT_SEG_CONFIG = CONFIG_DIR / 'seg_default.yaml'
#: Where a fine-tuning recipe's pretrained backbone comes from (named when a run has none).
BACKBONE_SOURCES = 'the official net.pth, see emo.OFFICIAL_CHECKPOINTS, or an emo.train checkpoint'

# Maximum stochastic-depth rate of the official constructors (README, Fidelity notes); the same values are the
# defaults of the timm constructors in emo.model. Other models (emo_test, any timm model) default to 0.
OFFICIAL_DROP_PATH = {'emo_1m': 0.04036, 'emo_2m': 0.05, 'emo_5m': 0.05, 'emo_6m': 0.05}

T = TypeVar('T')


@dataclass
class EMOTrainConfig(ClassificationConfig):
    """`shared.classification.ClassificationConfig` with EMO's defaults.

    The inherited defaults already are the EMO recipe (README, Recipes); this class names the model and makes the
    drop-path rate default to the variant's official value. ``eval_interval`` and ``checkpoint_interval`` count
    epochs.
    """

    model: str = field(default='emo_1m', metadata={'help': 'timm model (emo_1m, emo_2m, emo_5m, emo_6m, emo_test)'})
    drop_path: float | None = field(
        default=None,
        metadata={
            'help': "maximum stochastic-depth rate; null: the variant's official rate (0.04036 EMO-1M, 0.05 others)"
        },
    )


def resolve_drop_path(cfg: EMOTrainConfig) -> EMOTrainConfig:
    """Replace ``drop_path: null`` by the official rate of ``cfg.model`` (0 for models without one)."""
    if cfg.drop_path is not None:
        return cfg
    return dataclasses.replace(cfg, drop_path=OFFICIAL_DROP_PATH.get(cfg.model, 0.0))


@dataclass
class CocoDataConfig(SharedCocoDataConfig):
    """Where the COCO-format data is and how it is batched (shared by RetinaNet and SSDLite)."""


@dataclass
class DetDataConfig(CocoDataConfig):
    """COCO data of RetinaNet: images resized keeping their ratio (mmdet ``img_scale=(1333, 800)``)."""

    min_size: int = field(default=800, metadata={'help': 'shorter side after resizing (mmdet img_scale 1333x800)'})
    max_size: int = field(default=1333, metadata={'help': 'longer side limit after resizing'})


@dataclass
class SSDLiteDataConfig(CocoDataConfig):
    """COCO data of SSDLite: the official SSD augmentation, a fixed square input and mmdet's ``RepeatDataset``."""

    image_size: int = field(default=320, metadata={'help': 'square input side (mmdet Resize 320x320, no keep_ratio)'})
    repeat_times: int = field(default=5, metadata={'help': 'one epoch = this many passes (mmdet RepeatDataset)'})
    expand_ratio: tuple[float, float] = field(
        default=(1.0, 4.0), metadata={'help': 'mmdet Expand ratio_range (zoom out onto a mean-coloured canvas)'}
    )
    expand_prob: float = 0.5
    min_ious: list[float] = field(
        default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9],
        metadata={'help': 'mmdet MinIoURandomCrop min_ious (plus the option to keep the image uncropped)'},
    )
    min_crop_size: float = 0.3
    photometric: bool = field(default=True, metadata={'help': 'PhotoMetricDistortion (brightness/contrast/...)'})
    batch_size: int = field(default=24, metadata={'help': 'images per process (official: 24 per GPU x 8)'})
    eval_batch_size: int = field(default=8, metadata={'help': 'images per process at evaluation (all 320x320)'})


@dataclass
class BackboneFinetuneConfig(RunConfig):
    """What the dense-prediction recipes on an EMO backbone (detection, segmentation) share: the backbone, the
    ImageNet checkpoint it starts from, the number of classes, the EW-MHSA window and the drop path."""

    #: what a ``--resume`` may not change (``RunConfig.RESUME_SECTIONS``): the backbone and its classes
    RESUME_SECTIONS: ClassVar[tuple[str, ...]] = ('model', 'num_classes', 'window_size', 'drop_path')

    model: str = field(default='emo_1m', metadata={'help': 'EMO backbone (emo_1m, emo_2m, emo_5m, emo_6m, emo_test)'})
    pretrained_backbone: str | None = field(
        default=None,
        metadata={
            'help': 'ImageNet checkpoint of the backbone: official net.pth or an emo.train checkpoint (EMA used)'
        },
    )
    allow_random_backbone: bool = field(
        default=False,
        metadata={'help': 'train without pretrained_backbone (random init); the paper recipes need a pretrained one'},
    )
    num_classes: int | None = field(default=None, metadata={'help': 'default: categories of the train annotations'})
    window_size: int | None = field(
        default=None, metadata={'help': 'EW-MHSA window; null: the official one of the variant and detector'}
    )
    drop_path: float | None = field(default=None, metadata={'help': "backbone drop path; null: the variant's official"})


@dataclass
class DetectorConfig(BackboneFinetuneConfig):
    """What RetinaNet-EMO and SSDLite-EMO training share (defaults: the RetinaNet 1x recipe for EMO-1M).

    ``eval_interval`` and ``checkpoint_interval`` count epochs."""

    #: what a ``--resume`` may not change (``RunConfig.RESUME_SECTIONS``): the backbone, its classes and what is frozen
    RESUME_SECTIONS: ClassVar[tuple[str, ...]] = (*BackboneFinetuneConfig.RESUME_SECTIONS, 'frozen_stages', 'norm_eval')

    frozen_stages: int = 1
    norm_eval: bool = True
    epochs: int = 12
    lr: float = 2e-4
    lr_base_batch: int = field(default=32, metadata={'help': 'lr is given for this global batch; scaled linearly'})
    weight_decay: float = 0.05
    no_decay_keys: list[str] = field(
        default_factory=lambda: ['norm'],
        metadata={
            'help': 'parameters whose name contains one of these get no weight decay (mmdet paramwise custom_keys)'
        },
    )
    opt_betas: tuple[float, float] = (0.9, 0.999)
    opt_eps: float = 1e-8
    warmup_iters: int = 500
    warmup_ratio: float = 1e-3
    min_lr: float = 0.0
    clip_grad: float | None = None
    score_thresh: float = 0.05
    detections_per_img: int = 100
    eval_interval: int = field(default=1, metadata={'help': 'evaluate every N epochs (and after the last)'})


@dataclass
class DetectionConfig(DetectorConfig):
    """RetinaNet-EMO training (defaults: the paper's RetinaNet 1x recipe for EMO-1M, 8 GPUs x 4 images)."""

    #: what a ``--resume`` may not change (``RunConfig.RESUME_SECTIONS``): the detector and its loss
    RESUME_SECTIONS: ClassVar[tuple[str, ...]] = (
        *DetectorConfig.RESUME_SECTIONS,
        'fpn_channels',
        'loss_normalization',
    )

    fpn_channels: int = 256
    loss_normalization: Literal['batch', 'image'] = field(
        default='batch',
        metadata={'help': "losses over the positives: batch (mmdetection's, the paper's) or image (torchvision's)"},
    )
    data: DetDataConfig = field(default_factory=DetDataConfig)

    #: a checkpoint written before ``loss_normalization`` existed normalised per image (torchvision's)
    LEGACY_VALUES: ClassVar[Mapping[str, Any]] = {'loss_normalization': 'image'}


@dataclass
class SSDLiteConfig(DetectorConfig):
    """SSDLite-EMO training (defaults: the official ``ssdlite_emo_1M_pretrain_coco.py``, 8 GPUs x 24 images).

    ``epochs`` count passes over the repeated dataset (``data.repeat_times``), as mmdet's ``RepeatDataset``."""

    #: what a ``--resume`` may not change (``RunConfig.RESUME_SECTIONS``): the detector
    RESUME_SECTIONS: ClassVar[tuple[str, ...]] = (*DetectorConfig.RESUME_SECTIONS, 'extra_channels')

    frozen_stages: int = -1
    norm_eval: bool = True
    epochs: int = 120
    lr: float = 1.2e-3
    lr_base_batch: int = 192
    extra_channels: tuple[int, int, int, int] = field(
        default=(512, 256, 256, 128), metadata={'help': 'SSDNeck channels of the four extra (stride-2) levels'}
    )
    nms_thresh: float = 0.45
    topk_candidates: int = field(default=1000, metadata={'help': 'top-scoring boxes per class before NMS'})
    score_thresh: float = 0.02
    detections_per_img: int = 200
    eval_interval: int = 5
    data: SSDLiteDataConfig = field(default_factory=SSDLiteDataConfig)


@dataclass
class SegDataConfig:
    """Where the ADE20K data is (``ADEChallengeData2016`` layout) and the official mmseg ADE20K pipeline."""

    root: str = field(default='', metadata={'help': 'folder holding ADEChallengeData2016/ (images/, annotations/)'})
    synthetic: bool = field(default=False, metadata={'help': 'write/use the embedded synthetic ADE20K-format set'})
    synthetic_train: int = 48
    synthetic_val: int = 12
    synthetic_image_size: int = 128
    synthetic_classes: int = 8
    scale: tuple[int, int] = field(
        default=(2048, 512), metadata={'help': 'mmseg img_scale (long, short) bounds of the keep-ratio resize'}
    )
    ratio_range: tuple[float, float] = field(
        default=(0.5, 2.0), metadata={'help': 'random rescale ratio range of training (mmseg Resize ratio_range)'}
    )
    crop_size: int = field(default=512, metadata={'help': 'training crop (padded with ignore where smaller)'})
    cat_max_ratio: float = field(
        default=0.75, metadata={'help': 'RandomCrop: retry (10 times) crops where one class covers more than this'}
    )
    hflip: float = 0.5
    photometric: bool = field(default=True, metadata={'help': 'PhotoMetricDistortion (brightness/contrast/...)'})
    batch_size: int = field(default=4, metadata={'help': 'images per process (official: 4 per GPU x 4)'})
    workers: int = 4


@dataclass
class SegConfig(BackboneFinetuneConfig):
    """DeepLabv3-/PSPNet-EMO training on ADE20K (defaults: the official DeepLabv3 EMO-1M config, 4 GPUs x 4).

    Iteration-based, as mmseg's ``IterBasedRunner``: ``eval_interval`` and ``checkpoint_interval`` count
    iterations."""

    #: what a ``--resume`` may not change (``RunConfig.RESUME_SECTIONS``): the segmentor
    RESUME_SECTIONS: ClassVar[tuple[str, ...]] = (
        *BackboneFinetuneConfig.RESUME_SECTIONS,
        'head',
        'channels',
        'aux_channels',
        'dropout',
        'dilations',
        'pool_scales',
    )

    head: str = field(default='deeplabv3', metadata={'help': 'decode head: deeplabv3 (ASPP) or pspnet (PPM)'})
    num_classes: int = field(default=150, metadata={'help': 'classes after reduce-zero-label (150 for ADE20K)'})
    window_size: int | None = field(
        default=None, metadata={'help': 'EW-MHSA window; null: the official one (7 EMO-1M/2M, 16 EMO-5M)'}
    )
    channels: int = field(default=256, metadata={'help': 'decode head width'})
    aux_channels: int = field(default=256, metadata={'help': 'auxiliary FCN head width'})
    aux_weight: float = field(default=0.4, metadata={'help': 'auxiliary loss weight (0: no auxiliary head)'})
    dropout: float = 0.1
    dilations: list[int] = field(default_factory=lambda: [1, 12, 24, 36], metadata={'help': 'ASPP dilations'})
    pool_scales: list[int] = field(default_factory=lambda: [1, 2, 3, 6], metadata={'help': 'PSP pyramid bins'})
    loss_avg_non_ignore: bool = field(
        default=False, metadata={'help': 'average the loss over labelled pixels only (mmseg default: all pixels)'}
    )
    iters: int = 80000
    lr: float = 1.2e-4
    lr_base_batch: int = field(default=16, metadata={'help': 'lr is given for this global batch; scaled linearly'})
    weight_decay: float = 0.01
    no_decay_keys: list[str] = field(
        default_factory=lambda: ['norm'],
        metadata={'help': 'parameters whose name contains one of these get no weight decay (mmcv custom_keys)'},
    )
    opt_betas: tuple[float, float] = (0.9, 0.999)
    opt_eps: float = 1e-8
    poly_power: float = 0.9
    min_lr: float = 0.0
    clip_grad: float | None = None
    eval_scales: list[float] = field(
        default_factory=lambda: [1.0], metadata={'help': 'test ratios of data.scale (mmseg aug: 0.5 ... 1.75)'}
    )
    eval_flip: bool = field(default=False, metadata={'help': 'add the flipped image at test time'})
    eval_interval: int = field(default=8000, metadata={'help': 'evaluate every N iterations (and after the last)'})
    checkpoint_interval: int = field(default=8000, metadata={'help': 'write last.pt every N iterations'})
    data: SegDataConfig = field(default_factory=SegDataConfig)


def parse_checkpoint_config(schema: type[T], argv: Sequence[str] | None, default_config: Path, description: str) -> T:
    """The config of an evaluation script: ``-c FILE`` if given, else the config stored in ``--checkpoint`` (the
    training run's own, without its ``output_dir``/``resume``), else ``default_config`` (a checkpoint without a
    config, e.g. the released ``net.pth``); command-line flags override it. ``output_dir`` comes from the command
    line only (else None: the caller writes next to the checkpoint).

    The checkpoint is read and checked first: another package's checkpoint, a missing or an unreadable file is a
    :class:`shared.checkpoint.CheckpointError` before anything is written. A missing ``--checkpoint`` is a usage
    error (exit status 2).
    """
    return parse_entry_checkpoint_config(schema, argv, default_config, description, PACKAGE)
