"""Compatibility fix for timm's RandAugment on current Pillow.

The timm/DeiT recipe string `rand-m9-mstd0.5-inc1` asks Pillow to posterize to 0 bits whenever the sampled magnitude
reaches 10 (about one image in 650, so in every ImageNet epoch). Current Pillow (13.x) raises there; the Pillow of the
papers' era returned a black image. `allow_zero_bit_posterize` restores that behaviour for timm's posterize ops.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageOps

__all__ = ["allow_zero_bit_posterize", "posterize"]


def posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize op with the result older Pillow gave for 0 bits: every channel value & 0, a black image."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def allow_zero_bit_posterize() -> None:
    """Make timm's (Rand/Auto)Augment posterize ops accept 0 bits on any Pillow (idempotent; affects transforms
    built afterwards)."""
    from timm.data import auto_augment

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        auto_augment.NAME_TO_OP[name] = posterize
