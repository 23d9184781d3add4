"""iHarmony4 loader (official split files and name mapping), joint train/eval transforms, HAdobe5k pre-resize tool.

Layout (per subset; saic-vul `iharm/data/hdataset.py`, bcmi iHarmony4 README)::

    <root>/<subset>/composite_images/<id>_<fgid>_<k>.jpg   e.g. c108140_1698416_1.jpg
    <root>/<subset>/masks/<id>_<fgid>.png                  e.g. c108140_1698416.png
    <root>/<subset>/real_images/<id>.jpg                   e.g. c108140.jpg
    <root>/<subset>/<subset>_train.txt, <subset>_test.txt  one composite file name per line

Name mapping: real = first "_" token + ".jpg"; mask = the name without its last "_" token + ".png". Ids never
contain "_" (Hday2night ids use "-", e.g. d573-56_1_6.jpg). The split file is "the single *.txt in the subset folder
whose stem ends with the split name". Images are read as RGB uint8; the mask is channel 0 / 255 as float, not
binarised. DoveNet's root-level `IHD_train.txt` / `IHD_test.txt` ("HCOCO/composite_images/x.jpg" per line) are read
with `split_source="ihd"`.

Command line: `python -m frih.prepare_data resize-hadobe5k ...` / `python -m frih.prepare_data synthesize ...`.
"""

from __future__ import annotations

import math
import random
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "IHARMONY4_LAYOUT",
    "SUBSETS",
    "EvalTransform",
    "IHarmony4Dataset",
    "TrainTransform",
    "composite_to_mask_name",
    "composite_to_real_name",
    "read_mask",
    "read_rgb",
    "resize_hadobe5k",
]

SUBSETS = ("HCOCO", "HAdobe5k", "HFlickr", "Hday2night")

IHARMONY4_LAYOUT = """<root>/
  HCOCO/ HAdobe5k/ HFlickr/ Hday2night/     (any subset may be left out of the config)
  <subset>/
    composite_images/<id>_<fgid>_<k>.jpg     (e.g. c108140_1698416_1.jpg)
    masks/<id>_<fgid>.png                    (e.g. c108140_1698416.png)
    real_images/<id>.jpg                     (e.g. c108140.jpg)
    <subset>_train.txt  <subset>_test.txt    (one composite file name per line)"""


def composite_to_real_name(composite_name: str) -> str:
    """`c108140_1698416_1.jpg` -> `c108140.jpg` (first "_" token)."""
    return Path(composite_name).name.split("_")[0] + ".jpg"


def composite_to_mask_name(composite_name: str) -> str:
    """`c108140_1698416_1.jpg` -> `c108140_1698416.png` (drop the last "_" token)."""
    tokens = Path(composite_name).name.split("_")
    if len(tokens) < 3:
        raise ValueError(f"composite name {composite_name!r} does not follow <id>_<fgid>_<k>.jpg")
    return "_".join(tokens[:-1]) + ".png"


def _read_pixels(path: str | Path, what: str, mode: str | None = None) -> np.ndarray:
    """The pixels of an image file (converted to PIL `mode` if given); a missing or unreadable file is an error
    naming the file and `what` it is."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with Image.open(path) as im:
            return np.array(im.convert(mode) if mode else im)
    except Exception as err:  # PIL raises several types for corrupt files
        raise OSError(f"cannot read {what} {path}: {err}") from err


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a missing or unreadable file is an error naming the file."""
    return _read_pixels(path, "image", "RGB")


def read_mask(path: str | Path) -> np.ndarray:
    """(H, W) float32 in [0, 1]: the first channel of the PNG / 255 (saic-vul convention, not binarised)."""
    arr = _read_pixels(path, "mask")
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.dtype == bool:
        return arr.astype(np.float32)
    return arr.astype(np.float32) / 255.0


def _missing_dataset_error(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"iHarmony4 {what} not found: expected {path}.\nExpected layout:\n{IHARMONY4_LAYOUT}\n"
        "See `python -m shared.datasets info iharmony4` for where to get it "
        "(or `python -m frih.prepare_data synthesize --root DIR` for the synthetic stand-in)."
    )


@dataclass(frozen=True)
class Sample:
    """One composite of the dataset with the paths the name mapping gives."""

    subset: str
    name: str
    composite: Path
    mask: Path
    real: Path


def _split_file(subset_dir: Path, split: str) -> Path:
    candidates = sorted(p for p in subset_dir.glob("*.txt") if p.stem.endswith(split))
    if len(candidates) != 1:
        if not candidates:
            raise _missing_dataset_error(subset_dir / f"{subset_dir.name}_{split}.txt", "split file")
        raise ValueError(f"expected one *{split}.txt in {subset_dir}, found {[p.name for p in candidates]}")
    return candidates[0]


