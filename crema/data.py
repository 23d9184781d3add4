"""CREMA's data set-up: CIFAR-10/100 (real or synthetic), scikit-learn digits in the CIFAR layout, Clothing1M and
the optional IMDB text path, each with its noisy labels (DivideMix protocol, drawn once and persisted).

Images are read through :mod:`shared.noisy.data` (official layouts). ``dataset: digits`` writes scikit-learn's
1 797 real handwritten digits (8 x 8, 17 grey levels) as CIFAR-10 pickles with the engine's writer
:func:`shared.noisy.data.write_digits_cifar` (grey -> RGB, each pixel repeated 4 x 4; a seeded permutation, the last
``digits_test_size`` images form the test batch) under ``synthetic_root()/crema_digits_*`` and reads them back with
:func:`shared.noisy.data.load_cifar` (``image_size: 8``). Digits asymmetric noise
uses the map 2 -> 7, 3 -> 8, 5 <-> 6, 7 -> 1 (README, Evidence).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crema.config import DataConfig
from shared.label_noise import NoisyLabels, asymmetric_noise, load_noisy_labels, symmetric_noise
from shared.noisy.data import (
    CifarTrainTransform,
    NoisyTaskBase,
    clothing1m_splits,
    clothing1m_task_fields,
    load_cifar_task,
    noise_path,
    noisy_labels_for,
    save_noise,
    write_digits_cifar,
)

__all__ = [
    "DIGITS_ASYMMETRIC_MAP",
    "NoisyTask",
    "build_task",
    "draw_noise",
    "noise_path",
    "save_noise",
]

#: Digit confusions used as asymmetric noise (the fact sheet's offline check): 2->7, 3->8, 5<->6, 7->1.
DIGITS_ASYMMETRIC_MAP = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}


@dataclass
class NoisyTask(NoisyTaskBase):
    """What the trainer needs: sources (tensors or indexable datasets), labels, transforms."""

    noise: NoisyLabels | None = None
    vocab_size: int | None = None  # text only


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _mapped_noise(clean: np.ndarray, cfg: DataConfig, mapping: dict[int, int], path: Path | None) -> NoisyLabels:
    """Noise with an explicit class map (digits asym, binary flips), persisted and re-read like noisy_labels_for."""
    if path is not None and path.is_file():
        loaded = load_noisy_labels(path, expected_length=len(clean))
        if not np.array_equal(loaded.clean, clean):
            raise ValueError(f"{path}: its clean labels differ from the dataset's; delete it to draw new noise")
        if (loaded.noise_type, float(loaded.rate), int(loaded.seed)) != ("asymmetric", cfg.noise_rate, cfg.noise_seed):
            raise ValueError(
                f"{path} holds {loaded.noise_type} noise at rate {loaded.rate} (seed {loaded.seed}), not the "
                f"asked-for mapped noise at rate {cfg.noise_rate} (seed {cfg.noise_seed}); it is not reused"
            )
        return loaded
    return asymmetric_noise(clean, cfg.noise_rate, dataset=None, seed=cfg.noise_seed, mapping=mapping)


def draw_noise(clean: torch.Tensor, cfg: DataConfig, num_classes: int, path: Path | None) -> NoisyLabels:
    """The run's noisy labels (read from ``path`` when it exists; the caller persists a new draw).

    CIFAR: :func:`shared.noisy.data.noisy_labels_for` (DivideMix protocol). Digits asym: the digit map. IMDB
    (2 classes): sym = DivideMix protocol (flip rate r/2) or, with ``binary_noise: flip``, every selected review
    gets the other label (flip rate r); asym is refused (it is the same as ``flip`` for 2 classes).
    """
    array = clean.numpy().astype(np.int64)
    if cfg.dataset == "digits" and cfg.noise_type == "asym":
        return _mapped_noise(array, cfg, DIGITS_ASYMMETRIC_MAP, path)
    if cfg.dataset == "imdb":
        if cfg.noise_type == "asym":
            raise ValueError("imdb has 2 classes: use noise_type sym with binary_noise 'flip' for class flips")
        if cfg.binary_noise == "flip":
            return _mapped_noise(array, cfg, {0: 1, 1: 0}, path)
    if cfg.noise_type == "sym" and num_classes not in (10, 100):
        if path is not None and path.is_file():
            return noisy_labels_for(array, "sym", cfg.noise_rate, num_classes, cfg.noise_seed, path)
        return symmetric_noise(array, cfg.noise_rate, num_classes, seed=cfg.noise_seed)
    readable = path if path is not None and path.is_file() else None
    return noisy_labels_for(array, cfg.noise_type, cfg.noise_rate, num_classes, cfg.noise_seed, readable)


def _digits_root(cfg: DataConfig) -> Path:
    from shared.synthetic import synthetic_root

    root = synthetic_root() / f"crema_digits_t{cfg.digits_test_size}_s{cfg.digits_split_seed}"
    return write_digits_cifar(root, cfg.digits_test_size, cfg.digits_split_seed)


def _text_task(cfg: DataConfig, run_dir: Path | None) -> NoisyTask:
    from crema.text import Vocabulary, encode, load_acl_imdb, write_synthetic_acl_imdb
    from shared.synthetic import synthetic_root

    root = cfg.root
    if root is None:
        folder = synthetic_root() / f"crema_imdb_n{cfg.synthetic_train_size}_t{cfg.synthetic_test_size}"
        root = write_synthetic_acl_imdb(folder, cfg.synthetic_train_size, cfg.synthetic_test_size, seed=0)
    train, test = load_acl_imdb(root, "train"), load_acl_imdb(root, "test")
    vocab = Vocabulary.build(train.texts, cfg.vocab_size, cfg.min_freq)
    noise = draw_noise(train.labels, cfg, 2, noise_path(cfg, run_dir))
    return NoisyTask(
        train_source=encode(train.texts, vocab, cfg.max_len),
        test_source=encode(test.texts, vocab, cfg.max_len),
        test_labels=test.labels,
        noisy_labels=torch.from_numpy(np.array(noise.noisy)),
        clean_labels=train.labels,
        num_classes=2,
        train_transform=_identity,
        eval_transform=_identity,
        noise=noise,
        vocab_size=len(vocab),
    )


def build_task(cfg: DataConfig, run_dir: Path | None) -> NoisyTask:
    """Load the dataset and its noisy labels. An existing noise file is read and must match the dataset and the
    noise recipe (type, rate, seed); nothing is written here (:func:`save_noise` persists a new draw)."""
    if cfg.dataset == "clothing1m":
        return NoisyTask(**clothing1m_task_fields(*clothing1m_splits(cfg.root, ("train", "test"))))
    if cfg.dataset == "imdb":
        return _text_task(cfg, run_dir)
    classes = 100 if cfg.dataset == "cifar100" else 10
    root = _digits_root(cfg) if cfg.dataset == "digits" and cfg.root is None else None
    fields = load_cifar_task(
        cfg, "crema", classes, lambda clean: draw_noise(clean, cfg, classes, noise_path(cfg, run_dir)), root
    )
    padding = cfg.crop_padding
    if padding is None:
        padding = 4 if cfg.image_size >= 32 else max(1, cfg.image_size // 8)
    return NoisyTask(**fields, train_transform=CifarTrainTransform(classes, padding=padding, hflip=cfg.hflip))
