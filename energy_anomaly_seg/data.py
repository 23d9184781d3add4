"""Datasets of SLEEG: Cityscapes (training), the anomaly-segmentation test sets, transforms, and the synthetic
Cityscapes-format street scenes + Fishyscapes-format anomaly set of the embedded default.

Label conventions after loading (whatever the file on disk uses):

* Cityscapes: 19 train ids, 255 = ignore (the ``*_gtFine_labelTrainIds.png`` files of ``csCreateTrainIdLabelImgs``).
* anomaly sets: 0 = normal, 1 = anomaly, 255 = void. The "255 vs 2" gotcha: Fishyscapes / SMIYC files mark void
  with 255, the DenseHybrid-style files read by SLEEG's evaluator (``ignore_id = 2``) mark it with 2, and the original
  Road Anomaly files mark the *anomaly* with 2. Each layout declares its label scheme and the loader maps it to
  0/1/255 (:func:`normalize_anomaly_labels`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset, Sampler

from energy_anomaly_seg.config import DataConfig, SyntheticConfig
from shared.distributed import DistContext, seed_worker

__all__ = [
    "ANOMALY_LAYOUTS",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_MEAN",
    "CITYSCAPES_PALETTE",
    "CITYSCAPES_STD",
    "IGNORE_INDEX",
    "AnomalySegmentationDataset",
    "CityscapesSegmentation",
    "InfiniteSeededSampler",
    "SegTrainTransform",
    "build_train_loader",
    "collate_segmentation",
    "ensure_synthetic_data",
    "keep_ratio_size",
    "normalize_anomaly_labels",
    "normalize_image",
    "parse_dataset_spec",
    "read_image",
    "read_label",
    "render_street_scene",
    "resolve_cityscapes_root",
    "synthetic_data_root",
    "synthetic_roots",
]

IGNORE_INDEX = 255
# mmseg img_norm_cfg of every SLEEG config (RGB, 0-255 scale)
CITYSCAPES_MEAN = (123.675, 116.28, 103.53)
CITYSCAPES_STD = (58.395, 57.12, 57.375)
CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
CITYSCAPES_PALETTE = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)


# ---------------------------------------------------------------------------------------------------------------------
# file reading


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image as uint8 (H, W, 3); an unreadable file raises an error naming it."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError) as err:
        raise RuntimeError(f"cannot read image {path}: {err}") from err


def read_label(path: str | Path) -> np.ndarray:
    """A label map as uint8 (H, W); a 3-channel PNG (some Road Anomaly files) is read from its first channel."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, ValueError) as err:
        raise RuntimeError(f"cannot read label map {path}: {err}") from err
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
            raise ValueError(f"label map {path} has values outside 0..255 (dtype {arr.dtype})")
        arr = arr.astype(np.uint8)
    return arr.copy()


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """uint8/float RGB (..., 3, H, W) on the 0-255 scale -> float normalised with the Cityscapes mean/std."""
    mean = torch.tensor(CITYSCAPES_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(CITYSCAPES_STD, device=image.device).view(3, 1, 1)
    return (image.float() - mean) / std


def normalize_anomaly_labels(label: np.ndarray | torch.Tensor, scheme: str) -> np.ndarray | torch.Tensor:
    """Map an anomaly ground truth to 0 normal / 1 anomaly / 255 void.

    Schemes:
        ``binary_void``: 0 normal, 1 anomaly, any other value void (covers both 255 and the DenseHybrid/SLEEG 2).
        ``road_anomaly``: the original Road Anomaly ``labels_semantic.png`` (0 background, 1 road, 2 anomaly):
            2 -> anomaly, 255 -> void, everything else normal.
    """
    is_np = isinstance(label, np.ndarray)
    lab = torch.from_numpy(label) if is_np else label
    out = torch.full_like(lab, IGNORE_INDEX, dtype=torch.uint8)
    if scheme == "binary_void":
        out[lab == 0] = 0
        out[lab == 1] = 1
    elif scheme == "road_anomaly":
        out[(lab != 2) & (lab != IGNORE_INDEX)] = 0
        out[lab == 2] = 1
    else:
        raise ValueError(f"unknown anomaly label scheme {scheme!r}; expected 'binary_void' or 'road_anomaly'")
    return out.numpy() if is_np else out


# ---------------------------------------------------------------------------------------------------------------------
# Cityscapes


class CityscapesSegmentation(Dataset):
    """Cityscapes ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelTrainIds.png``.

    Items are ``{"image": uint8 (3, H, W), "label": int64 (H, W), "name": str}``, transformed by ``transform``
    (a callable taking and returning ``(image, label, rng)``) when given. Indexing with ``(index, seed)`` (what
    :class:`InfiniteSeededSampler` yields) seeds the transform's random generator, so augmentation is reproducible
    whatever the number of workers.
    """

    LAYOUT = (
        "<root>/leftImg8bit/{split}/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n"
        "<root>/gtFine/{split}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png  (19 train ids, 255 ignore; "
        "made by cityscapesScripts csCreateTrainIdLabelImgs)"
    )

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[torch.Tensor, torch.Tensor, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]
        | None = None,
    ):
        self.root = Path(root)
        self.split = split
        self.transform = transform
        img_dir = self.root / "leftImg8bit" / split
        gt_dir = self.root / "gtFine" / split
        if not img_dir.is_dir() or not gt_dir.is_dir():
            missing = img_dir if not img_dir.is_dir() else gt_dir
            raise FileNotFoundError(
                f"Cityscapes {split} split not found under {self.root} (missing {missing}).\n"
                f"Expected layout:\n{self.LAYOUT.format(split=split)}\n"
                "Download instructions: python -m shared.datasets info cityscapes"
            )
        self.samples: list[tuple[Path, Path]] = []
        for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
            gt = gt_dir / img.parent.name / img.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
            if not gt.is_file():
                raise FileNotFoundError(f"label map missing for {img}: expected {gt} (run csCreateTrainIdLabelImgs)")
            self.samples.append((img, gt))
        if not self.samples:
            raise FileNotFoundError(
                f"no *_leftImg8bit.png images under {img_dir}.\nExpected layout:\n{self.LAYOUT.format(split=split)}"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, seed = item if isinstance(item, tuple) else (item, index_seed(item))
        img_path, gt_path = self.samples[index]
        image = torch.from_numpy(read_image(img_path)).permute(2, 0, 1).contiguous()
        label = torch.from_numpy(read_label(gt_path)).long()
        if label.shape != image.shape[1:]:
            raise ValueError(f"{gt_path} has size {tuple(label.shape)}, its image {img_path} {tuple(image.shape[1:])}")
        if self.transform is not None:
            image, label = self.transform(image, label, np.random.default_rng(seed))
        return {"image": image, "label": label, "name": img_path.name.replace("_leftImg8bit.png", "")}


def index_seed(index: int) -> int:
    return index * 7919 + 17


class InfiniteSeededSampler(Sampler):
    """Endless stream of ``(index, augmentation seed)``: a fresh permutation per pass, seeded by (seed, pass).

    ``start`` skips that many items, so a resumed run sees exactly the batches an uninterrupted one would. With
    ``world_size`` > 1 each rank takes every ``world_size``-th item of the same permutation.
    """

    def __init__(self, dataset_size: int, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.start, self.rank, self.world_size = dataset_size, seed, start, rank, world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        item, epoch, perm = self.start, -1, []
        while True:
            position = item * self.world_size + self.rank  # place in the global stream shared by all ranks
            pass_index, offset = divmod(position, self.n)
            if pass_index != epoch:
                epoch = pass_index
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm = torch.randperm(self.n, generator=g).tolist()
            yield perm[offset], self.seed * 1_000_003 + position
            item += 1

    def __len__(self) -> int:  # endless; a large number keeps DataLoader's len() happy
        return 2**62


def collate_segmentation(batch: list[dict]) -> dict:
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "label": torch.stack([b["label"] for b in batch]),
        "name": [b["name"] for b in batch],
    }


# ---------------------------------------------------------------------------------------------------------------------
# training transforms (mmseg's Cityscapes pipeline on tensors)


def keep_ratio_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv ``imrescale``: the largest (h, w) with the same aspect that fits ``scale`` = (long edge, short edge)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


@dataclass
class SegTrainTransform:
    """Resize (ratio range) -> RandomCrop (cat_max_ratio) -> flip -> PhotoMetricDistortion -> Normalize -> Pad.

    Mirrors mmseg's Cityscapes training pipeline of SLEEG's configs; ``img_scale`` is (W, H) as in mmseg,
    ``crop_size`` is (H, W). Returns a normalised float image (3, crop_h, crop_w) and an int64 label (pad 255).
    """

    img_scale: tuple[int, int] = (2048, 1024)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] = (512, 1024)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ratio = rng.uniform(*self.ratio_range)
        target = (int(self.img_scale[0] * ratio), int(self.img_scale[1] * ratio))
        h, w = keep_ratio_size(image.shape[1], image.shape[2], target)
        img = F.interpolate(image[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
        lab = F.interpolate(label[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
        img, lab = self._random_crop(img, lab, rng)
        if rng.uniform() < self.flip_prob:
            img, lab = img.flip(-1), lab.flip(-1)
        if self.photometric:
            img = photometric_distortion(img, rng)
        img = normalize_image(img)
        ch, cw = self.crop_size
        pad_h, pad_w = ch - img.shape[1], cw - img.shape[2]
        if pad_h > 0 or pad_w > 0:
            img = F.pad(img, (0, max(pad_w, 0), 0, max(pad_h, 0)), value=0.0)
            lab = F.pad(lab, (0, max(pad_w, 0), 0, max(pad_h, 0)), value=IGNORE_INDEX)
        return img, lab

    def _random_crop(
        self, img: torch.Tensor, lab: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ch, cw = self.crop_size

        def bbox() -> tuple[int, int]:
            return (
                int(rng.integers(0, max(img.shape[1] - ch, 0) + 1)),
                int(rng.integers(0, max(img.shape[2] - cw, 0) + 1)),
            )

        y, x = bbox()
        if self.cat_max_ratio < 1.0:
            for _ in range(10):  # mmseg: retry until no class covers >= cat_max_ratio of the labelled pixels
                crop = lab[y : y + ch, x : x + cw]
                counts = torch.bincount(crop[crop != IGNORE_INDEX].flatten(), minlength=1)
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                y, x = bbox()
        return img[:, y : y + ch, x : x + cw], lab[y : y + ch, x : x + cw]


def photometric_distortion(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """mmseg ``PhotoMetricDistortion`` on a float (3, H, W) 0-255 image: each step with probability 0.5, brightness
    delta in [-32, 32], contrast x[0.5, 1.5] (before or after the colour steps), saturation x[0.5, 1.5], hue shift
    of up to 18/180 of the circle. Saturation/hue use torchvision's functional ops (blend with grey; HSV shift)."""

    def clip(x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0, 255).round()  # mmseg converts back to uint8 after every step

    img = clip(img)
    if rng.integers(2):
        img = clip(img + rng.uniform(-32, 32))
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        img = clip(img * rng.uniform(0.5, 1.5))
    if rng.integers(2):
        img = clip(TF.adjust_saturation(img / 255.0, float(rng.uniform(0.5, 1.5))) * 255.0)
    if rng.integers(2):
        img = clip(TF.adjust_hue(img / 255.0, float(rng.integers(-18, 19)) / 180.0) * 255.0)
    if not contrast_first and rng.integers(2):
        img = clip(img * rng.uniform(0.5, 1.5))
    return img


# ---------------------------------------------------------------------------------------------------------------------
# anomaly-segmentation test sets


@dataclass(frozen=True)
class AnomalyLayout:
    """How one benchmark lays out its files: a pair finder and the label scheme of its ground truth."""

    description: str
    find_pairs: Callable[[Path], list[tuple[Path, Path]]]
    label_scheme: str
    registry_name: str


def _first_file(candidates: Sequence[Path], missing: str) -> Path:
    """The first existing file of `candidates`; FileNotFoundError ``<missing>: looked for ...`` when none exists."""
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"{missing}: looked for {', '.join(str(c) for c in candidates)}")
    return found


def _pairs_by_suffix(
    img_dir: Path, gt_dir: Path, img_suffixes: Sequence[str], gt_suffix: str, recursive: bool
) -> list[tuple[Path, Path]]:
    """SLEEG's ``OODEvaluation`` pairing: every ``*<gt_suffix>`` under gt_dir, image at the mirrored path."""
    pattern = f"**/*{gt_suffix}" if recursive else f"*{gt_suffix}"
    pairs = []
    for gt in sorted(gt_dir.glob(pattern)):
        stem = gt.name[: -len(gt_suffix)]
        candidates = [img_dir / gt.parent.relative_to(gt_dir) / (stem + s) for s in img_suffixes]
        pairs.append((_first_file(candidates, f"no image for label {gt}"), gt))
    return pairs


def _fs_static(root: Path) -> list[tuple[Path, Path]]:
    return _pairs_by_suffix(root, root, ("_rgb.jpg", "_rgb.png"), "_labels.png", recursive=False)


def _fs_laf(root: Path) -> list[tuple[Path, Path]]:
    return _pairs_by_suffix(
        root / "leftImg8bit", root / "ood", ("_leftImg8bit.png",), "_ood_segmentation.png", recursive=True
    )


def _fs_laf_official(root: Path) -> list[tuple[Path, Path]]:
    """Fishyscapes' ``fishyscapes_lostandfound/<idx>_<seq>_<a>_<b>_labels.png`` + Lost and Found images."""
    pairs = []
    for gt in sorted((root / "fishyscapes_lostandfound").glob("*_labels.png")):
        name = gt.name[: -len("_labels.png")].split("_", 1)[1]  # drop the 4-digit index
        sequence = name.rsplit("_", 2)[0]
        candidates = [
            root / "lostandfound" / "leftImg8bit" / split / sequence / f"{name}_leftImg8bit.png"
            for split in ("train", "test")
        ]
        pairs.append((_first_file(candidates, f"no Lost and Found image for {gt}"), gt))
    return pairs


def _road_anomaly(root: Path) -> list[tuple[Path, Path]]:
    frames = root / "frames" if (root / "frames").is_dir() else root / "RoadAnomaly_jpg" / "frames"
    pairs = []
    for img in sorted(p for p in frames.glob("*") if p.suffix.lower() in (".jpg", ".png") and p.is_file()):
        gt = frames / f"{img.stem}.labels" / "labels_semantic.png"
        if not gt.is_file():
            raise FileNotFoundError(f"no label for Road Anomaly frame {img}: expected {gt}")
        pairs.append((img, gt))
    return pairs


def _smiyc(root: Path) -> list[tuple[Path, Path]]:
    return _pairs_by_suffix(
        root / "images", root / "labels_masks", (".jpg", ".png", ".webp"), "_labels_semantic.png", recursive=False
    )


def _synboost(root: Path) -> list[tuple[Path, Path]]:
    return _pairs_by_suffix(root / "original", root / "labels", (".png", ".jpg"), ".png", recursive=False)


ANOMALY_LAYOUTS: dict[str, AnomalyLayout] = {
    "fs_static": AnomalyLayout(
        "<root>/<id>_rgb.jpg|png + <root>/<id>_labels.png (0 normal, 1 anomaly, 255 void); "
        "SLEEG's data/segmentme/fs_static",
        _fs_static,
        "binary_void",
        "fishyscapes",
    ),
    "fs_laf": AnomalyLayout(
        "<root>/leftImg8bit/**/<id>_leftImg8bit.png + <root>/ood/**/<id>_ood_segmentation.png "
        "(road-anomaly-benchmark dataset_FishyLAF, SLEEG's default)",
        _fs_laf,
        "binary_void",
        "fishyscapes",
    ),
    "fs_laf_official": AnomalyLayout(
        "<root>/fishyscapes_lostandfound/<idx>_<seq>_<a>_<b>_labels.png + "
        "<root>/lostandfound/leftImg8bit/{train,test}/<seq>/<seq>_<a>_<b>_leftImg8bit.png",
        _fs_laf_official,
        "binary_void",
        "fishyscapes",
    ),
    "road_anomaly": AnomalyLayout(
        "<root>/frames/<name>.jpg + <root>/frames/<name>.labels/labels_semantic.png (original release: 2 = anomaly)",
        _road_anomaly,
        "road_anomaly",
        "road_anomaly",
    ),
    "smiyc": AnomalyLayout(
        "<root>/images/<id>.jpg|png|webp + <root>/labels_masks/<id>_labels_semantic.png "
        "(SegmentMeIfYouCan dataset_AnomalyTrack / dataset_ObstacleTrack)",
        _smiyc,
        "binary_void",
        "smiyc",
    ),
    "synboost": AnomalyLayout(
        "<root>/original/<id>.png + <root>/labels/<id>.png (SynBoost data_processed, as used by PEBAL)",
        _synboost,
        "binary_void",
        "fishyscapes",
    ),
}


def parse_dataset_spec(spec: str) -> tuple[str, str, Path]:
    """``"layout:path"`` or ``"name=layout:path"`` -> (name, layout, root)."""
    name = None
    if "=" in spec.split(":", 1)[0]:
        name, spec = spec.split("=", 1)
    if ":" not in spec:
        raise ValueError(f"dataset spec {spec!r} must be 'layout:path' with layout in {sorted(ANOMALY_LAYOUTS)}")
    layout, root = spec.split(":", 1)
    if layout not in ANOMALY_LAYOUTS:
        raise ValueError(f"unknown anomaly layout {layout!r} in {spec!r}; expected one of {sorted(ANOMALY_LAYOUTS)}")
    root_path = Path(root)
    return name or f"{layout}:{root_path.name}", layout, root_path


class AnomalySegmentationDataset(Dataset):
    """An anomaly-segmentation set in one of :data:`ANOMALY_LAYOUTS`; labels normalised to 0 / 1 / 255 void.

    Items: ``{"image": uint8 (3, H, W), "label": uint8 (H, W), "name": str}`` at the original resolution.
    """

    def __init__(self, root: str | Path, layout: str):
        if layout not in ANOMALY_LAYOUTS:
            raise ValueError(f"unknown anomaly layout {layout!r}; expected one of {sorted(ANOMALY_LAYOUTS)}")
        self.root, self.layout = Path(root), ANOMALY_LAYOUTS[layout]
        hint = (
            f"Expected layout '{layout}': {self.layout.description}\n"
            f"Download instructions: python -m shared.datasets info {self.layout.registry_name}"
        )
        if not self.root.is_dir():
            raise FileNotFoundError(f"anomaly dataset not found: {self.root} does not exist.\n{hint}")
        try:
            self.samples = self.layout.find_pairs(self.root)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err}\n{hint}") from err
        if not self.samples:
            raise FileNotFoundError(f"no image/label pairs found under {self.root}.\n{hint}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        img_path, gt_path = self.samples[index]
        image = read_image(img_path)
        label = normalize_anomaly_labels(read_label(gt_path), self.layout.label_scheme)
        if label.shape != image.shape[:2]:
            raise ValueError(f"{gt_path} has size {label.shape}, its image {img_path} {image.shape[:2]}")
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            "label": torch.from_numpy(label),
            "name": img_path.stem,
        }


# ---------------------------------------------------------------------------------------------------------------------
# synthetic Cityscapes-format street scenes and a Fishyscapes-format anomaly set (the embedded default)

_SYNTH_VERSION = 4
TRAIN_ID = {name: i for i, name in enumerate(CITYSCAPES_CLASSES)}


def synthetic_data_root() -> Path:
    """``shared.synthetic.synthetic_root()`` when that helper exists, else ``<repo>/data/synthetic``."""
    try:
        from shared.synthetic import synthetic_root
    except ImportError:
        return Path(__file__).resolve().parents[1] / "data" / "synthetic"
    return Path(synthetic_root())


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / (n.std() + 1e-6)


def _paint(
    img: np.ndarray,
    lab: np.ndarray,
    mask: np.ndarray,
    color: np.ndarray,
    label: int | None,
    texture: np.ndarray | float = 0.0,
) -> None:
    """Fill `mask` with `color` modulated by a multiplicative texture; set the label when given."""
    shade = np.atleast_1d(1.0 + (texture[mask] if isinstance(texture, np.ndarray) else texture))
    img[mask] = np.clip(color[None, :] * shade[:, None], 0, 255)
    if label is not None:
        lab[mask] = label


def render_street_scene(rng: np.random.Generator, height: int = 128, width: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A procedural street scene in perspective and its Cityscapes train-id labels (255 = ego vehicle / void).

    Sky, buildings with windows, trees, road with lane markings, sidewalks, terrain, poles, cars and people, each a
    textured region. Returns uint8 (H, W, 3) and uint8 (H, W).
    """
    H, W = height, width
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.zeros((H, W, 3), np.float32)
    lab = np.full((H, W), IGNORE_INDEX, np.uint8)
    fine = _smooth_noise(rng, (H, W), 0.6)
    coarse = _smooth_noise(rng, (H, W), max(H, W) / 24)

    horizon = H * rng.uniform(0.36, 0.5)
    vx = W * rng.uniform(0.38, 0.62)
    depth = np.clip((yy - horizon) / (H - horizon), 0.0, 1.0)  # 0 at the horizon, 1 at the bottom row
    below = yy >= horizon

    t = np.clip(yy / horizon, 0, 1)[..., None]
    sky_top = np.array([70, 120, 200]) * rng.uniform(0.85, 1.1)
    sky = ~below
    img[sky] = (sky_top * (1 - t) + np.array([180, 205, 235]) * t)[sky]
    lab[sky] = TRAIN_ID["sky"]

    # buildings along the horizon (left and right of the street), with window grids
    x = 0.0
    while x < W:
        bw = W * rng.uniform(0.1, 0.3)
        top = horizon - H * rng.uniform(0.12, 0.36)
        if rng.uniform() < 0.85:
            m = (xx >= x) & (xx < x + bw) & (yy >= top) & (yy < horizon + 2)
            color = np.array(rng.choice([[150, 120, 100], [120, 110, 105], [175, 160, 140], [140, 80, 70]]), float)
            _paint(img, lab, m, color * rng.uniform(0.8, 1.15), TRAIN_ID["building"], 0.05 * fine)
            wy, wx = rng.uniform(5, 9), rng.uniform(6, 10)
            win = m & ((yy - top) % wy < wy * 0.45) & ((xx - x) % wx < wx * 0.5) & (yy > top + 2)
            img[win] *= 0.45
        x += bw

    # ground: road trapezoid, sidewalks, then terrain / vegetation / building base on each side
    road_frac, walk_frac = rng.uniform(0.3, 0.5), rng.uniform(0.25, 0.5)
    road_half = W * road_frac * depth + 0.5
    walk = road_half * walk_frac
    road = below & (np.abs(xx - vx) <= road_half)
    sidewalk = below & ~road & (np.abs(xx - vx) <= road_half + walk)
    for side in (-1, 1):
        rest = below & ~road & ~sidewalk & (np.sign(xx - vx) == side)
        kind = rng.choice(["terrain", "vegetation", "building"])
        color = {"terrain": [120, 150, 80], "vegetation": [60, 110, 40], "building": [130, 115, 100]}[kind]
        _paint(
            img, lab, rest, np.array(color, float) * rng.uniform(0.8, 1.2), TRAIN_ID[kind], 0.15 * coarse + 0.08 * fine
        )
    _paint(
        img, lab, road, np.array([95, 92, 98]) * rng.uniform(0.8, 1.2), TRAIN_ID["road"], 0.06 * fine + 0.05 * coarse
    )
    dash = road & (np.abs(xx - vx) < 0.03 * road_half + 0.4) & (np.sin(14.0 / (depth + 0.08)) > 0.2)
    img[dash] = np.array([235, 235, 225])
    _paint(img, lab, sidewalk, np.array([180, 165, 160]) * rng.uniform(0.85, 1.1), TRAIN_ID["sidewalk"], 0.05 * fine)
    tiles = sidewalk & (np.sin(30.0 / (depth + 0.1)) > 0.9)
    img[tiles] *= 0.8

    # trees rising above the horizon
    for _ in range(int(rng.integers(1, 4))):
        cx, cy, r = W * rng.uniform(0, 1), horizon - H * rng.uniform(0.05, 0.2), H * rng.uniform(0.06, 0.14)
        trunk = (np.abs(xx - cx) < max(1.0, r * 0.12)) & (yy >= cy) & (yy < horizon + 2)
        crown = (xx - cx) ** 2 + ((yy - cy) * 1.2) ** 2 < r**2 * (1 + 0.3 * coarse)
        _paint(img, lab, trunk, np.array([80, 60, 40.0]), TRAIN_ID["vegetation"])
        _paint(img, lab, crown, np.array([50, 120, 45]) * rng.uniform(0.8, 1.2), TRAIN_ID["vegetation"], 0.25 * fine)

    # poles at the outer edge of the sidewalks
    for side in (-1, 1):
        if rng.uniform() < 0.7:
            d = rng.uniform(0.25, 0.8)
            yb = horizon + d * (H - horizon)
            xp = vx + side * (W * road_frac * d + 0.5) * (1 + walk_frac) * rng.uniform(1.0, 1.2)
            pole = (np.abs(xx - xp) < max(0.8, 2.0 * d)) & (yy < yb) & (yy > yb - H * 0.6 * d - 8)
            _paint(img, lab, pole, np.array([110, 110, 115.0]), TRAIN_ID["pole"], 0.05 * fine)

    # people on the sidewalks and cars on the road, far to near
    objects = [("person", rng.uniform(0.2, 0.95)) for _ in range(int(rng.integers(0, 4)))]
    objects += [("car", rng.uniform(0.15, 0.9)) for _ in range(int(rng.integers(1, 4)))]
    for kind, d in sorted(objects, key=lambda o: o[1]):
        yb = horizon + d * (H - horizon)
        half = W * road_frac * d + 0.5  # road half width at this depth
        if kind == "car":
            cw = half * rng.uniform(0.5, 0.8)
            ch = cw * rng.uniform(0.5, 0.65)
            cx = vx + rng.uniform(-0.6, 0.6) * half
            body = (np.abs(xx - cx) < cw / 2) & (yy < yb) & (yy > yb - ch)
            color = rng.uniform(20, 230, 3)
            _paint(img, lab, body, color, TRAIN_ID["car"], 0.05 * fine)
            window = body & (yy < yb - ch * 0.55) & (np.abs(xx - cx) < cw * 0.4)
            img[window] = np.array([40, 50, 65])
            wheels = body & (yy > yb - ch * 0.22) & (np.abs(np.abs(xx - cx) - cw * 0.32) < cw * 0.1)
            img[wheels] = np.array([15, 15, 15])
        else:
            ph = (H - horizon) * d * rng.uniform(0.7, 1.0) + 4
            pw = ph * 0.28
            cx = vx + rng.choice([-1, 1]) * half * (1 + walk_frac * rng.uniform(0.2, 0.8))
            torso = (np.abs(xx - cx) < pw / 2) & (yy < yb - ph * 0.45) & (yy > yb - ph * 0.82)
            legs = (np.abs(xx - cx) < pw * 0.4) & (yy <= yb) & (yy >= yb - ph * 0.45)
            head = (xx - cx) ** 2 + (yy - (yb - ph * 0.9)) ** 2 < (ph * 0.1) ** 2
            _paint(img, lab, torso, rng.uniform(30, 220, 3), TRAIN_ID["person"], 0.05 * fine)
            _paint(img, lab, legs, np.array([40, 40, 70.0]), TRAIN_ID["person"])
            _paint(img, lab, head, np.array([225, 180, 150.0]), TRAIN_ID["person"])

    img *= rng.uniform(0.8, 1.15)  # global illumination
    _add_ego_vehicle(rng, img, lab)
    img = ndimage.gaussian_filter(img, sigma=(0.5, 0.5, 0))
    return np.clip(img, 0, 255).astype(np.uint8), lab


def _add_ego_vehicle(rng: np.random.Generator, img: np.ndarray, lab: np.ndarray) -> None:
    """A dark bonnet at the bottom of half of the frames, labelled void like Cityscapes' ego vehicle."""
    if rng.uniform() < 0.5:
        H, W = lab.shape
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        top = H * (1 - rng.uniform(0.05, 0.1)) + H * 0.06 * ((xx - W / 2) / (W / 2)) ** 2
        hood = yy >= top
        img[hood] = np.array([25, 25, 30]) * rng.uniform(0.8, 1.3)
        lab[hood] = IGNORE_INDEX


def _blob_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random star-shaped blob filling most of an (h, w) box."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = (yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2)
    theta, radius = np.arctan2(dy, dx), np.hypot(dx, dy)
    boundary = 0.8 + sum(rng.uniform(0, 0.12) * np.sin(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 6))
    return radius <= boundary


def _foreign_object(rng: np.random.Generator, h: int, w: int, photos: list[np.ndarray]) -> np.ndarray:
    """Texture of a foreign object: a crop of a real photo (sklearn's sample images) or a vivid synthetic pattern."""
    if photos and rng.uniform() < 0.6:
        photo = photos[int(rng.integers(len(photos)))]
        ch, cw = int(rng.integers(60, 200)), int(rng.integers(60, 200))
        y, x = int(rng.integers(0, photo.shape[0] - ch)), int(rng.integers(0, photo.shape[1] - cw))
        crop = Image.fromarray(photo[y : y + ch, x : x + cw]).resize((w, h), Image.BILINEAR)
        return np.asarray(crop, dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c1, c2 = rng.choice([[255, 0, 200], [0, 230, 255], [255, 140, 0], [250, 250, 20], [140, 0, 255]], 2)
    period = rng.uniform(3, 8)
    stripes = (np.sin((xx * np.cos(rng.uniform(0, np.pi)) + yy) * 2 * np.pi / period) > 0)[..., None]
    return np.where(stripes, np.array(c1, np.float32), np.array(c2, np.float32))


def add_foreign_objects(
    rng: np.random.Generator, image: np.ndarray, seg_label: np.ndarray, photos: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Paste 1-3 foreign objects (mostly on the road, sized by depth): Fishyscapes labels 0 / 1 / 255 void."""
    H, W = seg_label.shape
    img = image.astype(np.float32)
    ood = np.where(seg_label == IGNORE_INDEX, IGNORE_INDEX, 0).astype(np.uint8)
    ground_rows = np.nonzero((seg_label == TRAIN_ID["road"]).any(1))[0]
    horizon = ground_rows.min() if len(ground_rows) else H // 2
    for _ in range(int(rng.integers(1, 4))):
        d = rng.uniform(0.25, 0.85)
        yb = int(horizon + d * (H - horizon))
        oh = int(min(H // 2, max(6, (H - horizon) * d * rng.uniform(0.45, 0.9))))
        ow = int(min(W // 3, max(6, oh * rng.uniform(0.8, 1.6))))
        row = int(np.clip(yb - oh, 0, H - oh))
        road_cols = np.nonzero(seg_label[min(yb, H - 1)] <= TRAIN_ID["sidewalk"])[0]
        cx = int(rng.choice(road_cols)) if len(road_cols) and rng.uniform() < 0.8 else int(rng.integers(0, W))
        col = int(np.clip(cx - ow // 2, 0, W - ow))
        mask = _blob_mask(rng, oh, ow)
        texture = _foreign_object(rng, oh, ow, photos) * rng.uniform(0.7, 1.1)
        region = img[row : row + oh, col : col + ow]
        region[mask] = texture[mask]
        ood[row : row + oh, col : col + ow][mask] = 1
    void = seg_label == IGNORE_INDEX
    hood_rows = void.all(1)  # keep the ego vehicle on top (objects stand in front of it, never on it)
    img[hood_rows] = image[hood_rows]
    ood[hood_rows] = IGNORE_INDEX
    return np.clip(img, 0, 255).astype(np.uint8), ood


def _sample_photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(im) for im in load_sample_images().images]


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _generate(tmp: Path, height: int, width: int, n_train: int, n_val: int, n_anomaly: int, seed: int) -> None:
    city_root, fishy_root = tmp / "cityscapes", tmp / "fishyscapes"
    photos = _sample_photos()
    for split, city, n in (("train", "synthtown", n_train), ("val", "synthville", n_val)):
        for i in range(n):
            rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
            image, label = render_street_scene(rng, height, width)
            stem = f"{city}_000000_{i:06d}"
            _write_png(city_root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
            _write_png(city_root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", label)
    for i in range(n_anomaly):  # the validation scenes again, with foreign objects (as Fishyscapes Static)
        image, label = render_street_scene(np.random.default_rng([seed, 1, i]), height, width)
        image, ood = add_foreign_objects(np.random.default_rng([seed, 2, i]), image, label, photos)
        _write_png(fishy_root / "fs_static" / f"synthville_{i:04d}_rgb.png", image)
        _write_png(fishy_root / "fs_static" / f"synthville_{i:04d}_labels.png", ood)


def ensure_synthetic_data(
    root: str | Path | None = None,
    height: int = 128,
    width: int = 256,
    n_train: int = 160,
    n_val: int = 40,
    n_anomaly: int = 24,
    seed: int = 0,
) -> dict[str, Path]:
    """Write (once, cached) the synthetic Cityscapes-format scenes and the Fishyscapes-Static-format anomaly set.

    Returns ``{"cityscapes": <root>/energy_anomaly_seg_cityscapes_<key>,
    "fs_static": <root>/energy_anomaly_seg_fishyscapes_<key>/fs_static}``; ``key`` hashes the generator settings,
    so another setting gets its own folder. Writing goes to a temp folder renamed into place (safe in parallel).
    """
    root = Path(root) if root is not None else synthetic_data_root()
    params = dict(
        version=_SYNTH_VERSION, height=height, width=width, n_train=n_train, n_val=n_val, n_anomaly=n_anomaly, seed=seed
    )
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    city = root / f"energy_anomaly_seg_cityscapes_{key}"
    fishy = root / f"energy_anomaly_seg_fishyscapes_{key}"
    stamp = city / "synthetic.json"
    if not (stamp.is_file() and (fishy / "fs_static").is_dir()):
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".energy_anomaly_seg_", dir=root))
        try:
            _generate(tmp, height, width, n_train, n_val, n_anomaly, seed)
            (tmp / "cityscapes" / "synthetic.json").write_text(json.dumps(params, indent=2))
            for src, dst in ((tmp / "fishyscapes", fishy), (tmp / "cityscapes", city)):  # stamp folder last
                try:
                    os.replace(src, dst)
                except OSError:
                    if not dst.is_dir():  # a parallel writer won the race only if dst now exists
                        raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"cityscapes": city, "fs_static": fishy / "fs_static"}


# ---------------------------------------------------------------------------------------------------------------------
# builders from the config (train.py, train_segmentor.py, eval.py)


def synthetic_roots(synthetic: SyntheticConfig) -> dict[str, Path]:
    """:func:`ensure_synthetic_data` with the settings of the ``synthetic`` config section."""
    return ensure_synthetic_data(
        root=synthetic.root,
        height=synthetic.height,
        width=synthetic.width,
        n_train=synthetic.n_train,
        n_val=synthetic.n_val,
        n_anomaly=synthetic.n_anomaly,
        seed=synthetic.seed,
    )


def resolve_cityscapes_root(data: DataConfig, synthetic: SyntheticConfig) -> Path:
    """The Cityscapes root, writing the synthetic scenes first when ``data.dataset == 'synthetic'``."""
    if data.dataset == "synthetic":
        return synthetic_roots(synthetic)["cityscapes"]
    if data.dataset != "cityscapes":
        raise ValueError(f"data.dataset must be 'cityscapes' or 'synthetic', got {data.dataset!r}")
    return Path(data.root)


def build_train_loader(
    data: DataConfig, synthetic: SyntheticConfig, ctx: DistContext, seed: int, start_iteration: int
) -> Iterator[dict]:
    """An endless iterator of training batches; batch i is the same whether or not the run was resumed."""
    if data.batch_size % ctx.world_size:
        raise ValueError(f"data.batch_size {data.batch_size} is not divisible by the {ctx.world_size} processes")
    per_rank = data.batch_size // ctx.world_size
    transform = SegTrainTransform(
        img_scale=tuple(data.img_scale),
        ratio_range=tuple(data.ratio_range),
        crop_size=tuple(data.crop_size),
        cat_max_ratio=data.cat_max_ratio,
        flip_prob=data.flip_prob,
        photometric=data.photometric,
    )
    dataset = CityscapesSegmentation(resolve_cityscapes_root(data, synthetic), data.split, transform)
    sampler = InfiniteSeededSampler(
        len(dataset), seed=seed, start=start_iteration * per_rank, rank=ctx.rank, world_size=ctx.world_size
    )
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=data.num_workers,
        collate_fn=collate_segmentation,
        worker_init_fn=seed_worker,
        drop_last=True,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=data.num_workers > 0,
    )
    return iter(loader)