class IHarmony4Dataset(torch.utils.data.Dataset):
    """The iHarmony4 composites of `subsets` listed in the `split` files.

    Args:
        root: folder holding the subset folders.
        subsets: which of HCOCO, HAdobe5k, HFlickr, Hday2night (any folder name laid out the same way works).
        split: "train" or "test".
        transform: a callable(composite uint8 HxWx3, mask float HxW, real uint8 HxWx3) -> dict of tensors;
            None returns the arrays.
        split_source: "subset" (<subset>/<subset>_<split>.txt) or "ihd" (DoveNet's <root>/IHD_<split>.txt).
        check_files: verify at construction that every referenced composite/mask/real file exists.

    Items are dicts with "composite", "mask", "target" plus "subset" and "name".
    """

    def __init__(
        self,
        root: str | Path,
        subsets: Sequence[str] = SUBSETS,
        split: str = "train",
        transform: Any = None,
        split_source: str = "subset",
        check_files: bool = True,
    ):
        self.root = Path(root)
        self.split = split
        self.transform = transform
        if not self.root.is_dir():
            raise _missing_dataset_error(self.root, "root folder")
        self.samples: list[Sample] = []
        if split_source == "subset":
            for subset in subsets:
                subset_dir = self.root / subset
                if not subset_dir.is_dir():
                    raise _missing_dataset_error(subset_dir, f"subset {subset}")
                lines = _split_file(subset_dir, split).read_text().split()
                self.samples += [self._sample(subset, Path(line).name) for line in lines]
        elif split_source == "ihd":
            ihd = self.root / f"IHD_{split}.txt"
            if not ihd.is_file():
                raise _missing_dataset_error(ihd, "DoveNet split file")
            wanted = set(subsets)
            for line in ihd.read_text().split():
                subset = Path(line).parts[0]
                if subset in wanted:
                    self.samples.append(self._sample(subset, Path(line).name))
        else:
            raise ValueError(f"split_source must be 'subset' or 'ihd', got {split_source!r}")
        if not self.samples:
            raise ValueError(f"no {split} samples for subsets {list(subsets)} under {self.root}")
        if check_files:
            for s in self.samples:
                for path in (s.composite, s.mask, s.real):
                    if not path.is_file():
                        raise FileNotFoundError(f"{s.subset} {split} sample {s.name}: missing file {path}")

    def _sample(self, subset: str, name: str) -> Sample:
        base = self.root / subset
        return Sample(
            subset,
            name,
            base / "composite_images" / name,
            base / "masks" / composite_to_mask_name(name),
            base / "real_images" / composite_to_real_name(name),
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        composite, mask, real = read_rgb(s.composite), read_mask(s.mask), read_rgb(s.real)
        if composite.shape != real.shape or mask.shape != composite.shape[:2]:
            raise ValueError(
                f"{s.subset}/{s.name}: sizes differ: composite {composite.shape[:2]}, "
                f"mask {mask.shape}, real {real.shape[:2]}"
            )
        item = (
            {"composite": composite, "mask": mask, "target": real}
            if self.transform is None
            else self.transform(composite, mask, real)
        )
        item["subset"] = re.sub(r"_resized\d+$", "", s.subset)  # HAdobe5k_resized1024 reports as HAdobe5k
        item["name"] = s.name
        return item


# --------------------------------------------------------------------------------------------------------------------
# Joint transforms (albumentations semantics of saic-vul: cv2 bilinear resize, masks interpolated like images)
# --------------------------------------------------------------------------------------------------------------------


def _to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (C, H, W) float tensor, half-pixel centres and no antialiasing (cv2.INTER_LINEAR)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]


def _as_uint8_values(x: torch.Tensor) -> torch.Tensor:
    """cv2.resize of a uint8 image returns uint8: round and clamp the float result."""
    return x.round().clamp(0, 255)


def _pack(composite: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"composite": composite / 255.0, "mask": mask, "target": target / 255.0}


class EvalTransform:
    """saic-vul test protocol: Resize(size, size) of composite, real image and mask (mask bilinear, stays soft).

    Returns float tensors: composite/target (3, size, size) in [0, 1] (uint8-valued / 255), mask (1, size, size).
    `size=None` keeps the native resolution.
    """

    def __init__(self, size: int | None = 256):
        self.size = size

    def __call__(self, composite: np.ndarray, mask: np.ndarray, real: np.ndarray) -> dict[str, torch.Tensor]:
        c, t, m = _to_chw(composite), _to_chw(real), torch.from_numpy(mask)[None].float()
        if self.size is not None:
            size = (self.size, self.size)
            c, t, m = _as_uint8_values(_resize(c, size)), _as_uint8_values(_resize(t, size)), _resize(m, size)
            m = m.clamp(0, 1)  # interpolation rounding must not leave [0, 1]
        return _pack(c, m, t)


