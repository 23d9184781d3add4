"""DMLP's data set-up: CIFAR-10/100 (real or the embedded synthetic set) or Clothing1M, noisy labels, meta split.

Everything is read through :mod:`shared.noisy.data` (official layouts). The embedded default writes a synthetic
CIFAR-10 set in the real pickle layout under ``synthetic_root()/dmlp_cifar10_n<train>_t<test>`` (cached).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from dmlp.purifier import meta_split
from shared.label_noise import NoisyLabels
from shared.noisy.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    CifarTrainTransform,
    NoisyTaskBase,
    Normalize,
    cifar_noise,
    cifar_task_fields,
    clothing1m_splits,
    clothing1m_task_fields,
    clothing1m_transforms,
    load_cifar,
    noise_path,
    save_noise,
    synthetic_cifar_root,
)

__all__ = ["DataConfig", "NoisyTask", "build_task", "meta_size_for", "noise_path", "save_noise"]


@dataclass
class DataConfig:
    """Dataset, noise and meta split."""

    dataset: Literal["cifar10", "cifar100", "clothing1m"] = "cifar10"
    root: str | None = field(default=None, metadata={"help": "dataset root; null = the embedded synthetic CIFAR set"})
    synthetic_train_size: int = 5000
    synthetic_test_size: int = 1000
    image_size: int = field(default=32, metadata={"help": "CIFAR images are resized once to this side"})
    noise_type: Literal["sym", "asym"] = "sym"
    noise_rate: float = 0.5
    noise_seed: int = 0
    noise_file: str | None = field(
        default=None, metadata={"help": "noisy-label file (created if missing); null: <run folder>/noisy_labels.json"}
    )
    meta_fraction: float = field(
        default=0.02,
        metadata={
            "help": "CIFAR: share of the training set split off as the clean meta set (paper: 1 000 of 50 000 = 2 %)"
        },
    )
    meta_seed: int = field(default=0, metadata={"help": "seed of the meta split (released code: unseeded)"})
    num_workers: int = 0


@dataclass
class NoisyTask(NoisyTaskBase):
    """What the stages need: images, labels, the meta split and the transforms."""

    meta_source: Any
    meta_labels: torch.Tensor
    meta_indices: torch.Tensor | None  # CIFAR: rows of the training set used as meta set (with clean labels)
    train_indices: torch.Tensor  # rows that are purified
    train_transform: Callable
    eval_transform: Callable
    batch_transform: Callable | None  # for in-memory tensors (feature extraction)
    noise: NoisyLabels | None = None

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train_source, torch.Tensor)


def meta_size_for(cfg: DataConfig, num_train: int) -> int:
    """round(meta_fraction x N) clean meta samples (at least 1); an out-of-range fraction is an error."""
    if not 0 < cfg.meta_fraction < 1:
        raise ValueError(f"data.meta_fraction must lie in (0, 1), got {cfg.meta_fraction}")
    return max(1, round(cfg.meta_fraction * num_train))


def build_task(cfg: DataConfig, run_dir: Path | None, write_noise: bool = True) -> NoisyTask:
    """Load the dataset, the noisy labels (drawn once, persisted) and the meta split.

    An existing noise file is read and must match the dataset and the noise recipe (type, rate, seed): a file drawn
    with another recipe is refused, never reused. With ``write_noise=False`` nothing is written (a missing noise
    file is drawn in memory; :func:`save_noise` persists it).
    """
    if cfg.dataset == "clothing1m":
        train, val, test = clothing1m_splits(cfg.root, ("train", "val", "test"))
        eval_tf = clothing1m_transforms(train=False)
        return NoisyTask(
            **clothing1m_task_fields(train, test),
            meta_source=val,
            meta_labels=val.labels,
            meta_indices=None,
            train_indices=torch.arange(len(train)),
            train_transform=clothing1m_transforms(train=True),
            eval_transform=eval_tf,
            batch_transform=None,
        )
    classes = 10 if cfg.dataset == "cifar10" else 100
    root = Path(cfg.root) if cfg.root is not None else synthetic_cifar_root("dmlp", cfg)
    size = cfg.image_size
    train = load_cifar(root, classes, True, size)
    test = load_cifar(root, classes, False, size)
    noise = cifar_noise(train.labels, cfg, classes, run_dir, write_noise)
    meta_idx, rest_idx = meta_split(len(train), meta_size_for(cfg, len(train)), cfg.meta_seed)
    normalize = Normalize(CIFAR_MEAN[classes], CIFAR_STD[classes])
    train_tf = CifarTrainTransform(classes, padding=max(1, size // 8))
    return NoisyTask(
        **cifar_task_fields(train, test, noise),
        meta_source=train.images[meta_idx],
        meta_labels=train.labels[meta_idx],
        meta_indices=meta_idx,
        train_indices=rest_idx,
        train_transform=train_tf,
        eval_transform=normalize,
        batch_transform=normalize,
        noise=noise,
    )
