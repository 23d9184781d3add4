"""Procedural shapes, textures and cluttered backgrounds used by the synthetic writers.

Shapes are polygons in unit coordinates (centred, radius about 1), so the detection writer can store the exact
polygon it drew as the COCO segmentation. Everything is drawn from a caller-supplied ``numpy.random.Generator``.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw


def _regular(n: int, phase: float = 0.0, radius: float = 1.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    angles = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _crescent() -> np.ndarray:
    # Outer unit circle minus a circle of radius 0.85 centred at (0.45, 0); keep the left part.
    offset, inner = 0.45, 0.85
    x = (1 - inner**2 + offset**2) / (2 * offset)
    y = np.sqrt(1 - x**2)
    outer_start = np.arctan2(y, x)
    outer = np.linspace(outer_start, 2 * np.pi - outer_start, 32)
    inner_start = np.arctan2(-y, x - offset) + 2 * np.pi
    inner_end = np.arctan2(y, x - offset)
    inner_angles = np.linspace(inner_start, inner_end, 24)
    points = np.concatenate(
        [
            np.stack([np.cos(outer), np.sin(outer)], axis=1),
            np.stack([offset + inner * np.cos(inner_angles), inner * np.sin(inner_angles)], axis=1),
        ]
    )
    return points - (points.max(0) + points.min(0)) / 2


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    points = np.stack([x, y], axis=1)
    points -= (points.max(0) + points.min(0)) / 2
    return points / np.abs(points).max()


def _normalise(points: list[tuple[float, float]]) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    array -= (array.max(0) + array.min(0)) / 2
    return array / np.abs(array).max()


#: Polygon outlines; "ring" is drawn as a circle with a hole of radius ``RING_HOLE``.
SHAPES: dict[str, np.ndarray] = {
    "circle": _regular(48),
    "square": _regular(4, np.pi / 4),
    "triangle": _regular(3, -np.pi / 2),
    "star": _star(),
    "cross": _normalise(
        [
            (-0.33, -1),
            (0.33, -1),
            (0.33, -0.33),
            (1, -0.33),
            (1, 0.33),
            (0.33, 0.33),
            (0.33, 1),
            (-0.33, 1),
            (-0.33, 0.33),
            (-1, 0.33),
            (-1, -0.33),
            (-0.33, -0.33),
        ]
    ),
    "ring": _regular(48),
    "crescent": _crescent(),
    "arrow": _normalise([(-1, -0.3), (0.15, -0.3), (0.15, -0.75), (1, 0), (0.15, 0.75), (0.15, 0.3), (-1, 0.3)]),
    "hexagon": _regular(6),
    "heart": _heart(),
    "tee": _normalise(
        [(-1, -1), (1, -1), (1, -0.45), (0.28, -0.45), (0.28, 1), (-0.28, 1), (-0.28, -0.45), (-1, -0.45)]
    ),
}
RING_HOLE = 0.55
#: Shapes whose outline is a single simple polygon (usable as a COCO segmentation).
POLYGON_SHAPES: tuple[str, ...] = tuple(name for name in SHAPES if name != "ring")
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "dots")


def transform(shape: str, center: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """Return the outline of ``shape`` rotated by ``angle`` (radians), scaled to ``radius`` and moved to ``center``."""
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    return SHAPES[shape] @ rotation.T * radius + np.asarray(center)


def polygon_mask(
    outline: np.ndarray, height: int, width: int, hole: np.ndarray | None = None, supersample: int = 4
) -> np.ndarray:
    """Anti-aliased coverage mask (float32 in [0, 1], ``height`` x ``width``) of a polygon, optionally with a hole."""
    canvas = Image.new("L", (width * supersample, height * supersample), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon([tuple(p) for p in outline * supersample], fill=255)
    if hole is not None:
        draw.polygon([tuple(p) for p in hole * supersample], fill=0)
    return np.asarray(canvas.resize((width, height), Image.BOX), dtype=np.float32) / 255.0


def shape_mask(
    shape: str, size: int, center: tuple[float, float], radius: float, angle: float, supersample: int = 4
) -> np.ndarray:
    """Anti-aliased coverage mask (float32 in [0, 1], ``size`` x ``size``) of one shape."""
    hole = transform(shape, center, radius * RING_HOLE, angle) if shape == "ring" else None
    return polygon_mask(transform(shape, center, radius, angle), size, size, hole, supersample)


def polygon_area(points: np.ndarray) -> float:
    """Area of a simple polygon (shoelace formula)."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def texture(kind: str, height: int, width: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """Pattern in [0, 1] (``height`` x ``width``): 1 selects the first colour, 0 the second.

    The period is drawn from 4..9 pixels times ``scale`` (at least 3 pixels, to stay visible); orientation is
    random.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "solid":
        return np.ones((height, width), np.float32)
    period = max(3.0, rng.uniform(4.0, 9.0) * scale)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    if kind == "stripes":
        return (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
    if kind == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "dots":
        du = (u / period) % 1 - 0.5
        dv = (v / period) % 1 - 0.5
        return (du**2 + dv**2 > 0.09).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}; valid: {TEXTURES}")


