"""anm's data set-up: CIFAR-10/100 (real, or the synthetic set in the real pickle layout), scikit-learn's digits in
the CIFAR layout, Clothing1M, the noisy labels (DivideMix protocol), and SANM's per-item views.

Everything is read through :mod:`shared.noisy.data` (official layouts). Views (README, "Method"):

* ``released`` (CIFAR): six views per item, as the released ``dataloader_cifar.py``: two crop + flip +
  AutoAugment-CIFAR10 views (``xp``, ``xp2``, mixed), two crop + flip + RandAugment(2 ops, magnitude in [1, 10),
  each op with probability 0.5) + Cutout(H/2) views (``xs1``, ``xs2``, mixed), and two crop + flip + AutoAugment
  views (``x``, ``x2``: co-refinement / co-guessing, attention and masking). Warm-up: ColorJitter(0.4, 0.4, 0.4,
  0.4) + crop + flip + RandomAffine(15 deg, translate 0.1, scale 2/3..3/2, shear 0.1).
  Clothing1M: DivideMix's two views (Resize 256, RandomCrop 224, flip) as the released script.
* ``weak``: DivideMix's two crop + flip views (the embedded default and the CPU evidence: the released views cost
  about 1 ms per image per view on one CPU thread).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from shared.label_noise import NoisyLabels
from shared.noisy.data import (
    CifarTrainTransform,
    NoisyDataConfig,
    NoisyTaskBase,
    cifar_noise,
    cifar_normalize,
    clothing1m_splits,
    clothing1m_task_fields,
    load_cifar_task,
    noise_path,
    save_noise,
    write_digits_cifar,
)

__all__ = [
    "DataConfig",
    "NoisyTask",
    "RandAugmentMC",
    "build_task",
    "noise_path",
    "sanm_views",
    "save_noise",
]


@dataclass
class DataConfig(NoisyDataConfig):
    """Dataset, noise (:class:`shared.noisy.data.NoisyDataConfig`) and views."""

    dataset: Literal["cifar10", "cifar100", "clothing1m", "digits"] = "cifar10"
    root: str | None = field(
        default=None, metadata={"help": "dataset root; null = the embedded synthetic CIFAR set (digits: generated)"}
    )
    views: Literal["released", "weak"] = field(
        default="released",
        metadata={"help": "released: SANM's 6 CIFAR views (AutoAugment/RandAugment); weak: 2 crop+flip"},
    )
    hflip: bool = field(default=True, metadata={"help": "horizontal flips in the weak views (off for digits)"})
    crop_padding: int | None = field(
        default=None, metadata={"help": "weak views' crop padding (null: image_size // 8; 0: no crop)"}
    )


@dataclass
class NoisyTask(NoisyTaskBase):
    """What the trainer needs: images, labels and the transforms."""

    views: dict[str, list[Callable]]
    val_source: Any = None
    val_labels: torch.Tensor | None = None
    noise: NoisyLabels | None = None


# ----------------------------------------------------------------------------------------------- views
class RandAugmentMC:
    """FixMatch-style RandAugment on a uint8 ``C x H x W`` tensor: ``n`` random ops, each applied with probability
    0.5 at a random magnitude in [1, m), then Cutout of a ``cutout`` x ``cutout`` square (gray fill).

    Draws come from torch's global generator (seeded per run, saved in checkpoints)."""

    OPS = (
        "autocontrast",
        "brightness",
        "color",
        "contrast",
        "equalize",
        "identity",
        "posterize",
        "rotate",
        "sharpness",
        "shear_x",
        "shear_y",
        "solarize",
        "translate_x",
        "translate_y",
    )

    def __init__(self, n: int = 2, m: int = 10, cutout: int = 16):
        self.n, self.m, self.cutout = n, m, cutout

    def _apply(self, op: str, img: torch.Tensor, v: float) -> torch.Tensor:
        size = img.shape[-1]
        factor = 0.05 + 0.9 * v  # enhance ops: factor in [0.05, 0.95] + 0.5 offset below
        if op == "autocontrast":
            return TF.autocontrast(img)
        if op == "brightness":
            return TF.adjust_brightness(img, factor + 0.5)
        if op == "color":
            return TF.adjust_saturation(img, factor + 0.5)
        if op == "contrast":
            return TF.adjust_contrast(img, factor + 0.5)
        if op == "equalize":
            return TF.equalize(img)
        if op == "posterize":
            return TF.posterize(img, int(4 + 4 * (1 - v)))
        if op == "rotate":
            return TF.rotate(img, 30 * v * self._sign())
        if op == "sharpness":
            return TF.adjust_sharpness(img, factor + 0.5)
        if op in ("shear_x", "shear_y"):
            shear = math.degrees(math.atan(0.3 * v)) * self._sign()
            return TF.affine(
                img, angle=0.0, translate=[0, 0], scale=1.0, shear=[shear, 0.0] if op == "shear_x" else [0.0, shear]
            )
        if op == "solarize":
            return TF.solarize(img, int(256 - 256 * v))
        if op in ("translate_x", "translate_y"):
            shift = round(0.3 * v * size) * self._sign()
            return TF.affine(
                img, angle=0.0, translate=[shift, 0] if op == "translate_x" else [0, shift], scale=1.0, shear=[0.0, 0.0]
            )
        return img

    @staticmethod
    def _sign() -> int:
        return 1 if bool(torch.rand(()) < 0.5) else -1

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        for i in torch.randint(0, len(self.OPS), (self.n,)).tolist():
            magnitude = float(torch.randint(1, self.m, ()))
            if bool(torch.rand(()) < 0.5):
                img = self._apply(self.OPS[i], img, magnitude / self.m)
        if self.cutout:
            h, w = img.shape[-2:]
            cy, cx = (int(v) for v in (torch.randint(0, h, ()), torch.randint(0, w, ())))
            top, left = max(0, cy - self.cutout // 2), max(0, cx - self.cutout // 2)
            img = img.clone()
            img[..., top : top + self.cutout, left : left + self.cutout] = 127
        return img


class _CropFlip:
    """Random crop (zero padding) + flip on a uint8 tensor, then an optional uint8 op, then normalisation."""

    def __init__(self, num_classes: int, size: int, op: Callable | None = None, hflip: bool = True):
        self.pad = max(1, size // 8)
        self.hflip = hflip
        self.op = op
        self.normalize = cifar_normalize(num_classes)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        padded = torch.nn.functional.pad(image, (self.pad,) * 4)
        top, left = (int(v) for v in torch.randint(0, 2 * self.pad + 1, (2,)))
        image = padded[..., top : top + h, left : left + w]
        if self.hflip and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        if self.op is not None:
            image = self.op(image)
        return self.normalize(image)


def sanm_views(
    num_classes: int, size: int, kind: str, hflip: bool = True, padding: int | None = None
) -> dict[str, list[Callable]]:
    """The per-item views of each loader role (``warmup``, ``labeled``, ``unlabeled``) for CIFAR-layout data.

    ``released``: ``[xp, xp2, xs1, xs2, x, x2]`` for labeled and unlabeled items (mixed: 0-3; guessing: 4, 5);
    ``weak``: two crop + flip views (mixed and guessing: 0, 1) with crop ``padding`` (None: ``size // 8``, at
    least 1, DivideMix's 4 at 32 px; 0 and ``hflip=False``: no augmentation)."""
    weak = CifarTrainTransform(num_classes, padding=max(1, size // 8) if padding is None else padding, hflip=hflip)
    if kind == "weak":
        return {"warmup": [weak], "labeled": [weak, weak], "unlabeled": [weak, weak]}
    if kind != "released":
        raise ValueError(f"views must be 'released' or 'weak', got {kind!r}")
    auto = _CropFlip(num_classes, size, T.AutoAugment(T.AutoAugmentPolicy.CIFAR10))
    rand = _CropFlip(num_classes, size, RandAugmentMC(2, 10, cutout=size // 2))
    warm = _CropFlip(
        num_classes,
        size,
        T.Compose(
            [
                T.ColorJitter(0.4, 0.4, 0.4, 0.4),
                T.RandomAffine(15, translate=(0.1, 0.1), scale=(2 / 3, 3 / 2), shear=(-0.1, 0.1, -0.1, 0.1)),
            ]
        ),
    )
    six = [auto, auto, rand, rand, auto, auto]
    return {"warmup": [warm], "labeled": six, "unlabeled": six}


# ----------------------------------------------------------------------------------------------- datasets
def _clothing1m_task(cfg: DataConfig) -> NoisyTask:
    train, val, test = clothing1m_splits(cfg.root, ("train", "val", "test"))
    fields = clothing1m_task_fields(train, test)
    train_tf = fields["train_transform"]
    return NoisyTask(
        **fields,
        views={"warmup": [train_tf], "labeled": [train_tf, train_tf], "unlabeled": [train_tf, train_tf]},
        val_source=val,
        val_labels=val.labels,
    )


DIGITS_TEST_SIZE = 600  # the README's split of scikit-learn's 1 797 digits: 1 197 train / 600 test


def _digits_root(cfg: DataConfig) -> Path:
    """scikit-learn's digits in the CIFAR-10 layout (bilinear upsampling), under ``cfg.root`` or the synthetic root."""
    from shared.synthetic import synthetic_root

    return write_digits_cifar(
        cfg.root or synthetic_root() / "anm_digits", test_size=DIGITS_TEST_SIZE, upsample="bilinear"
    )


def build_task(cfg: DataConfig, run_dir: Path | None, write_noise: bool = True) -> NoisyTask:
    """Load the dataset and its noisy labels (drawn once, persisted; a noise file of another recipe is refused).

    With ``write_noise=False`` nothing is written (a missing noise file is drawn in memory; :func:`save_noise`
    persists it once the run folder is claimed).
    """
    if cfg.dataset == "clothing1m":
        return _clothing1m_task(cfg)
    classes = 100 if cfg.dataset == "cifar100" else 10
    root = _digits_root(cfg) if cfg.dataset == "digits" else None
    fields = load_cifar_task(
        cfg, "anm", classes, lambda clean: cifar_noise(clean, cfg, classes, run_dir, write_noise), root
    )
    views = sanm_views(classes, cfg.image_size, cfg.views, cfg.hflip, cfg.crop_padding)
    return NoisyTask(**fields, train_transform=views["warmup"][0], views=views)
