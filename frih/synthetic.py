"""Synthetic iHarmony4-format tree from images shipped inside installed wheels (the embedded default's data).

Real images are random crops of scikit-image's colour photos (astronaut, coffee, chelsea, rocket,
immunohistochemistry, the Middlebury motorcycle), scikit-learn's two sample photos (china, flower) and scikit-image's
grey textures (brick, grass, gravel) tinted with a random colour. Each real image gets 1-2 foreground masks (an
ellipse, a random polygon, the scikit-image horse silhouette, or a Felzenszwalb segment of the image grown to a
target area; target foreground ratios spread over the 0-5 %, 5-15 % and 15-60 % bins) and 1-2 composites per mask:
the foreground of the real image after a random colour transfer (brightness, contrast, gamma, saturation, hue
rotation, white balance), pasted back with the binary mask. This mirrors how HCOCO/HFlickr were built (colour
transfer of a real image's foreground); the target is the real image.

The four subsets use the real naming schemes (HCOCO `c<id>_<fgid>_<k>.jpg`, HAdobe5k `a<id>_<j>_<k>.jpg`, HFlickr
`f<id>_<j>_<k>.jpg`, Hday2night `d<id>-<n>_<j>_<k>.jpg`), masks are PNG, images JPEG (quality 95, no chroma
subsampling), and the split files `<subset>_train.txt` / `<subset>_test.txt` split by real image (all composites of a
real image fall in one split). Deterministic for a given seed; a few seconds on one core.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from frih.data import SUBSETS

__all__ = [
    "PHOTO_NAMES",
    "PHOTO_TEST_NAMES",
    "default_synthetic_dir",
    "ensure_synthetic_iharmony4",
    "source_images",
    "write_photo_iharmony4",
    "write_synthetic_iharmony4",
]

GENERATOR_VERSION = 1
PHOTO_GENERATOR_VERSION = 1
_FG_RATIO_BINS = ((0.02, 0.05), (0.06, 0.15), (0.16, 0.55))


def source_images() -> dict[str, np.ndarray]:
    """The wheel-embedded photos and textures (uint8 RGB), by name."""
    import skimage.data as skd
    from sklearn.datasets import load_sample_images

    photos = {
        name: getattr(skd, name)() for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
    }
    photos["motorcycle"] = skd.stereo_motorcycle()[0]
    sample = load_sample_images()
    for path, image in zip(sample.filenames, sample.images):
        photos[Path(path).stem] = image
    for name in ("brick", "grass", "gravel"):
        photos[name] = getattr(skd, name)()
    return photos


def _tint(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey texture -> colour: a random dark and light colour, interpolated by the grey level."""
    dark, light = rng.uniform(0, 110, 3), rng.uniform(140, 255, 3)
    g = gray.astype(np.float32)[..., None] / 255.0
    return np.clip(dark + g * (light - dark), 0, 255).astype(np.uint8)


