"""The config of a DMLP run: the run-level settings (:class:`shared.config.RunConfig`) and one section per stage.

The data section (:class:`dmlp.data.DataConfig`) and the purifier's hyper-parameters
(:class:`dmlp.purifier.PurifierConfig`) live with the code that reads them; this module composes them with the
SSL and retraining sections into the :class:`Config` that ``train.py`` parses and ``eval.py`` rebuilds from a
checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from dmlp.data import DataConfig
from dmlp.purifier import PurifierConfig
from shared.config import RunConfig, pop_stored_key
from shared.noisy.dividemix import DivideMixConfig
from shared.noisy.supervised import SupervisedConfig

__all__ = [
    "DEFAULT_CONFIG",
    "STAGES",
    "Config",
    "RetrainConfig",
    "SSLConfig",
    "check_run_settings",
]

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
STAGES = ("ssl", "purify", "retrain")


@dataclass
class SSLConfig:
    """Stage 1: the label-free encoder (SimCLR CIFAR recipe, or an external SSL checkpoint)."""

    arch: Literal["preact_resnet18", "resnet50"] = "preact_resnet18"
    width: int = field(default=64, metadata={"help": "PreAct ResNet-18 stage-1 channels (64 = the paper size)"})
    checkpoint: str | None = field(
        default=None,
        metadata={"help": "external SSL weights (SimCLR/C2D ResNet-18, MoCo ResNet-50): skips SimCLR training"},
    )
    epochs: int = 1000
    batch_size: int = 512
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = field(default=0.5, metadata={"help": "peak lr (cosine schedule, 10 warm-up epochs for sgd)"})
    weight_decay: float = 1e-4
    warmup_epochs: int = 10
    temperature: float = 0.5
    proj_dim: int = 128
    crop_scale: tuple[float, float] = (0.08, 1.0)
    jitter_strength: float = 0.5
    gray_prob: float = 0.2
    train_subset: int | None = field(default=None, metadata={"help": "SimCLR on the first N images only (CPU demo)"})
    feature_batch_size: int = 512
    standardize_features: bool = field(
        default=True, metadata={"help": "centre and scale the features (training statistics) before purification"}
    )


@dataclass
class RetrainConfig:
    """Stage 3: application of the purified labels."""

    mode: Literal["naive", "dividemix"] = "naive"
    arch: Literal["preact_resnet18", "resnet50"] = "preact_resnet18"
    width: int = 64
    init: Literal["scratch", "ssl", "pretrained"] = field(
        default="scratch",
        metadata={
            "help": "scratch, the SSL encoder of stage 1 (C2D-style), or --retrain.pretrained (e.g. ImageNet R-50)"
        },
    )
    pretrained: str | None = None
    include_meta: bool = field(
        default=True,
        metadata={
            "help": "CIFAR: meta samples rejoin training with clean labels (false: naive mode only; Clothing1M: its "
            "meta set is the validation split, never trained on)"
        },
    )
    soft_labels: bool = field(default=False, metadata={"help": "DMLP-Naive with the soft purified labels"})
    label_file: str | None = field(
        default=None,
        metadata={"help": "retrain on this label file instead of the purified one (e.g. purified labels downloaded)"},
    )
    baselines: list[str] = field(
        default_factory=list,
        metadata={
            "help": "also train: ce_noisy (CE on the noisy labels + the meta rows' true labels, on DMLP-Naive's rows), "
            "meta_only (CE on the clean meta set)"
        },
    )
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    dividemix: DivideMixConfig = field(default_factory=DivideMixConfig)


@dataclass
class Config(RunConfig):
    """A DMLP run. ``resume`` names a run's last.pt or any dmlp stage file of its folder (e.g.
    retrain_dmlp_naive.pt of an interrupted run): finished stages are reused, the others continue.

    Every stage evaluates and writes its checkpoint once per epoch of its own loop (SimCLR, purifier, CE or
    DivideMix epochs), so ``eval_interval`` and ``checkpoint_interval`` (unit: epochs) must be 1; ``log_interval``
    is not used (one log line per epoch); ``amp`` must be ``off`` (see README, Fidelity notes)."""

    #: none: a ``--resume`` may change any key, and each stage whose recorded inputs differ from this run's is
    #: rebuilt (README, "Cache fingerprints and the rebuild rule"), so nothing of another config is mixed in
    RESUME_SECTIONS: ClassVar[tuple[str, ...]] = ()

    eval_interval: int = field(
        default=1, metadata={"help": "evaluate every N epochs of each stage; dmlp supports 1 only"}
    )
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    collective_timeout_min: float = field(
        default=24 * 60,
        metadata={
            "help": "torchrun: minutes the other ranks wait for rank 0's SSL and purification stages (NCCL's default "
            "10 would abort the job while SimCLR trains)"
        },
    )
    data: DataConfig = field(default_factory=DataConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    purifier: PurifierConfig = field(default_factory=PurifierConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)

    @classmethod
    def upgrade_stored(cls, stored: Mapping[str, Any]) -> dict[str, Any]:
        """Besides the run-level names (``RunConfig.upgrade_stored``): ``data.meta_size`` (a count in earlier
        versions) becomes ``data.meta_fraction``."""
        values = super().upgrade_stored(stored)
        size = pop_stored_key(values, "data.meta_size")
        if size is not None:
            data = values["data"]
            train_size = data.get("synthetic_train_size") if data.get("root") is None else 50000
            if data.get("dataset") != "clothing1m" and train_size:
                data["meta_fraction"] = size / train_size
        return values


#: RunConfig keys with one supported value in dmlp; they say nothing about what a run folder holds, so the folder's
#: RUN.json leaves them out (and a folder claimed before they existed can still be resumed).
PINNED_RUN_KEYS = ("log_interval", "eval_interval", "checkpoint_interval")


def check_run_settings(cfg: Config) -> None:
    """Refuse the RunConfig settings and stages that dmlp does not support, with the reason."""
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; valid: {list(STAGES)}")
    if cfg.amp != "off":
        raise ValueError(
            f"amp={cfg.amp!r} is not supported by dmlp: the purifier is a tiny linear model and the "
            "CE/DivideMix stages run in fp32 as released; use --amp off"
        )
    for key in ("eval_interval", "checkpoint_interval"):
        if getattr(cfg, key) != 1:
            raise ValueError(
                f"{key}={getattr(cfg, key)} is not supported by dmlp: every stage tests and writes its "
                f"checkpoint after each of its epochs; use --{key} 1"
            )
    if cfg.retrain.mode == "dividemix" and not cfg.retrain.include_meta and cfg.data.dataset != "clothing1m":
        raise ValueError(
            "retrain.include_meta false is not supported with retrain.mode dividemix: DivideMix co-divides the whole "
            "training set, the meta rows (with their true labels) included; use --retrain.include_meta true, or "
            "--retrain.mode naive to retrain without the meta rows (on Clothing1M the meta set is the separate "
            "validation split, never in the training set, so the setting has no effect there)"
        )
