"""The config of a CREMA run: run-level settings (:class:`shared.config.RunConfig`) plus data, model, method and
optimiser sections.

Every choice the paper leaves open (README, Fidelity notes) is a switch of :class:`MethodConfig`; the defaults are
the design of README "Method" (credibility = 1 - JS(p, onehot(y)) / ln 2, K = 5 epochs of memory, GMM split,
mean * (1 - std) modulation, selective hard label update with reversion).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from shared.config import RunConfig
from shared.noisy.data import NoisyDataConfig

__all__ = [
    "DEFAULT_CONFIG",
    "PACKAGE",
    "Config",
    "DataConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "check_config",
]

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
PACKAGE = "crema"


@dataclass
class DataConfig(NoisyDataConfig):
    """Dataset and label noise (:class:`shared.noisy.data.NoisyDataConfig`)."""

    dataset: Literal["cifar10", "cifar100", "clothing1m", "digits", "imdb"] = "cifar10"
    root: str | None = field(
        default=None,
        metadata={
            "help": "dataset root; null = the embedded set (synthetic CIFAR / scikit-learn digits written as CIFAR "
            "pickles / synthetic aclImdb corpus)"
        },
    )
    synthetic_train_size: int = field(default=2000, metadata={"help": "synthetic CIFAR / aclImdb training size"})
    synthetic_test_size: int = 500
    hflip: bool = field(default=True, metadata={"help": "horizontal flips in the training augmentation"})
    crop_padding: int | None = field(
        default=None, metadata={"help": "random-crop padding in pixels (null: 4 at 32 px, size // 8 below)"}
    )
    digits_test_size: int = field(default=600, metadata={"help": "digits: images held out as the clean test split"})
    digits_split_seed: int = 0
    binary_noise: Literal["dividemix", "flip"] = field(
        default="dividemix",
        metadata={
            "help": "2 classes (imdb), sym r: 'dividemix' = r N samples get a uniform label (flip rate r/2); "
            "'flip' = r N samples get the other label (flip rate r)"
        },
    )
    epoch_samples: int | None = field(
        default=None, metadata={"help": "Clothing1M: class-balanced sample of this size per epoch (null: all)"}
    )
    warmup_epoch_samples: int | None = field(
        default=None,
        metadata={"help": "Clothing1M: class-balanced sample per warm-up epoch (null: as epoch_samples)"},
    )
    max_len: int = field(default=200, metadata={"help": "imdb: tokens per review (truncated / padded)"})
    vocab_size: int = field(default=20000, metadata={"help": "imdb: most frequent training tokens kept"})
    min_freq: int = 2
    num_workers: int = 0


@dataclass
class ModelConfig:
    """The classifier: a name of :data:`crema.model.VARIANTS` plus overrides."""

    arch: str = field(default="preact_resnet18", metadata={"help": "a crema.model.VARIANTS name"})
    width: int | None = field(default=None, metadata={"help": "PreAct ResNet-18 channels (null: the variant's)"})
    pretrained: str | None = field(default=None, metadata={"help": "local ImageNet / SSL weights (ResNet-50)"})
    num_nets: Literal[1, 2] = field(default=1, metadata={"help": "2 = co-divided networks (README, Method)"})


@dataclass
class OptimConfig:
    """SGD with momentum (or Adam) and a step schedule (DivideMix's CIFAR optimiser by default)."""

    optimizer: Literal["sgd", "adam"] = field(default="sgd", metadata={"help": "adam: the text recipes"})
    epochs: int = 300
    batch_size: int = 128
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: list[int] = field(default_factory=lambda: [150], metadata={"help": "lr x gamma at these epochs"})
    gamma: float = 0.1
    eval_batch_size: int = 512
    warmup_batch_size: int | None = field(
        default=None, metadata={"help": "batch of the warm-up epochs (null: batch_size; DivideMix's Clothing1M: 64)"}
    )


@dataclass
class MethodConfig:
    """CREMA's switches (README, Method and Fidelity notes)."""

    warmup_epochs: int = field(default=10, metadata={"help": "plain CE epochs before the first split"})
    warmup_penalty: bool = field(
        default=False, metadata={"help": "negative-entropy penalty in warm-up (asym, Clothing1M)"}
    )
    credibility: Literal["js", "prob", "loss", "agreement"] = field(
        default="js",
        metadata={"help": "js: 1 - JS(p, onehot(y))/ln2; prob: p[y]; loss: 1 - min-max CE; agreement: two views"},
    )
    memory_length: int = field(default=5, metadata={"help": "K: epochs kept in each sample's credibility memory"})
    split: Literal["gmm", "none"] = field(default="gmm", metadata={"help": "none: every sample is 'clean' (CE)"})
    split_on: Literal["current", "memory_mean"] = field(
        default="current", metadata={"help": "GMM input: this epoch's credibility or its memory mean"}
    )
    p_threshold: float = field(default=0.5, metadata={"help": "clean if P(credible component) > this"})
    gmm_max_iter: int = 10
    gmm_tol: float = 1e-2
    gmm_reg_covar: float = 5e-4
    modulation: Literal["mean_std", "mean", "last", "none"] = field(
        default="mean_std", metadata={"help": "clean-set weight from the memory: mean*(1-std), mean, last, 1"}
    )
    weight_min: float = field(default=0.0, metadata={"help": "weights are clipped to [weight_min, 1]"})
    label_update: bool = field(default=True, metadata={"help": "selective label update of the noisy set"})
    update_threshold: float = field(default=0.99, metadata={"help": "tau: max softmax needed for an update"})
    update_stable: bool = field(default=True, metadata={"help": "argmax unchanged over the K memory epochs"})
    update_agreement: bool = field(default=True, metadata={"help": "two networks: both argmaxes agree"})
    noisy_rest: Literal["drop", "consistency"] = field(
        default="drop",
        metadata={"help": "noisy samples not updated: left out, or a consistency term to the sharpened prediction"},
    )
    consistency_weight: float = 1.0
    sharpen_temperature: float = 0.5
    prior_weight: float = field(default=1.0, metadata={"help": "uniform-prior KL penalty after warm-up (0: off)"})


@dataclass
class Config(RunConfig):
    """A CREMA run. ``eval_interval`` / ``checkpoint_interval`` count epochs (0: at the end only)."""

    #: what a ``--resume`` may not change (``RunConfig.RESUME_SECTIONS``): the network and the method
    RESUME_SECTIONS: ClassVar[tuple[str, ...]] = ("model", "method")
    #: the initial weights' file
    RESUME_FREE_KEYS: ClassVar[frozenset[str]] = frozenset({"model.pretrained"})

    eval_interval: int = field(default=1, metadata={"help": "test every N epochs (0: at the end)"})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=MethodConfig)


