"""Synthetic COCO 2017-format detection set: ``train2017/``, ``val2017/``, ``annotations/instances_*2017.json``.

Each category is a shape (circle, square, triangle, star, cross, crescent, arrow, hexagon, heart, tee) with its own
base hue, so objects are distinguishable by outline and colour. Objects are drawn on a textured, cluttered
background, never overlap, and lie fully inside the image, so the stored polygon *is* the object's mask:
``segmentation`` is that polygon, ``bbox`` its extent (xywh) and ``area`` its shoelace area.

Sizes cover the three COCO area ranges: the first three objects of every image are one small (area < 32^2), one
medium and one large (area > 96^2, when the image allows it: the largest box side is half the image height); the
others are drawn log-uniformly. Category ids are not contiguous (1, 2, 3, 5, 6, 7, 9, ...), as in real COCO, so
loaders must map them. Images are ``image_size`` pixels high and ``image_size`` or ``1.25 * image_size`` wide.

With ``num_unlabeled > 0`` an ``unlabeled2017/`` folder and ``annotations/image_info_unlabeled2017.json`` (info,
licenses, images; no annotations) are written as well, like COCO's unlabeled2017 release.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shared.synthetic._cache import write_cached
from shared.synthetic._draw import (
    cluttered_background,
    polygon_area,
    polygon_mask,
    random_colour,
    texture,
    to_uint8,
    transform,
)

__all__ = ["COCO_SHAPES", "coco_category_id", "write_coco_detection"]

_VERSION = 1
COCO_SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "crescent",
    "arrow",
    "hexagon",
    "heart",
    "tee",
)
_UNIT_AREA = {name: polygon_area(transform(name, (0.0, 0.0), 1.0, 0.0)) for name in COCO_SHAPES}
_SMALL, _LARGE = 32**2, 96**2
_SPLITS = {"train2017": 0, "val2017": 1, "unlabeled2017": 2}
_INFO = {
    "description": "Synthetic COCO-format detection set (shared.synthetic.coco)",
    "url": "",
    "version": "1.0",
    "year": 2017,
    "contributor": "shared.synthetic",
    "date_created": "2017/09/01",
}
_LICENSES = [{"id": 1, "name": "Synthetic data, no restrictions", "url": ""}]


def coco_category_id(index: int) -> int:
    """Category id of the ``index``-th category: 1, 2, 3, 5, 6, 7, 9, ... (gaps like real COCO ids)."""
    return index + 1 + index // 3


def _categories(num_categories: int) -> list[dict[str, Any]]:
    return [
        {"id": coco_category_id(k), "name": COCO_SHAPES[k], "supercategory": "shape"} for k in range(num_categories)
    ]


def _overlaps(box: tuple[float, float, float, float], boxes: list[tuple[float, float, float, float]]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < bx1 + 2 and bx0 < x1 + 2 and y0 < by1 + 2 and by0 < y1 + 2 for bx0, by0, bx1, by1 in boxes)


def _target_areas(rng: np.random.Generator, count: int, max_area: float) -> list[float]:
    """Areas for ``count`` objects: one per COCO range first (large first, as it is hardest to place), then any."""

    def log_uniform(low: float, high: float) -> float:
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))

    areas = [log_uniform(1.08 * _LARGE, max_area)] if max_area > 1.1 * _LARGE else []
    areas += [log_uniform(1.15 * _SMALL, 0.9 * _LARGE), log_uniform(40.0, 0.9 * _SMALL)]
    areas += [log_uniform(40.0, 0.8 * max_area) for _ in range(count - len(areas))]
    return areas


def _draw_image(
    rng: np.random.Generator, image_size: int, num_categories: int, hues: np.ndarray
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    height = image_size
    width = image_size if rng.uniform() < 0.5 else round(1.25 * image_size)
    image = cluttered_background(rng, height, width, lines=int(rng.integers(4, 10)))
    overlay = texture(str(rng.choice(["stripes", "checker"])), height, width, rng, scale=height / 64)
    image = np.clip(image + 0.06 * (overlay[..., None] - 0.5), 0, 1)
    max_radius = min(height, width) / 4  # box side <= half the image
    count = int(rng.integers(3, 7))
    objects: list[dict[str, Any]] = []
    boxes: list[tuple[float, float, float, float]] = []
    for area in _target_areas(rng, count, max_area=max(_UNIT_AREA.values()) * max_radius**2):
        feasible = [k for k in range(num_categories) if _UNIT_AREA[COCO_SHAPES[k]] * max_radius**2 >= area]
        if not feasible:
            continue
        category = int(rng.choice(feasible))
        shape = COCO_SHAPES[category]
        radius = float(np.sqrt(area / _UNIT_AREA[shape]))
        for _ in range(40):  # rejection sampling of a free, fully visible position
            angle = rng.uniform(0, 2 * np.pi)
            outline = transform(shape, (0.0, 0.0), radius, angle)
            low, high = outline.min(0), outline.max(0)
            if (high - low)[0] >= width - 2 or (high - low)[1] >= height - 2:
                continue
            center = rng.uniform(-low + 1, np.array([width, height]) - high - 1)
            outline = outline + center
            box = (*outline.min(0), *outline.max(0))
            if not _overlaps(box, boxes):
                break
        else:
            continue
        boxes.append(box)
        x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
        x1, y1 = int(np.ceil(box[2])) + 1, int(np.ceil(box[3])) + 1
        mask = polygon_mask(outline - [x0, y0], y1 - y0, x1 - x0, supersample=2)
        colour = random_colour(
            rng, hue=hues[category] + rng.uniform(-0.03, 0.03), saturation=(0.6, 1.0), value=(0.45, 1.0)
        )
        pattern = texture(str(rng.choice(["solid", "stripes"])), y1 - y0, x1 - x0, rng)
        fill = pattern[..., None] * colour + (1 - pattern[..., None]) * colour * 0.6
        crop = image[y0:y1, x0:x1]
        image[y0:y1, x0:x1] = crop * (1 - mask[..., None]) + fill * mask[..., None]
        objects.append({"category_index": category, "polygon": outline})
    return to_uint8(image, rng, 0.02), objects


def _annotation(ann_id: int, image_id: int, obj: dict[str, Any]) -> dict[str, Any]:
    polygon = obj["polygon"]
    x0, y0 = polygon.min(0)
    x1, y1 = polygon.max(0)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": coco_category_id(obj["category_index"]),
        "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
        "area": round(polygon_area(polygon), 2),
        "iscrowd": 0,
        "segmentation": [[round(float(v), 2) for v in polygon.reshape(-1)]],
    }


def _image_entry(image_id: int, file_name: str, pixels: np.ndarray) -> dict[str, Any]:
    return {
        "id": image_id,
        "file_name": file_name,
        "width": int(pixels.shape[1]),
        "height": int(pixels.shape[0]),
        "license": 1,
        "date_captured": "2017-01-01 00:00:00",
    }


def _dump(path: Path, content: dict[str, Any]) -> None:
    with open(path, "w") as handle:
        json.dump(content, handle)


def write_coco_detection(
    root: str | Path,
    num_train: int = 24,
    num_val: int = 8,
    image_size: int = 320,
    num_categories: int = 6,
    num_unlabeled: int = 0,
    seed: int = 0,
) -> Path:
    """Write (or reuse) a synthetic COCO 2017-format detection set under ``root`` and return ``root``.

    Layout: ``root/train2017/*.jpg``, ``root/val2017/*.jpg``, ``root/annotations/instances_train2017.json``,
    ``instances_val2017.json`` (info, licenses, images, annotations, categories) and, if ``num_unlabeled > 0``,
    ``root/unlabeled2017/*.jpg`` + ``root/annotations/image_info_unlabeled2017.json``. Image and annotation ids are
    unique across splits. Deterministic and idempotent (``_SYNTHETIC.json`` marker).

    Args:
        root: dataset root.
        num_train: training images.
        num_val: validation images.
        image_size: image height in pixels (width is the same or 1.25x); at least 192 so that large objects fit.
        num_categories: 5..10 categories.
        num_unlabeled: images of the ``unlabeled2017`` split (0 = none).
        seed: base seed.
    """
    if not 5 <= num_categories <= len(COCO_SHAPES):
        raise ValueError(f"num_categories must be in [5, {len(COCO_SHAPES)}], got {num_categories}")
    if image_size < 192:
        raise ValueError(f"image_size must be >= 192 so that COCO 'large' objects (area > 96^2) fit, got {image_size}")
    if num_train < 1 or num_val < 1 or num_unlabeled < 0:
        raise ValueError("num_train and num_val must be >= 1 and num_unlabeled >= 0")
    params = {
        "generator": "shared.synthetic.coco",
        "version": _VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "num_categories": num_categories,
        "num_unlabeled": num_unlabeled,
        "seed": seed,
    }
    categories = _categories(num_categories)
    hues = np.arange(num_categories) / num_categories

    def write(folder: Path) -> None:
        (folder / "annotations").mkdir()
        image_id, ann_id = 1, 1
        for split, count in (("train2017", num_train), ("val2017", num_val), ("unlabeled2017", num_unlabeled)):
            if count == 0:
                continue
            (folder / split).mkdir()
            images, annotations = [], []
            for index in range(count):
                rng = np.random.default_rng([seed, _SPLITS[split], index])
                pixels, objects = _draw_image(rng, image_size, num_categories, hues)
                file_name = f"{image_id:012d}.jpg"
                Image.fromarray(pixels).save(folder / split / file_name, quality=92)
                images.append(_image_entry(image_id, file_name, pixels))
                for obj in objects:
                    annotations.append(_annotation(ann_id, image_id, obj))
                    ann_id += 1
                image_id += 1
            if split == "unlabeled2017":
                _dump(
                    folder / "annotations" / "image_info_unlabeled2017.json",
                    {"info": _INFO, "licenses": _LICENSES, "images": images},
                )
            else:
                _dump(
                    folder / "annotations" / f"instances_{split}.json",
                    {
                        "info": _INFO,
                        "licenses": _LICENSES,
                        "images": images,
                        "annotations": annotations,
                        "categories": categories,
                    },
                )

    return write_cached(root, params, write)
