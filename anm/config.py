"""The config of an anm run: run-level settings (:class:`shared.config.RunConfig`), data, model, DivideMix and SANM.

The data section (:class:`anm.data.DataConfig`) and the masker (:class:`anm.masking.MaskerConfig`) live with the
code that reads them; this module composes them into the :class:`Config` that ``train.py`` parses and ``eval.py``
rebuilds from a checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from anm.data import DataConfig
from anm.masking import MaskerConfig
from shared.config import RunConfig, pop_stored_key
from shared.noisy.dividemix import DivideMixConfig

__all__ = [
    "DEFAULT_CONFIG",
    "PACKAGE",
    "Config",
    "ModelConfig",
    "SANMConfig",
    "check_run_settings",
]

PACKAGE = "anm"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"


@dataclass
class ModelConfig:
    """The two networks (same architecture, different initialisation)."""

    name: str = field(
        default="supce_resnet18",
        metadata={
            "help": "anm.model.VARIANTS: supce_resnet18 (released CIFAR), supce_resnet50 (Clothing1M), "
            "preact_resnet18 (SANM + DivideMix), digits_cnn (CPU evidence)"
        },
    )
    width: int | None = field(default=None, metadata={"help": "first-stage channels (null: the variant's)"})
    pretrained: str | None = field(
        default=None,
        metadata={"help": "C2D SSL checkpoint for both networks (SupCE variants); null = random init (said in log)"},
    )
    double_softmax: bool = field(
        default=False, metadata={"help": "released SupCE ResNet-18 quirk: softmax probabilities used as logits"}
    )


@dataclass
class SANMConfig:
    """SANM's additions to DivideMix (README, "Method"). ``method`` picks the arm: ``sanm`` (the paper),
    ``dividemix`` (the base engine, 2 views) or ``ce`` (both networks trained with CE for every epoch)."""

    method: Literal["sanm", "dividemix", "ce"] = "sanm"
    masking: bool = field(default=True, metadata={"help": "append x_max / x_min (off: the 8-group batch, ablation)"})
    modulation: bool = field(default=True, metadata={"help": "Eq. 7 on the masked groups' targets"})
    reconstruction: bool = field(default=True, metadata={"help": "L_rec (Eq. 10) through the decoder"})
    recon_weight: float = field(default=0.02, metadata={"help": "CIFAR 0.02, Clothing1M 0.3"})
    warmup_clip_norm: float | None = field(
        default=None, metadata={"help": "gradient-norm clipping in warm-up (released CIFAR: 1.0); null: none"}
    )
    masker: MaskerConfig = field(default_factory=MaskerConfig)


@dataclass
class Config(RunConfig):
    """An anm run. Units of ``eval_interval`` / ``checkpoint_interval``: epochs; the test ensemble is evaluated and
    last.pt written after every epoch (both must be 1); ``amp`` must be ``off`` (fp32 as released)."""

    #: what a ``--resume`` may not change (``RunConfig.RESUME_SECTIONS``): the networks and the method
    RESUME_SECTIONS: ClassVar[tuple[str, ...]] = ("model", "dividemix", "sanm")
    #: the run's length (a longer run continues a shorter one), loading, and the initial weights' file
    RESUME_FREE_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"dividemix.epochs", "dividemix.num_workers", "dividemix.eval_batch_size", "model.pretrained"}
    )

    eval_interval: int = field(default=1, metadata={"help": "evaluate every N epochs; anm supports 1 only"})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dividemix: DivideMixConfig = field(default_factory=DivideMixConfig)
    sanm: SANMConfig = field(default_factory=SANMConfig)

    @classmethod
    def upgrade_stored(cls, stored: Mapping[str, Any]) -> dict[str, Any]:
        """Besides the run-level names (``RunConfig.upgrade_stored``): ``data.num_workers``, removed, is dropped. No
        loader read it (every loader reads ``dividemix.num_workers``); it becomes ``dividemix.num_workers`` only in a
        config without one (what ran is what the engine read)."""
        values = super().upgrade_stored(stored)
        workers = pop_stored_key(values, "data.num_workers")
        if workers is not None:
            values["dividemix"] = {"num_workers": workers, **dict(values.get("dividemix") or {})}
        return values


def check_run_settings(cfg: Config) -> None:
    """Refuse settings anm does not support, with the reason."""
    if cfg.amp != "off":
        raise ValueError(f"amp={cfg.amp!r} is not supported by anm (fp32 as released); use --amp off")
    for key in ("eval_interval", "checkpoint_interval"):
        if getattr(cfg, key) != 1:
            raise ValueError(
                f"{key}={getattr(cfg, key)} is not supported by anm: it tests and writes last.pt after "
                f"every epoch; use --{key} 1"
            )
    if cfg.model.pretrained and not Path(cfg.model.pretrained).is_file():
        raise FileNotFoundError(
            f"model.pretrained: C2D SSL checkpoint not found: {cfg.model.pretrained}. The SANM recipes start from "
            "C2D's self-supervised weights (README, Recipes: where to get ckpt_<dataset>_<arch>.pth)"
        )
    if cfg.model.pretrained and not cfg.model.name.startswith("supce_"):
        raise ValueError(f"model.pretrained loads C2D checkpoints into SupCE ResNets only, not {cfg.model.name!r}")
    if cfg.model.double_softmax and cfg.model.name not in ("supce_resnet18", "supce_resnet18_tiny"):
        raise ValueError("model.double_softmax reproduces the released SupCE ResNet-18 quirk; it needs supce_resnet18")