def check_config(cfg: Config, training: bool = True) -> None:
    """Refuse settings that cannot work, naming the key. ``training=False`` (evaluation of a checkpoint, whose
    weights replace any initialisation) does not ask for the ImageNet file of the Clothing1M recipe."""
    m, o, d = cfg.method, cfg.optim, cfg.data
    if cfg.amp != "off":
        raise ValueError(f"amp={cfg.amp!r} is not supported by crema (fp32 only, as DivideMix); use --amp off")
    if m.memory_length < 1:
        raise ValueError(f"method.memory_length must be >= 1, got {m.memory_length}")
    if not 0.0 < m.p_threshold < 1.0:
        raise ValueError(f"method.p_threshold must lie in (0, 1), got {m.p_threshold}")
    if not 0.0 <= m.update_threshold <= 1.0:
        raise ValueError(f"method.update_threshold must lie in [0, 1], got {m.update_threshold}")
    if not 0.0 <= m.weight_min <= 1.0:
        raise ValueError(f"method.weight_min must lie in [0, 1], got {m.weight_min}")
    if not 0.0 <= d.noise_rate <= 1.0:
        raise ValueError(f"data.noise_rate must lie in [0, 1], got {d.noise_rate}")
    if o.epochs < 1 or o.batch_size < 1:
        raise ValueError(f"optim.epochs and optim.batch_size must be >= 1, got {o.epochs}, {o.batch_size}")
    if o.warmup_batch_size is not None and o.warmup_batch_size < 1:
        raise ValueError(f"optim.warmup_batch_size must be >= 1 (or null), got {o.warmup_batch_size}")
    for key, value in (("epoch_samples", d.epoch_samples), ("warmup_epoch_samples", d.warmup_epoch_samples)):
        if value is not None and value < 1:
            raise ValueError(f"data.{key} must be >= 1 (or null), got {value}")
    if m.warmup_epochs < 0:
        raise ValueError(f"method.warmup_epochs must be >= 0, got {m.warmup_epochs}")
    if d.dataset == "clothing1m" and d.root is None:
        raise ValueError(
            "Clothing1M has no embedded synthetic set: pass --data.root (see `python -m shared.datasets info "
            "clothing1m`)"
        )
    if training and d.dataset == "clothing1m" and cfg.model.arch == "resnet50" and cfg.model.pretrained is None:
        raise ValueError(
            "the Clothing1M recipe starts from ImageNet weights: pass --model.pretrained PATH (a torchvision "
            "resnet50 state dict, e.g. resnet50-0676ba61.pth from download.pytorch.org/models); random weights are "
            "never used silently"
        )
    if training and cfg.model.pretrained is not None and not Path(cfg.model.pretrained).is_file():
        raise FileNotFoundError(
            f"model.pretrained: {cfg.model.pretrained} is not a file (the ImageNet resnet50 state dict, e.g. "
            "resnet50-0676ba61.pth from download.pytorch.org/models)"
        )
