"""Procedural ImageNet-style classification set: ``root/{train,val}/<class>/*.png``, readable by ``ImageFolder``.

Class ``c`` is a shape (circle, square, triangle, star, cross, ring, crescent, arrow, hexagon, heart, tee) filled
with a texture (solid, stripes, checker, dots): ``shape = c % 11``, ``texture = (c + c // 11) % 4``. The texture
alone is ambiguous (several classes share it) and the shape must be learned across colours, so both are needed.
Everything else is a nuisance drawn per image: colours of object and background, texture period and orientation,
scale, position, a rotation of up to 30 degrees, a smooth colour background with line clutter, a small distractor
shape of another type, and pixel noise. The set is learnable but not trivial: ``shared/tests/test_synthetic.py``
(slow tier) checks that a small CNN is below 80 % validation accuracy after a quarter of an epoch and above 80 %
after a few epochs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from shared.synthetic._cache import write_cached
from shared.synthetic._draw import TEXTURES, render_object_image

__all__ = ["IMAGEFOLDER_SHAPES", "imagefolder_class_names", "write_imagefolder"]

_VERSION = 1
IMAGEFOLDER_SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "crescent",
    "arrow",
    "hexagon",
    "heart",
    "tee",
)
_SPLITS = {"train": 0, "val": 1}


def _class_recipe(index: int) -> tuple[str, str]:
    # Texture alone is ambiguous (4 textures), shape alone is hard to learn: together they identify the class.
    shapes = len(IMAGEFOLDER_SHAPES)
    return IMAGEFOLDER_SHAPES[index % shapes], TEXTURES[(index + index // shapes) % len(TEXTURES)]


def imagefolder_class_names(num_classes: int) -> list[str]:
    """Folder names of the classes, in label order (sorted order equals label order, as ImageFolder requires)."""
    max_classes = len(IMAGEFOLDER_SHAPES) * len(TEXTURES)
    if not 2 <= num_classes <= max_classes:
        raise ValueError(f"num_classes must be in [2, {max_classes}], got {num_classes}")
    names = []
    for index in range(num_classes):
        shape, texture = _class_recipe(index)
        names.append(f"c{index:03d}_{shape}_{texture}")
    return names


def write_imagefolder(
    root: str | Path,
    num_classes: int = 10,
    train_per_class: int = 100,
    val_per_class: int = 25,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write (or reuse) a synthetic ImageFolder classification set under ``root`` and return ``root``.

    Layout: ``root/train/<class>/<class>_<i>.png`` and ``root/val/<class>/<class>_<i>.png`` plus the
    ``_SYNTHETIC.json`` marker. Deterministic: the same arguments give byte-identical files. A call whose arguments
    match the marker returns at once; different arguments regenerate the set.

    Args:
        root: dataset root (e.g. ``synthetic_root() / "imagefolder"``).
        num_classes: 2..44 classes (11 shapes x 4 textures).
        train_per_class: training images per class.
        val_per_class: validation images per class.
        image_size: side of the square RGB images, at least 16.
        seed: base seed; each image has its own generator seeded with (seed, split, class, index).
    """
    names = imagefolder_class_names(num_classes)
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError("train_per_class and val_per_class must be >= 1")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    params = {
        "generator": "shared.synthetic.imagefolder",
        "version": _VERSION,
        "num_classes": num_classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "image_size": image_size,
        "seed": seed,
    }

    def write(folder: Path) -> None:
        for split, per_class in (("train", train_per_class), ("val", val_per_class)):
            for label, name in enumerate(names):
                shape, texture = _class_recipe(label)
                class_dir = folder / split / name
                class_dir.mkdir(parents=True)
                for index in range(per_class):
                    rng = np.random.default_rng([seed, _SPLITS[split], label, index])
                    pixels = render_object_image(rng, image_size, shape, texture)
                    Image.fromarray(pixels).save(class_dir / f"{name}_{index:05d}.png")

    return write_cached(root, params, write)
