"""The configuration of ``train.py`` and ``eval.py``: one dataclass per section, :class:`TrainConfig` on top.

The run-level keys (``output_dir``, ``name``, ``resume``, ``seed``, ``device``, ``amp``, ``threads``,
``log_interval``, ``eval_interval``, ``checkpoint_interval``, ``tensorboard``) come from
:class:`shared.config.RunConfig`; the sections below are LSFA's own. Every key is a command-line flag
(``--section.key value``) and a YAML key (README, Recipes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from lsfa.adaptation import AdaptationSettings
from lsfa.scoring import ScoringSettings
from lsfa.uff import UFFSettings
from shared.config import RunConfig

__all__ = [
    "DEFAULT_CONFIG",
    "AdaptorConfig",
    "BackboneConfig",
    "DataConfig",
    "EvalConfig",
    "OptimConfig",
    "SyntheticConfig",
    "TrainConfig",
]

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"


@dataclass
class DataConfig:
    dataset: str = field(default="mvtec3d", metadata={"help": "'synthetic', 'mvtec3d' or 'eyecandies'"})
    root: str | None = field(default=None, metadata={"help": "preprocessed tree (python -m lsfa.preprocess)"})
    classes: list[str] = field(default_factory=list, metadata={"help": "classes to use (empty: all under root)"})
    image_size: int = 224
    rgb_resize: str = field(
        default="pil", metadata={"help": "pil (M3DM: PIL bicubic) | torch (bicubic without antialiasing)"}
    )
    mask_resize: Literal["pil", "torch"] = field(
        default="pil",
        metadata={
            "help": "gt masks: pil (M3DM: PIL nearest, pixel centres) | torch (torch mode='nearest', floor(i*scale): "
            "the earlier rule, kept by the evidence run)"
        },
    )
    batch_size: int = 8
    num_workers: int = 0
    max_train_samples: int | None = field(default=400, metadata={"help": "per class (the release's max_sample)"})
    cache_features: bool = field(
        default=False,
        metadata={
            "help": "keep the frozen training features in memory (extracted once, reused every epoch and for banks)"
        },
    )
    require_preprocessed: bool = field(
        default=True,
        metadata={
            "help": "refuse a real-data root without the LSFA_PREPROCESSED.json marker of python -m lsfa.preprocess"
        },
    )


@dataclass
class SyntheticConfig:
    num_train: int = 30
    num_test_good: int = 8
    num_test_per_defect: int = 4
    size: int = 240
    seed: int = 0


@dataclass
class BackboneConfig:
    rgb_variant: str = field(
        default="dino_vitb8",
        metadata={"help": "dino_vitb8 (paper), dino_vits8, vit_tiny8_d2, imagenet_mobilenet_v2 (evidence)"},
    )
    rgb_checkpoint: str | None = field(default=None, metadata={"help": "dino_vitbase8_pretrain.pth (DINO / timm)"})
    point_variant: str = field(default="point_mae", metadata={"help": "point_mae (paper), point_mae_tiny"})
    point_checkpoint: str | None = field(default=None, metadata={"help": "pointmae_pretrain.pth (Point-MAE)"})
    allow_random_init: bool = field(default=False, metadata={"help": "random backbones (embedded default only)"})
    grid: int = field(default=56, metadata={"help": "xyz feature grid side (56 = 3136 tokens)"})
    point_scale: float = field(default=1.0, metadata={"help": "multiply coordinates before the point encoder"})
    point_centre: bool = field(default=False, metadata={"help": "centre each cloud on its centroid first"})
    masked_pool: bool = field(
        default=False,
        metadata={"help": "pool xyz features over the valid pixels only (M3DM / release: empty pixels count as zeros)"},
    )
    uff_checkpoint: str | None = field(
        default=None,
        metadata={"help": "M3DM's UFF weights (uff_pretrained.pth, {'model': ...}) for method m3dm_triple"},
    )


@dataclass
class AdaptorConfig:
    init: str = field(
        default="torch_default",
        metadata={"help": "torch_default (the release: PyTorch's default init) | trunc_normal (std 0.02, zero bias)"},
    )
    num_heads: int = 12
    proj_dim: int = 512
    patch_queue: int = field(default=60_000, metadata={"help": "IFC patch queue entries per class"})
    global_queue: int = field(default=100, metadata={"help": "IFC global queue entries per class"})


@dataclass
class OptimConfig:
    epochs: int = 2
    lr: float = 3e-4
    weight_decay: float = field(
        default=0.01, metadata={"help": "torch AdamW default (the release never passes its --weight_decay 1.5e-6)"}
    )
    betas: tuple[float, float] = (0.9, 0.95)
    accum_iter: int = 16
    warmup_epochs: float = 1.0
    schedule_epochs: int = field(default=100, metadata={"help": "cosine length (release: 100 while 2 epochs run)"})
    min_lr: float = 0.0
    released_zero_grad: bool = field(
        default=False,
        metadata={
            "help": "zero the gradients every iteration as the release (accumulation then keeps 1/accum_iter of one "
            "batch); default: proper accumulation"
        },
    )


#: The scoring methods of ``eval.methods`` (lsfa.eval.METHODS).
Method = Literal["lsfa", "m3dm", "m3dm_triple"]


@dataclass
class EvalConfig:
    methods: list[Method] = field(
        default_factory=lambda: ["lsfa", "m3dm"],
        metadata={"help": "lsfa (adapted banks), m3dm (frozen double bank), m3dm_triple (+ M3DM's fusion bank)"},
    )
    vis_images: int = 4
    aupro: Literal["exact", "m3dm"] = field(
        default="exact",
        metadata={
            "help": "AUPRO@0.3 of the table: exact (the full curve) | m3dm (M3DM's 100 rank thresholds, the papers'); "
            "both are written to metrics.json"
        },
    )


@dataclass
class TrainConfig(RunConfig):
    """Everything ``train.py`` reads. ``checkpoint_interval`` counts epochs (``last.pt`` every N epochs and at the
    end); the memory banks are built and scored once, after the last epoch (``eval_interval`` must stay 0)."""

    #: what a ``--resume`` may not change (``RunConfig.RESUME_SECTIONS``): the backbones, the adaptors, their losses
    RESUME_SECTIONS: ClassVar[tuple[str, ...]] = ("backbone", "adaptor", "loss")
    #: the backbones' weight files (``last.pt`` holds the weights it trained with)
    #: a config stored before ``data.mask_resize`` existed was scored with the ``torch`` gt-mask rule, so that
    #: ``eval.py`` re-scores it as it was (``--data.mask_resize pil`` for M3DM's rule)
    LEGACY_VALUES: ClassVar[Mapping[str, Any]] = {"data.mask_resize": "torch"}
    RESUME_FREE_KEYS: ClassVar[frozenset[str]] = frozenset(
        {
            "backbone.rgb_checkpoint",
            "backbone.point_checkpoint",
            "backbone.uff_checkpoint",
            "backbone.allow_random_init",
        }
    )

    log_interval: int = field(default=20, metadata={"help": "TensorBoard train/ scalars every N iterations"})
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adaptor: AdaptorConfig = field(default_factory=AdaptorConfig)
    loss: AdaptationSettings = field(default_factory=AdaptationSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    eval: EvalConfig = field(default_factory=EvalConfig)
    uff: UFFSettings = field(default_factory=UFFSettings)