def random_colour(
    rng: np.random.Generator,
    hue: float | None = None,
    saturation: tuple[float, float] = (0.4, 1.0),
    value: tuple[float, float] = (0.25, 1.0),
) -> np.ndarray:
    """RGB colour in [0, 1]; the hue is drawn uniformly unless given."""
    h = rng.uniform() if hue is None else hue % 1.0
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(*saturation), rng.uniform(*value)), dtype=np.float32)


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))


def contrasting_colour(
    rng: np.random.Generator, against: np.ndarray, min_luma_gap: float = 0.25, hue: float | None = None
) -> np.ndarray:
    """A random colour whose luma differs from ``against`` by at least ``min_luma_gap`` (best of 20 tries)."""
    best, best_gap = None, -1.0
    for _ in range(20):
        candidate = random_colour(rng, hue=None if hue is None else hue + rng.uniform(-0.03, 0.03))
        gap = abs(_luma(candidate) - _luma(against))
        if gap >= min_luma_gap:
            return candidate
        if gap > best_gap:
            best, best_gap = candidate, gap
    return best


def cluttered_background(
    rng: np.random.Generator, height: int, width: int, lines: int, base: np.ndarray | None = None
) -> np.ndarray:
    """Smooth colour field plus random line clutter, float32 ``(H, W, 3)`` in [0, 1]."""
    base = random_colour(rng, saturation=(0.0, 0.6)) if base is None else base
    blobs = rng.uniform(-0.25, 0.25, size=(4, 4, 3)).astype(np.float32)
    field = np.stack(
        [np.asarray(Image.fromarray(blobs[..., c]).resize((width, height), Image.BICUBIC)) for c in range(3)], axis=-1
    )
    canvas = Image.fromarray((np.clip(base + field, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(lines):
        points = [tuple(rng.uniform(0, [width, height])) for _ in range(2)]
        colour = tuple(int(c) for c in (random_colour(rng, saturation=(0, 0.8)) * 255))
        draw.line(points, fill=colour, width=int(rng.integers(1, max(2, min(height, width) // 24) + 1)))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def composite(
    image: np.ndarray, mask: np.ndarray, pattern: np.ndarray, colour: np.ndarray, second_colour: np.ndarray
) -> np.ndarray:
    """Paint ``colour``/``second_colour`` (chosen by ``pattern``) into ``image`` where ``mask`` covers it."""
    fill = pattern[..., None] * colour + (1 - pattern[..., None]) * second_colour
    return image * (1 - mask[..., None]) + fill * mask[..., None]


def to_uint8(image: np.ndarray, rng: np.random.Generator, noise_std: float) -> np.ndarray:
    """Add Gaussian pixel noise and quantise to uint8."""
    noisy = image + rng.normal(0.0, noise_std, size=image.shape).astype(np.float32)
    return (np.clip(noisy, 0, 1) * 255 + 0.5).astype(np.uint8)


def render_object_image(
    rng: np.random.Generator,
    size: int,
    shape: str,
    texture_kind: str,
    hue: float | None = None,
    distractors: int = 1,
    lines: int = 3,
    noise_std: float = 0.03,
    max_rotation: float = np.pi / 6,
) -> np.ndarray:
    """One classification image: a textured ``shape`` at random scale/rotation/position on a cluttered background.

    The object is rotated by up to ``max_rotation`` radians either way (objects are roughly upright, as in photos).

    Small distractor shapes of random other types are drawn first, so a classifier must pick the main object by its
    size. Returns uint8 ``(size, size, 3)``.
    """
    background = cluttered_background(rng, size, size, lines)
    image = background
    for _ in range(distractors):
        other = str(rng.choice([s for s in SHAPES if s != shape]))
        radius = rng.uniform(0.05, 0.1) * size
        center = tuple(rng.uniform(radius, size - radius, size=2))
        mask = shape_mask(other, size, center, radius, rng.uniform(0, 2 * np.pi))
        colour = random_colour(rng)
        image = composite(image, mask, np.ones((size, size), np.float32), colour, colour)
    radius = rng.uniform(0.28, 0.45) * size
    center = tuple(rng.uniform(radius * 0.9, size - radius * 0.9, size=2))
    mask = shape_mask(shape, size, center, radius, rng.uniform(-max_rotation, max_rotation))
    mean_background = background.reshape(-1, 3).mean(0)
    colour = contrasting_colour(rng, mean_background, hue=hue)
    second = np.clip(colour * rng.uniform(0.6, 0.8), 0, 1)
    image = composite(image, mask, texture(texture_kind, size, size, rng, scale=size / 64), colour, second)
    return to_uint8(image, rng, noise_std)