class TrainTransform:
    """RandomResizedCrop(size, scale, ratio 3/4-4/3) + horizontal flip, applied jointly to composite, mask and target.

    The mask is interpolated bilinearly like the images (saic-vul `HCompose`, no nearest for masks). A crop whose mask
    sum is <= 1 is re-drawn unless a uniform draw is < `keep_background_prob` (saic-vul 0.05). The crop geometry is
    sampled as torchvision's / albumentations' RandomResizedCrop (10 tries of area x log-uniform aspect, then a
    central fallback); random numbers come from python's `random` (seeded per DataLoader worker by
    `shared.distributed.seed_worker`, captured in checkpoints by `shared.checkpoint.capture_rng_state`).
    """

    def __init__(
        self,
        size: int = 256,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        keep_background_prob: float = 0.05,
        max_redraws: int = 100,
    ):
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.flip_p = flip_p
        self.keep_background_prob = keep_background_prob
        self.max_redraws = max_redraws

    def _crop_params(self, height: int, width: int) -> tuple[int, int, int, int]:
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * random.uniform(*self.scale)
            aspect = math.exp(random.uniform(*log_ratio))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                return random.randint(0, height - h), random.randint(0, width - w), h, w
        # Fallback (torchvision): central crop with the ratio clamped to the allowed range.
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif in_ratio > max(self.ratio):
            h, w = height, round(height * max(self.ratio))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, composite: np.ndarray, mask: np.ndarray, real: np.ndarray) -> dict[str, torch.Tensor]:
        c, t, m = _to_chw(composite), _to_chw(real), torch.from_numpy(mask)[None].float()
        height, width = m.shape[-2:]
        size = (self.size, self.size)
        for attempt in range(self.max_redraws):
            top, left, h, w = self._crop_params(height, width)
            m_crop = _resize(m[:, top : top + h, left : left + w], size)
            keep = self.keep_background_prob < 0 or random.random() < self.keep_background_prob
            if keep or float(m_crop.sum()) > 1.0 or attempt == self.max_redraws - 1:
                break
        m_crop = m_crop.clamp(0, 1)
        c_crop = _as_uint8_values(_resize(c[:, top : top + h, left : left + w], size))
        t_crop = _as_uint8_values(_resize(t[:, top : top + h, left : left + w], size))
        if random.random() < self.flip_p:
            c_crop, t_crop, m_crop = c_crop.flip(-1), t_crop.flip(-1), m_crop.flip(-1)
        return _pack(c_crop, m_crop, t_crop)


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings as lists."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


# --------------------------------------------------------------------------------------------------------------------
# HAdobe5k pre-resize (saic-vul notebooks/resize_hdataset.ipynb)
# --------------------------------------------------------------------------------------------------------------------


def resize_hadobe5k(src: str | Path, dst: str | Path, max_side: int = 1024, jpeg_quality: int = 90) -> dict[str, int]:
    """Copy an iHarmony4 subset folder, shrinking every image whose longer side exceeds `max_side` to `max_side`.

    As saic-vul's notebook: split files copied; files already small enough copied byte-for-byte; larger ones resized
    so the longer side is exactly `max_side` (the other side rounded), Lanczos for images and masks, JPEGs written at
    quality 90, PNG masks lossless. `dst` must not exist.
    Returns {"copied": n, "resized": n}.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise _missing_dataset_error(src, "HAdobe5k folder")
    if dst.exists():
        raise FileExistsError(f"destination already exists: {dst}")
    dst.mkdir(parents=True)
    for sub in ("composite_images", "masks", "real_images"):
        (dst / sub).mkdir()
    for txt in src.glob("*.txt"):
        shutil.copy(txt, dst / txt.name)
    counts = {"copied": 0, "resized": 0}
    files = sorted(src.rglob("*.jpg")) + sorted(src.rglob("*.png"))
    for path in files:
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            with Image.open(path) as im:
                width, height = im.size
                if max(width, height) <= max_side:
                    shutil.copy(path, out)
                    counts["copied"] += 1
                    continue
                scale = max_side / max(width, height)
                new_size = (max_side, round(scale * height)) if width >= height else (round(scale * width), max_side)
                resized = im.resize(new_size, Image.Resampling.LANCZOS)
        except OSError as err:
            raise OSError(f"cannot read {path}: {err}") from err
        if path.suffix.lower() == ".jpg":
            resized.save(out, quality=jpeg_quality)
        else:
            resized.save(out)
        counts["resized"] += 1
    return counts