def _random_crop(image: np.ndarray, out_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    aspect = out_hw[1] / out_hw[0]
    scale = rng.uniform(0.35, 1.0)
    ch = int(min(h, w / aspect) * scale)
    cw = int(ch * aspect)
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = Image.fromarray(image[top : top + ch, left : left + cw])
    return np.asarray(crop.resize((out_hw[1], out_hw[0]), Image.Resampling.BILINEAR))


def _shape_mask(hw: tuple[int, int], ratio: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    from skimage.draw import ellipse, polygon

    h, w = hw
    area = ratio * h * w
    mask = np.zeros(hw, dtype=bool)
    if kind == "ellipse":
        e = rng.uniform(0.5, 2.0)
        ry = math.sqrt(area / (math.pi * e))
        rx = ry * e
        cy, cx = rng.uniform(ry * 0.5, h - ry * 0.5), rng.uniform(rx * 0.5, w - rx * 0.5)
        rr, cc = ellipse(cy, cx, max(ry, 1.5), max(rx, 1.5), shape=hw, rotation=rng.uniform(0, math.pi))
        mask[rr, cc] = True
    elif kind == "polygon":
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = rng.uniform(0.6, 1.0, n)
        r0 = math.sqrt(area / (0.5 * n * math.sin(2 * math.pi / n) * np.mean(radii**2)))
        cy, cx = rng.uniform(0.3 * h, 0.7 * h), rng.uniform(0.3 * w, 0.7 * w)
        rr, cc = polygon(cy + r0 * radii * np.sin(angles), cx + r0 * radii * np.cos(angles), shape=hw)
        mask[rr, cc] = True
    else:  # horse silhouette, scaled to the target area, placed at random
        import skimage.data as skd

        horse = ~skd.horse()  # the data set stores the horse as False on a True background
        ys, xs = np.nonzero(horse)
        horse = horse[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        s = math.sqrt(area / horse.sum())
        hh, hw_ = max(2, min(h, int(horse.shape[0] * s))), max(2, min(w, int(horse.shape[1] * s)))
        small = np.asarray(Image.fromarray(horse).resize((hw_, hh), Image.Resampling.NEAREST))
        if rng.random() < 0.5:
            small = small[:, ::-1]
        top, left = rng.integers(0, h - hh + 1), rng.integers(0, w - hw_ + 1)
        mask[top : top + hh, left : left + hw_] = small
    return mask


def _segment_mask(image: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """A Felzenszwalb segment grown by adding adjacent segments until the target area is reached."""
    from skimage.segmentation import felzenszwalb

    h, w = image.shape[:2]
    seg = felzenszwalb(image, scale=60, sigma=0.8, min_size=max(8, (h * w) // 400))
    target = ratio * h * w
    mask = seg == rng.integers(0, seg.max() + 1)
    for _ in range(64):
        if mask.sum() >= target:
            break
        ring = np.zeros_like(mask)
        ring[1:] |= mask[:-1]
        ring[:-1] |= mask[1:]
        ring[:, 1:] |= mask[:, :-1]
        ring[:, :-1] |= mask[:, 1:]
        neighbours = np.unique(seg[ring & ~mask])
        if neighbours.size == 0:
            break
        mask |= seg == rng.choice(neighbours)
    return mask


def _rgb_to_hsv_hue_rotate(x: np.ndarray, degrees: float, saturation: float) -> np.ndarray:
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(np.clip(x, 0, 1))
    hsv[..., 0] = (hsv[..., 0] + degrees / 360.0) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 1)
    return hsv2rgb(hsv)


def _colour_transfer(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random appearance change of the foreground, strong enough to see (mean |change| >= 10 grey levels)."""
    x0 = image.astype(np.float64) / 255.0
    for _ in range(20):
        x = x0 * rng.uniform(0.6, 1.4)  # brightness
        mean = x[mask].mean(0)
        x = (x - mean) * rng.uniform(0.6, 1.4) + mean  # contrast
        x = np.clip(x, 0, 1) ** rng.uniform(0.7, 1.5)  # gamma
        x = _rgb_to_hsv_hue_rotate(x, rng.uniform(-40, 40), rng.uniform(0.5, 1.5))  # hue, saturation
        x = x * rng.uniform(0.75, 1.25, 3)  # white balance
        out = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
        if np.abs(out[mask].astype(np.float64) - image[mask]).mean() >= 10.0:
            break
    composite = image.copy()
    composite[mask] = out[mask]
    return composite


def _write_composites(
    sub: Path, real: np.ndarray, mask: np.ndarray, mask_name: str, rng: np.random.Generator
) -> list[str]:
    """Save the mask and 1-2 colour-transferred composites of one foreground (iHarmony4 names); return their names."""
    Image.fromarray((mask * 255).astype(np.uint8)).save(sub / "masks" / f"{mask_name}.png")
    names = []
    for k in range(1, int(rng.integers(1, 3)) + 1):
        composite = _colour_transfer(real, mask, rng)
        names.append(f"{mask_name}_{k}.jpg")
        Image.fromarray(composite).save(sub / "composite_images" / names[-1], quality=95, subsampling=0)
    return names


def _names(subset: str, index: int, rng: np.random.Generator) -> tuple[str, list[str]]:
    """Real-image id and foreground-id generator in the subset's naming scheme."""
    if subset == "HCOCO":
        return f"c{100000 + 37 * index}", [str(v) for v in rng.choice(np.arange(1000000, 2000000), 2, replace=False)]
    if subset == "HAdobe5k":
        return f"a{1000 + index:04d}", ["1", "2"]
    if subset == "HFlickr":
        return f"f{4000 + index}", ["1", "2"]
    return f"d{500 + index}-{int(rng.integers(10, 99))}", ["1", "2"]


def write_synthetic_iharmony4(
    root: str | Path,
    image_size: int = 96,
    num_real_per_subset: int = 32,
    test_fraction: float = 0.25,
    seed: int = 0,
    subsets: tuple[str, ...] = SUBSETS,
) -> Path:
    """Write the synthetic tree under `root` (created; existing files are overwritten). Returns `root`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    sources = source_images()
    names = sorted(sources)
    grey = {"brick", "grass", "gravel"}
    for s_idx, subset in enumerate(subsets):
        sub = root / subset
        for folder in ("composite_images", "masks", "real_images"):
            (sub / folder).mkdir(parents=True, exist_ok=True)
        n_test = max(1, round(test_fraction * num_real_per_subset))
        test_ids = set(rng.choice(num_real_per_subset, n_test, replace=False).tolist())
        splits: dict[str, list[str]] = {"train": [], "test": []}
        for i in range(num_real_per_subset):
            src_name = names[(i + s_idx) % len(names)]
            src = sources[src_name]
            if src_name in grey:
                src = _tint(src, rng)
            aspect = float(rng.choice([0.75, 1.0, 4 / 3]))
            hw = (image_size, round(image_size * aspect / 4) * 4)
            real = _random_crop(src, hw, rng)
            real_id, fg_ids = _names(subset, i, rng)
            Image.fromarray(real).save(sub / "real_images" / f"{real_id}.jpg", quality=95, subsampling=0)
            for j in range(int(rng.integers(1, 3))):
                lo, hi = _FG_RATIO_BINS[int(rng.integers(0, len(_FG_RATIO_BINS)))]
                ratio = rng.uniform(lo, hi)
                kind = str(rng.choice(["ellipse", "polygon", "horse", "segment"]))
                mask = _segment_mask(real, ratio, rng) if kind == "segment" else _shape_mask(hw, ratio, kind, rng)
                if mask.sum() < 4:  # degenerate draw: fall back to an ellipse
                    mask = _shape_mask(hw, max(ratio, 0.02), "ellipse", rng)
                split = "test" if i in test_ids else "train"
                splits[split] += _write_composites(sub, real, mask, f"{real_id}_{fg_ids[j]}", rng)
        for split, lines in splits.items():
            (sub / f"{subset}_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


#: The real-photo set: colour photographs only (no textures, no drawn shapes), scikit-image's and scikit-learn's.
PHOTO_NAMES = ("astronaut", "chelsea", "china", "coffee", "flower", "motorcycle", "rocket")
#: Photos whose crops form the test split (held out from training: the test backgrounds are unseen scenes).
PHOTO_TEST_NAMES = ("chelsea", "china")


def _threshold_mask(image: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray | None:
    """The connected region of an Otsu-thresholded (smoothed) luminance that holds a random pixel, holes filled;
    None when that region's area is outside [ratio / 3, 3 ratio] of the image (the caller falls back to a segment)."""
    from scipy.ndimage import binary_fill_holes, gaussian_filter
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    lum = gaussian_filter(image.astype(np.float64) @ np.array([0.299, 0.587, 0.114]), 1.0)
    binary = lum > threshold_otsu(lum)
    if rng.random() < 0.5:
        binary = ~binary
    labels = label(binary, connectivity=1)
    h, w = binary.shape
    region = labels == labels[int(rng.integers(0, h)), int(rng.integers(0, w))]
    if not binary[region].all():
        return None
    region = binary_fill_holes(region)
    frac = region.mean()
    return region if ratio / 3 <= frac <= min(3 * ratio, 0.6) else None


def write_photo_iharmony4(
    root: str | Path,
    image_size: int = 64,
    num_real_per_subset: int = 24,
    seed: int = 0,
    subsets: tuple[str, ...] = SUBSETS,
) -> Path:
    """The real-photo set under `root`: iHarmony4 layout, built as iHarmony4's HCOCO/HFlickr were.

    Real images are random crops of the photographs of `PHOTO_NAMES`; the foreground is a region of the photograph
    itself (a Felzenszwalb segment grown to a target area, or the connected Otsu-threshold region under a random
    pixel), so background and foreground are both real; the composite is that foreground after the random colour
    transfer of the mixed generator (`_colour_transfer`), the target the untouched photo crop. Crops of
    `PHOTO_TEST_NAMES` form the test split, the other photos the training split. Deterministic for a given seed.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    sources = source_images()
    for s_idx, subset in enumerate(subsets):
        sub = root / subset
        for folder in ("composite_images", "masks", "real_images"):
            (sub / folder).mkdir(parents=True, exist_ok=True)
        splits: dict[str, list[str]] = {"train": [], "test": []}
        for i in range(num_real_per_subset):
            src_name = PHOTO_NAMES[(i + s_idx) % len(PHOTO_NAMES)]
            aspect = float(rng.choice([0.75, 1.0, 4 / 3]))
            hw = (image_size, round(image_size * aspect / 4) * 4)
            real = _random_crop(sources[src_name], hw, rng)
            real_id, fg_ids = _names(subset, i, rng)
            Image.fromarray(real).save(sub / "real_images" / f"{real_id}.jpg", quality=95, subsampling=0)
            for j in range(int(rng.integers(1, 3))):
                lo, hi = _FG_RATIO_BINS[int(rng.integers(0, len(_FG_RATIO_BINS)))]
                ratio = rng.uniform(lo, hi)
                mask = _threshold_mask(real, ratio, rng) if rng.random() < 0.5 else None
                if mask is None:
                    mask = _segment_mask(real, ratio, rng)
                split = "test" if src_name in PHOTO_TEST_NAMES else "train"
                splits[split] += _write_composites(sub, real, mask, f"{real_id}_{fg_ids[j]}", rng)
        for split, lines in splits.items():
            (sub / f"{subset}_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def default_synthetic_dir(name: str) -> Path:
    """`shared.synthetic.synthetic_root()/<name>` (`<repo>/data/synthetic/<name>` unless $SYNTHETIC_DATA_ROOT)."""
    from shared.synthetic import synthetic_root

    return Path(synthetic_root()) / name


def ensure_synthetic_iharmony4(
    image_size: int = 96,
    num_real_per_subset: int = 32,
    seed: int = 0,
    root: str | Path | None = None,
    kind: str = "mixed",
) -> Path:
    """The cached synthetic tree for these parameters, generated on first use (atomically: temp folder + rename).
    `kind`: "mixed" (`write_synthetic_iharmony4`) or "photos" (the real-photo set, `write_photo_iharmony4`)."""
    if kind not in ("mixed", "photos"):
        raise ValueError(f"kind must be 'mixed' or 'photos', got {kind!r}")
    params = {
        "version": GENERATOR_VERSION,
        "image_size": image_size,
        "num_real_per_subset": num_real_per_subset,
        "seed": seed,
    }
    if kind == "photos":
        params = {**params, "kind": kind, "photo_version": PHOTO_GENERATOR_VERSION}
    if root is None:
        prefix = "frih_iharmony4" if kind == "mixed" else "frih_photos"
        root = default_synthetic_dir(f"{prefix}_s{image_size}_n{num_real_per_subset}_seed{seed}")
    root = Path(root)
    marker = root / "frih_synthetic.json"
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root
    tmp = root.with_name(root.name + f".tmp{np.random.default_rng().integers(1 << 30)}")
    writer = write_synthetic_iharmony4 if kind == "mixed" else write_photo_iharmony4
    writer(tmp, image_size, num_real_per_subset, seed=seed)
    (tmp / "frih_synthetic.json").write_text(json.dumps(params))
    if root.exists():
        if marker.is_file() and json.loads(marker.read_text()) == params:  # another process finished first
            shutil.rmtree(tmp)
            return root
        shutil.rmtree(root)
    try:
        tmp.rename(root)
    except OSError:  # lost a race with a concurrent writer of the same parameters
        shutil.rmtree(tmp, ignore_errors=True)
        if not (marker.is_file() and json.loads(marker.read_text()) == params):
            raise
    return root
