"""The configuration of Calibrated Teacher's scripts: the detector, the method, the data and the training run.

Pure dataclasses, imported by every other module of the package (``config -> sparse / views / data -> model ->
calibration / pseudo_labels / losses -> calibrated_teacher -> engine -> train / eval / visualize / bench /
evidence``); ``train.parse_args`` resolves them from ``dataclass defaults < YAML recipe (-c, else
configs/default.yaml) < --key value flags`` (README, Recipes). Defaults are the released stage-1 recipe
(``configs/WHH_cali_retina/cali_04_07.py``: RetinaNet R101-FPN caffe, 8 GPUs x 2 images).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from shared.config import RunConfig

__all__ = [
    "DEFAULT_CONFIG",
    "PACKAGE",
    "CalibratedTeacherSettings",
    "DataConfig",
    "DetectorConfig",
    "TrainConfig",
]

PACKAGE = "calibrated_teacher"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"


@dataclass
class DetectorConfig:
    """Detector settings (defaults: mmdet 2.19 RetinaNet R101-FPN caffe with frozen BN, as released)."""

    arch: Literal["retinanet", "fcos", "faster_rcnn"] = "retinanet"
    backbone: Literal["resnet101", "resnet50", "mobilenet_v2"] = "resnet101"
    width_mult: float = field(default=1.0, metadata={"help": "MobileNetV2 width (1.0 for the ImageNet weights)"})
    caffe_style: bool = field(
        default=True, metadata={"help": "ResNet stride on the 1x1 conv and BGR 0-255 input minus the caffe mean"}
    )
    frozen_bn: bool = True
    trainable_layers: int = field(default=4, metadata={"help": "ResNet stages trained (mmdet frozen_stages=1: 4)"})
    fpn_channels: int = 256
    head_norm: Literal["none", "gn"] = field(
        default="none", metadata={"help": "RetinaNet/FCOS head convs: none (released RetinaNet) or GroupNorm(16)"}
    )
    p6p7_from_c5: bool = field(default=True, metadata={"help": "P6 from C5 (mmdet add_extra_convs='on_input')"})
    mobilenet_levels: tuple[int, ...] = field(
        default=(6, 13, 18),
        metadata={
            "help": "MobileNetV2 feature indices feeding the FPN (3: stride 4, 6: 8, 13: 16, 17: 32 (320 ch), 18: 32 "
            "(1280 ch)); P6/P7 follow the last one, so anchor_sizes needs len + 2 entries"
        },
    )
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.4
    loss_normalization: Literal["batch", "image"] = field(
        default="batch",
        metadata={
            "help": "RetinaNet losses over the positives: batch (mmdetection's, the released) or image (torchvision's)"
        },
    )
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    min_size: int = field(default=800, metadata={"help": "test short side"})
    max_size: int = 1333


@dataclass
class CalibratedTeacherSettings:
    """Method hyper-parameters (defaults: the released ``cali_04_07`` / ``cali_04_07_focaldefault`` values)."""

    ema_momentum: float = 0.999
    ori_thr: float = field(default=0.4, metadata={"help": "raw teacher score threshold (ori_thr)"})
    strict_thr: float = field(default=0.7, metadata={"help": "calibrated score threshold once fitted (strict_thr)"})
    calibrate: bool = field(default=True, metadata={"help": "false: the raw-threshold teacher-student ablation"})
    calibrator: Literal["platt", "temperature"] = "platt"
    calibrator_fit: Literal["mle", "robust"] = field(
        default="mle",
        metadata={"help": "mle (released); robust: Platt's smoothed targets, >= calib_min_pairs, increasing map"},
    )
    calib_min_pairs: int = field(default=20, metadata={"help": "robust fit: fewer (score, label) pairs, no refit"})
    merge_start: int = field(default=500, metadata={"help": "no pseudo boxes are merged up to this iteration"})
    refit_interval: int = field(default=500, metadata={"help": "refit the calibrator every N iterations"})
    calibration_window: int = field(default=500, metadata={"help": "fit on the last N iterations' detections"})
    mining_min_size: float = 10.0
    same_class_iou: float = field(default=0.6, metadata={"help": "merge rule 1: same-class IoU above this"})
    any_class_iou: float = field(default=0.75, metadata={"help": "merge rule 2: any-class IoU above this"})
    iof_thr: float = field(default=0.9, metadata={"help": "merge rules 3-4: same-class IoF above this"})
    calib_overlap_iou: float = field(default=0.5, metadata={"help": "calibration set: same-class IoU above this"})
    calib_tp_iou: float = field(default=0.75, metadata={"help": "calibration label 1: same-class IoU above this"})
    fiou: bool = field(default=False, metadata={"help": "Focal IoU Weight on negative anchors (RetinaNet)"})
    fiou_start: int = field(default=0, metadata={"help": "iteration from which FIoU is on (two-stage recipe)"})
    fiou_bias: float = 0.5
    fiou_k: float = 3.0
    fiou_alpha: float = 0.25
    fiou_gamma: float = 2.0
    fiou_detach: bool = field(default=False, metadata={"help": "detach u (released: false, gradient to boxes)"})


@dataclass
class DataConfig:
    """The sparse training set, the full-annotation evaluation set and the two views."""

    root: str = field(default="", metadata={"help": "COCO root: train2017/, val2017/, annotations/"})
    train_images: str = "train2017"
    sparse_annotations: str = field(
        default="annotations/coco_missing_50p.json",
        metadata={"help": "the sparse training json (released file, or one written by sparse_drop_rate)"},
    )
    full_annotations: str = field(
        default="annotations/instances_train2017.json",
        metadata={"help": "the full train json: kept-ratio check and the precision of kept pseudo boxes"},
    )
    expected_kept_ratio: float | None = field(
        default=None, metadata={"help": "kept annotations / full annotations of the sparse file (checked +-0.02)"}
    )
    sparse_drop_rate: float | None = field(
        default=None, metadata={"help": "write a new split: drop this fraction of instances (null: use the file)"}
    )
    sparse_keep_one: bool = field(default=False, metadata={"help": "write a SIOD keep-1 split instead"})
    sparse_seed: int = 0
    val_images: str = "val2017"
    val_annotations: str = "annotations/instances_val2017.json"
    synthetic: bool = False
    synthetic_train: int = 200
    synthetic_val: int = 24
    synthetic_image_size: int = 192
    synthetic_categories: int = 6
    short_range: tuple[int, int] = field(default=(400, 1200), metadata={"help": "RandResize short side (range)"})
    max_size: int = 1333
    hflip: float = 0.5
    batch_size: int = field(default=2, metadata={"help": "images per GPU"})
    eval_batch_size: int = 1
    workers: int = 2


@dataclass
class TrainConfig(RunConfig):
    """Calibrated Teacher training (defaults: the released stage-1 recipe, 8 GPUs x 2 images, 152k iterations;
    ``eval_interval`` and ``checkpoint_interval`` count iterations)."""

    #: what a ``--resume`` may not change (``RunConfig.RESUME_SECTIONS``): the detector, the method and the training
    #: data (its sparse split, views and batch)
    RESUME_SECTIONS: ClassVar[tuple[str, ...]] = ("method", "detector", "teacher", "data")
    #: the two-stage recipes (``*_fiou.yaml``) switch FIoU on when they resume a stage-1 run; the data's location,
    #: the evaluation files and the loaders may change too
    RESUME_FREE_KEYS: ClassVar[frozenset[str]] = frozenset(
        {
            "teacher.fiou",
            "teacher.fiou_start",
            *(
                f"data.{key}"
                for key in (
                    "root",
                    "train_images",
                    "full_annotations",
                    "expected_kept_ratio",
                    "val_images",
                    "val_annotations",
                    "synthetic_val",
                    "eval_batch_size",
                    "workers",
                )
            ),
        }
    )

    #: a checkpoint written before ``detector.loss_normalization`` existed normalised per image
    LEGACY_VALUES: ClassVar[Mapping[str, Any]] = {"detector.loss_normalization": "image"}

    method: Literal["calibrated_teacher", "supervised"] = "calibrated_teacher"
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    teacher: CalibratedTeacherSettings = field(default_factory=CalibratedTeacherSettings)
    data: DataConfig = field(default_factory=DataConfig)
    pretrained_backbone: str | None = field(
        default=None,
        metadata={"help": "ImageNet backbone file (ResNet: torchvision/mmdet keys; mobilenet_v2: 'imagenet')"},
    )
    allow_random_backbone: bool = field(default=False, metadata={"help": "train from random init (tests only)"})
    max_iters: int = 152_000
    lr: float = 0.01
    lr_base_batch: int = field(default=16, metadata={"help": "lr is given for this global batch; scaled linearly"})
    momentum: float = 0.9
    weight_decay: float = 1e-4
    bias_lr_mult: float = 2.0
    bias_decay_mult: float = 0.0
    lr_steps: list[int] = field(default_factory=lambda: [120_000, 160_000])
    lr_gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    clip_grad: float | None = None
    eval_interval: int = 9000
    checkpoint_interval: int = 1000
    find_unused_parameters: bool = False
