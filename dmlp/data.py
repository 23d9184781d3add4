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
    CifarTrainTransform,
    NoisyDataConfig,
    NoisyTaskBase,
    cifar_noise,
    clothing1m_splits,
    clothing1m_task_fields,
    load_cifar_task,
    noise_path,
    save_noise,
)

__all__ = ["DataConfig", "NoisyTask", "build_task", "meta_size_for", "noise_path", "save_noise"]


@dataclass
class DataConfig(NoisyDataConfig):
    """Dataset, noise (:class:`shared.noisy.data.NoisyDataConfig`) and meta split."""

    dataset: Literal["cifar10", "cifar100", "clothing1m"] = "cifar10"
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
        return NoisyTask(
            **clothing1m_task_fields(train, test),
            meta_source=val,
            meta_labels=val.labels,
            meta_indices=None,
            train_indices=torch.arange(len(train)),
            batch_transform=None,
        )
    classes = 10 if cfg.dataset == "cifar10" else 100
    fields = load_cifar_task(cfg, "dmlp", classes, lambda clean: cifar_noise(clean, cfg, classes, run_dir, write_noise))
    num_train = len(fields["clean_labels"])
    meta_idx, rest_idx = meta_split(num_train, meta_size_for(cfg, num_train), cfg.meta_seed)
    return NoisyTask(
        **fields,
        meta_source=fields["train_source"][meta_idx],
        meta_labels=fields["clean_labels"][meta_idx],
        meta_indices=meta_idx,
        train_indices=rest_idx,
        train_transform=CifarTrainTransform(classes, padding=max(1, cfg.image_size // 8)),
        batch_transform=fields["eval_transform"],
    )
