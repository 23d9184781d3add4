"""Synthetic MVTec 3D-AD tree for the embedded default (raw scans: objects on a tilted background plane).

Three object classes are rendered as organised point clouds (a height field over a tilted table plane, seen from
above, 1 mm pixel pitch, ~0.45 m from the sensor, depth noise) with a Lambert-shaded, textured RGB image:

* ``cookie``: a flat disc with rounded rim, brown with dark chocolate chips;
* ``bagel``: a torus, golden with pale sesame speckles;
* ``potato``: a lumpy ellipsoid, yellow-brown with dark eyes.

Pose (shift, rotation, scale), surface relief and texture vary per sample; the table plane has the fixed tilt of
one scanner rig (``RIG_TILT``) up to a small per-scan jitter. Test defects, with pixel masks:

* geometric (xyz; visible in RGB only through shading): ``bump`` (Gaussian +5..8 mm, sigma 6..9 mm), ``dent``
  (the same, -5..8 mm), ``crack`` (a 3-segment polyline, 3-5 px wide, 4..6 mm deep);
* colour-only (rgb): ``stain`` (a soft blob of a saturated colour that no class has, no geometry change).

Files follow MVTec 3D-AD: ``<class>/train/good/{rgb,xyz}``, ``<class>/test/<good|defect>/{rgb,xyz,gt}``; xyz tiffs
are H x W x 3 float32 in metres. The background plane is still there: ``python -m lsfa.preprocess`` (RANSAC plane
removal, padding, DBSCAN) turns the tree into what M3DM / LSFA read, exactly as for the real data.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

from shared.synthetic import synthetic_root
from shared.synthetic._cache import write_cached

__all__ = ["DEFECTS", "SYNTHETIC_CLASSES", "ensure_synthetic_mvtec3d", "render_sample", "write_synthetic_mvtec3d"]

SYNTHETIC_CLASSES = ("bagel", "cookie", "potato")
DEFECTS = ("bump", "crack", "dent", "stain")
PITCH = 0.001  # metres per pixel (keeps the DBSCAN eps of 6 mm at 6 px: fast preprocessing)
DISTANCE = 0.45  # sensor to table, metres
RIG_TILT = (0.04, -0.024)  # table-plane slope (dz/dx, dz/dy) of the fixed scanner rig
TILT_JITTER = 0.004  # per-scan deviation from it (uniform, each axis)
VERSION = 4


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return field / (field.std() + 1e-12)


def _spots(
    rng: np.random.Generator, size: int, inside: np.ndarray, count: int, radius: tuple[float, float]
) -> np.ndarray:
    """Soft round spots (0..1) at random places inside a mask."""
    ys, xs = np.nonzero(inside)
    pick = rng.choice(len(ys), size=count, replace=False)
    v, u = np.mgrid[:size, :size]
    out = np.zeros((size, size))
    for y, x in zip(ys[pick], xs[pick], strict=True):  # a handful of spots per image
        r = rng.uniform(*radius)
        out = np.maximum(out, np.clip(1.5 - np.hypot(v - y, u - x) / r, 0, 1))
    return out


def _object(rng: np.random.Generator, name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Height field (metres) and albedo (H, W, 3) of one object instance."""
    c = size / 2 + rng.uniform(-4, 4, 2)
    angle, scale = rng.uniform(-0.2, 0.2), rng.uniform(0.97, 1.03)
    v, u = np.mgrid[:size, :size].astype(np.float64)
    dy, dx = (v - c[0]) / scale, (u - c[1]) / scale
    ry, rx = dy * np.cos(angle) - dx * np.sin(angle), dy * np.sin(angle) + dx * np.cos(angle)
    relief = _smooth_noise(rng, size, 12)
    texture = _smooth_noise(rng, size, 2)
    if name == "cookie":
        rho = np.hypot(ry, rx)
        height = 0.011 * np.clip((78 - rho) / 8, 0, 1) ** 0.5 + 0.0002 * relief * (rho < 78)
        base = np.array([0.62, 0.42, 0.22])
        spot_colour, spots = np.array([0.22, 0.12, 0.06]), (14, (3.0, 5.0))
    elif name == "bagel":
        rho = np.hypot(ry, rx)
        tube = np.clip(26.0**2 - (rho - 58) ** 2, 0, None)
        height = 0.6 * PITCH * np.sqrt(tube) + 0.00015 * relief * (tube > 0)
        base = np.array([0.78, 0.56, 0.25])
        spot_colour, spots = np.array([0.95, 0.9, 0.75]), (40, (1.5, 2.5))
    elif name == "potato":
        e = (ry / 82) ** 2 + (rx / 62) ** 2
        height = 0.024 * np.sqrt(np.clip(1 - e, 0, None)) + 0.0003 * relief * (e < 1)
        base = np.array([0.72, 0.6, 0.35])
        spot_colour, spots = np.array([0.35, 0.25, 0.12]), (8, (2.5, 4.0))
    else:
        raise ValueError(f"unknown synthetic class {name!r}; choose from {SYNTHETIC_CLASSES}")
    height = np.clip(height, 0, None)
    inside = height > 0.002
    albedo = base[None, None] * (1 + 0.06 * texture[..., None])
    spot = _spots(rng, size, ndimage.binary_erosion(inside, iterations=6), spots[0], spots[1])
    albedo = albedo * (1 - spot[..., None]) + spot_colour * spot[..., None]
    return height, albedo


