"""DMLP's data set-up: CIFAR-10/100 (real or the embedded synthetic set) or Clothing1M, noisy labels, meta split.

Everything is read through :mod:`shared.noisy.data` (official layouts). The embedded default writes a synthetic
CIFAR-10 set in the real pickle layout under ``synthetic_root()/dmlp_cifar10_n<train>_t<test>`` (cached).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dmlp.purifier import meta_split
from shared.label_noise import NoisyLabels, save_noisy_labels
from shared.noisy.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    CifarTrainTransform,
    Clothing1M,
    Normalize,
    clothing1m_transforms,
    load_cifar,
    noisy_labels_for,
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
class NoisyTask:
    """What the stages need: images, labels, the meta split and the transforms."""

    train_source: Any
    test_source: Any
    test_labels: torch.Tensor
    noisy_labels: torch.Tensor
    clean_labels: torch.Tensor | None
    num_classes: int
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


def _synthetic_root(cfg: DataConfig) -> Path:
    from shared.synthetic import synthetic_root, write_cifar

    classes = 10 if cfg.dataset == "cifar10" else 100
    root = synthetic_root() / f"dmlp_{cfg.dataset}_n{cfg.synthetic_train_size}_t{cfg.synthetic_test_size}"
    return write_cifar(root, classes, train_size=cfg.synthetic_train_size, test_size=cfg.synthetic_test_size, seed=0)


def meta_size_for(cfg: DataConfig, num_train: int) -> int:
    """round(meta_fraction x N) clean meta samples (at least 1); an out-of-range fraction is an error."""
    if not 0 < cfg.meta_fraction < 1:
        raise ValueError(f"data.meta_fraction must lie in (0, 1), got {cfg.meta_fraction}")
    return max(1, round(cfg.meta_fraction * num_train))


def noise_path(cfg: DataConfig, run_dir: Path | None) -> Path | None:
    """The noise file: ``data.noise_file``, else ``<run folder>/noisy_labels.json`` (None: no run folder yet)."""
    if cfg.noise_file:
        return Path(cfg.noise_file)
    return run_dir / "noisy_labels.json" if run_dir is not None else None


def save_noise(cfg: DataConfig, task: NoisyTask, run_dir: Path) -> None:
    """Persist the noise draw of ``task`` when its noise file does not exist yet (rank 0, after the folder check)."""
    path = noise_path(cfg, run_dir)
    if task.noise is not None and path is not None and not path.is_file():
        save_noisy_labels(path, task.noise)


def build_task(cfg: DataConfig, run_dir: Path | None, write_noise: bool = True) -> NoisyTask:
    """Load the dataset, the noisy labels (drawn once, persisted) and the meta split.

    An existing noise file is read and must match the dataset and the noise recipe (type, rate, seed): a file drawn
    with another recipe is refused, never reused. With ``write_noise=False`` nothing is written (a missing noise
    file is drawn in memory; :func:`save_noise` persists it).
    """
    if cfg.dataset == "clothing1m":
        if cfg.root is None:
            raise ValueError(
                "Clothing1M has no embedded synthetic set: pass --data.root (see "
                "`python -m shared.datasets info clothing1m`)"
            )
        train, val, test = (Clothing1M(cfg.root, split) for split in ("train", "val", "test"))
        eval_tf = clothing1m_transforms(train=False)
        return NoisyTask(
            train_source=train,
            test_source=test,
            test_labels=test.labels,
            noisy_labels=train.labels,
            clean_labels=None,
            num_classes=14,
            meta_source=val,
            meta_labels=val.labels,
            meta_indices=None,
            train_indices=torch.arange(len(train)),
            train_transform=clothing1m_transforms(train=True),
            eval_transform=eval_tf,
            batch_transform=None,
        )
    classes = 10 if cfg.dataset == "cifar10" else 100
    root = Path(cfg.root) if cfg.root is not None else _synthetic_root(cfg)
    size = cfg.image_size
    train = load_cifar(root, classes, True, size)
    test = load_cifar(root, classes, False, size)
    path = noise_path(cfg, run_dir)
    noise = noisy_labels_for(
        train.labels,
        cfg.noise_type,
        cfg.noise_rate,
        classes,
        cfg.noise_seed,
        path if path is not None and (write_noise or path.is_file()) else None,
    )
    meta_idx, rest_idx = meta_split(len(train), meta_size_for(cfg, len(train)), cfg.meta_seed)
    normalize = Normalize(CIFAR_MEAN[classes], CIFAR_STD[classes])
    train_tf = CifarTrainTransform(classes, padding=max(1, size // 8))
    return NoisyTask(
        train_source=train.images,
        test_source=test.images,
        test_labels=test.labels,
        noisy_labels=torch.from_numpy(np.array(noise.noisy)),
        clean_labels=train.labels,
        num_classes=classes,
        meta_source=train.images[meta_idx],
        meta_labels=train.labels[meta_idx],
        meta_indices=meta_idx,
        train_indices=rest_idx,
        train_transform=train_tf,
        eval_transform=normalize,
        batch_transform=normalize,
        noise=noise,
    )
