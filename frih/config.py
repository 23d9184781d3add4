"""The training configuration of frih (train.py reads it from a YAML recipe and the command line; eval.py rebuilds
it from a checkpoint). The run-level settings (run folder, seed, device, AMP, threads, intervals) are
:class:`shared.config.RunConfig`'s; the architecture is :class:`frih.model.FRIHConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from frih.data import SUBSETS
from frih.model import FRIHConfig
from shared.config import RunConfig

__all__ = ["DEFAULT_CONFIG", "PACKAGE", "Config", "DataConfig", "LossConfig", "OptimConfig"]

PACKAGE = "frih"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"


@dataclass
class DataConfig:
    root: str | None = field(default=None, metadata={"help": "iHarmony4 root; null = the embedded synthetic tree"})
    subsets: list[str] = field(default_factory=lambda: list(SUBSETS), metadata={"help": "training subsets"})
    test_subsets: list[str] | None = field(default=None, metadata={"help": "evaluation subsets (null = subsets)"})
    split_source: Literal["subset", "ihd"] = "subset"
    crop_size: int = field(default=256, metadata={"help": "RandomResizedCrop output side"})
    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip_p: float = 0.5
    keep_background_prob: float = 0.05
    eval_size: int = field(default=256, metadata={"help": "test-time Resize side (0 = native resolution)"})
    num_workers: int = 4
    synthetic_size: int = field(default=96, metadata={"help": "synthetic tree: image side"})
    synthetic_num_real: int = field(default=32, metadata={"help": "synthetic tree: real images per subset"})
    synthetic_seed: int = 0
    synthetic_kind: Literal["mixed", "photos"] = field(
        default="mixed",
        metadata={
            "help": "synthetic tree: 'mixed' (photos, tinted textures, drawn shapes) or 'photos' (the real-photo set: "
            "scikit-image / scikit-learn photographs only, segment masks; frih.synthetic)"
        },
    )
    synthetic_root: str | None = field(
        default=None,
        metadata={
            "help": "synthetic tree cache folder (null: <synthetic_root()>/frih_iharmony4_s<size>_n<num>_seed<seed>)"
        },
    )


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    batch_size: int = field(default=16, metadata={"help": "images per process"})
    epochs: int = 120
    milestones: list[int] = field(default_factory=lambda: [105, 115], metadata={"help": "MultiStepLR epochs"})
    gamma: float = 0.1


@dataclass
class LossConfig:
    min_area: float = field(default=100.0, metadata={"help": "FN-MSE A_min (iDIH 100, iSSAM's config 1000)"})
    final_weight: float = 1.0
    coarse_weight: float = field(default=1.0, metadata={"help": "FN-MSE on the stage-1 output [HYP]"})
    module_weight: float = field(default=1.0, metadata={"help": "FN-MSE of each module inside its submask [HYP]"})


@dataclass
class Config(RunConfig):
    """train.py's config. ``eval_interval`` and ``checkpoint_interval`` count epochs."""

    #: what a ``--resume`` may not change (``RunConfig.RESUME_SECTIONS``): the network, the loss, the stage-1 schedule
    RESUME_SECTIONS: ClassVar[tuple[str, ...]] = ("model", "loss", "stage1_epochs")

    model: FRIHConfig = field(default_factory=FRIHConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    stage1_pretrained: str | None = field(default=None, metadata={"help": "state_dict file for stage 1 (iSSAM/iDIH)"})
    stage1_epochs: int = field(
        default=0,
        metadata={
            "help": "FRIH only: the first N of optim.epochs train stage 1 alone on its own FN-MSE (an in-run "
            "warm start; stage 2 is not run and not updated); 0 = end to end from the first step (paper reading)"
        },
    )
    channels_last: bool = False
    compile: bool = False
    eval_batch_size: int = 16
    num_grid_images: int = 8
    log_interval: int = field(default=20, metadata={"help": "TensorBoard training scalars every N steps"})
    eval_interval: int = field(default=0, metadata={"help": "evaluate every N epochs (0: only after the last)"})
    checkpoint_interval: int = field(
        default=1,
        metadata={"help": "write last.pt every N epochs (0: only at the end; best.pt whenever an evaluation improves)"},
    )