def _defect(
    rng: np.random.Generator, kind: str, height: np.ndarray, albedo: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    size = height.shape[0]
    inner = ndimage.binary_erosion(height > 0.004, iterations=14)
    ys, xs = np.nonzero(inner)
    k = rng.integers(len(ys))
    cy, cx = ys[k], xs[k]
    v, u = np.mgrid[:size, :size].astype(np.float64)
    height, albedo = height.copy(), albedo.copy()
    if kind in ("bump", "dent"):
        sigma = rng.uniform(6.0, 9.0)
        amplitude = rng.uniform(0.005, 0.008) * (1 if kind == "bump" else -1)
        r = np.hypot(v - cy, u - cx)
        height += amplitude * np.exp(-0.5 * (r / sigma) ** 2)
        mask = r < 1.7 * sigma
    elif kind == "crack":
        points = [np.array([cy, cx], float)]
        direction = rng.uniform(0, 2 * np.pi)
        for _ in range(3):
            direction += rng.uniform(-0.7, 0.7)
            points.append(points[-1] + rng.uniform(10, 16) * np.array([np.sin(direction), np.cos(direction)]))
        dist = np.full((size, size), np.inf)
        for a, b in itertools.pairwise(points):  # three segments
            ab = b - a
            t = np.clip(((v - a[0]) * ab[0] + (u - a[1]) * ab[1]) / (ab @ ab), 0, 1)
            dist = np.minimum(dist, np.hypot(v - a[0] - t * ab[0], u - a[1] - t * ab[1]))
        width = rng.uniform(1.5, 2.5)
        depth = rng.uniform(0.004, 0.006)
        height -= depth * np.clip(1.5 - dist / width, 0, 1).clip(max=1)
        mask = (dist < width + 0.5) & (height > -1)
    elif kind == "stain":
        colour = np.array([[0.1, 0.35, 0.85], [0.15, 0.7, 0.2], [0.75, 0.1, 0.6]])[rng.integers(3)]
        ry, rx = rng.uniform(6, 10, 2)
        e = ((v - cy) / ry) ** 2 + ((u - cx) / rx) ** 2
        alpha = 0.85 * np.clip((1.2 - e) / 0.4, 0, 1)
        albedo = albedo * (1 - alpha[..., None]) + colour * alpha[..., None]
        mask = e < 1.0
    else:
        raise ValueError(f"unknown defect {kind!r}; choose from {DEFECTS}")
    return height, albedo, mask & (height > 0) | (mask & (kind == "stain"))


def render_sample(
    rng: np.random.Generator, name: str, defect: str | None, size: int = 240
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One raw scan: xyz (H, W, 3) float32 metres, rgb (H, W, 3) uint8, mask (H, W) bool."""
    height, albedo = _object(rng, name, size)
    mask = np.zeros((size, size), bool)
    if defect is not None:
        height, albedo, mask = _defect(rng, defect, height, albedo)
    v, u = np.mgrid[:size, :size].astype(np.float64)
    x, y = (u - size / 2) * PITCH, (v - size / 2) * PITCH
    # One fixed scanner rig, as MVTec 3D-AD: the table's tilt is the same in every scan up to a small jitter. (Version
    # 3 drew +-0.08 per scan, which tilts every local surface as much as a 5 mm bump does: see README.)
    tilt = np.asarray(RIG_TILT) + rng.uniform(-TILT_JITTER, TILT_JITTER, 2)
    z = DISTANCE + tilt[0] * x + tilt[1] * y - height + rng.normal(0, 5e-5, (size, size))
    gy, gx = np.gradient(height, PITCH)
    normal = np.stack([gx, gy, np.ones_like(gx)], -1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.array([0.7, -0.6, 0.8]) / np.linalg.norm([0.7, -0.6, 0.8])  # grazing light: relief shows
    shading = 0.25 + 0.9 * np.clip(normal @ light, 0, 1)
    table = np.array([0.45, 0.46, 0.48]) * (1 + 0.04 * _smooth_noise(rng, size, 3))[..., None]
    colour = np.where((height > 1e-4)[..., None], albedo, table) * shading[..., None]
    colour = colour + rng.normal(0, 0.01, colour.shape)
    rgb = (np.clip(colour, 0, 1) * 255).round().astype(np.uint8)
    xyz = np.stack([x, y, z], -1).astype(np.float32)
    return xyz, rgb, mask


def write_synthetic_mvtec3d(
    root: str | Path,
    classes: tuple[str, ...] = SYNTHETIC_CLASSES,
    num_train: int = 20,
    num_test_good: int = 8,
    num_test_per_defect: int = 4,
    size: int = 240,
    seed: int = 0,
) -> None:
    """Write the raw synthetic tree into ``root`` (no caching; see :func:`ensure_synthetic_mvtec3d`)."""
    root = Path(root)
    for ci, name in enumerate(classes):
        rng = np.random.default_rng([seed, ci])
        jobs = [("train", "good", None, i) for i in range(num_train)]
        jobs += [("test", "good", None, i) for i in range(num_test_good)]
        jobs += [("test", d, d, i) for d in DEFECTS for i in range(num_test_per_defect)]
        for split, folder, defect, i in jobs:
            xyz, rgb, mask = render_sample(rng, name, defect, size)
            target = root / name / split / folder
            for sub in ("rgb", "xyz") + (("gt",) if split == "test" else ()):
                (target / sub).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(target / "xyz" / f"{i:03d}.tiff", xyz, photometric="rgb")
            Image.fromarray(rgb).save(target / "rgb" / f"{i:03d}.png")
            if split == "test":
                Image.fromarray(mask.astype(np.uint8) * 255).save(target / "gt" / f"{i:03d}.png")


def ensure_synthetic_mvtec3d(root: str | Path | None = None, preprocess: bool = True, **params) -> Path:
    """Write (once, cached) the raw synthetic tree and, with ``preprocess``, its preprocessed copy; return the root
    to read (``<synthetic_root>/lsfa_mvtec3d[_preprocessed]``). Regenerated only when the parameters change."""
    from lsfa.preprocess import PREPROCESSOR_VERSION, preprocess_mvtec3d

    raw = Path(root) if root is not None else synthetic_root() / "lsfa_mvtec3d"
    full = {"generator": "lsfa.synthetic", "version": VERSION, **params}
    write_cached(raw, full, lambda folder: write_synthetic_mvtec3d(folder, **params))
    if not preprocess:
        return raw
    done = raw.parent / (raw.name + "_preprocessed")
    write_cached(done, {**full, "preprocessed": PREPROCESSOR_VERSION}, lambda folder: preprocess_mvtec3d(raw, folder))
    return done
