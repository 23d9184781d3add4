"""MVTec 3D-AD / Eyecandies loaders (the M3DM / LSFA protocol: 224 x 224 evaluation).

The official MVTec 3D-AD tree (after ``python -m lsfa.preprocess``), and Eyecandies after its conversion to the same
tree (``python -m lsfa.preprocess --dataset eyecandies``), are read by one :class:`MVTec3DDataset`:

    <root>/<class>/train/good/{rgb/NNN.png, xyz/NNN.tiff}
    <root>/<class>/test/<defect or good>/{rgb/NNN.png, xyz/NNN.tiff, gt/NNN.png}

* rgb: RGB png, resized to 224 with PIL's bicubic filter on the 8-bit image (what M3DM's torchvision ``Resize`` does
  to a PIL image), ImageNet mean / std; ``rgb_resize="torch"`` selects torch's bicubic without antialiasing instead;
* xyz: organised point cloud, H x W x 3 float tiff (0, 0, 0 = no point), resized to 224 with nearest interpolation;
* gt: png mask, resized to 224 with PIL's nearest filter (M3DM's torchvision ``Resize(NEAREST)`` on the PIL mask:
  source pixel floor((i + 0.5) * in / out)) and binarised at 0.5 (all zero for good test images);
  ``mask_resize="torch"`` selects torch's ``mode="nearest"`` (floor(i * in / out)), this package's earlier rule.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from shared.datasets.registry import EYECANDIES_CLASSES, MVTEC3D_CLASSES

__all__ = [
    "EYECANDIES_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MVTEC3D_CLASSES",
    "MVTec3DDataset",
    "denormalize",
    "patch_rotation",
    "read_mask",
    "read_rgb",
    "read_xyz",
    "resize_mask",
    "resize_rgb",
    "resolve_classes",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

LAYOUT = (
    "<root>/<class>/train/good/{rgb/NNN.png, xyz/NNN.tiff}\n"
    "<root>/<class>/test/<good|defect>/{rgb/NNN.png, xyz/NNN.tiff, gt/NNN.png}"
)


def _read_png(path: str | Path, mode: str, what: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except (OSError, ValueError) as err:
        raise OSError(f"cannot read {what} {path}: {err}") from err


def read_rgb(path: str | Path) -> np.ndarray:
    """An RGB png as uint8 (H, W, 3); an unreadable file is an error naming it."""
    return _read_png(path, "RGB", "RGB image")


def read_xyz(path: str | Path) -> np.ndarray:
    """An organised point cloud tiff as float32 (H, W, 3); an unreadable or mis-shaped file is an error naming it."""
    try:
        xyz = tifffile.imread(str(path))
    except Exception as err:  # tifffile raises several exception types for corrupt files
        raise OSError(f"cannot read xyz tiff {path}: {err}") from err
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"{path}: expected an H x W x 3 organised point cloud, got shape {xyz.shape}")
    return np.nan_to_num(xyz.astype(np.float32), nan=0.0)


def read_mask(path: str | Path) -> np.ndarray:
    """A ground-truth png as uint8 (H, W) grey levels; an unreadable file is an error naming it."""
    return _read_png(path, "L", "ground-truth mask")


RGB_RESIZE_MODES = ("pil", "torch")
MASK_RESIZE_MODES = ("pil", "torch")


def resize_mask(mask: np.ndarray, size: int, mode: str = "pil") -> torch.Tensor:
    """uint8 (H, W) grey levels -> float (size, size) 0/1: nearest-resized, then / 255 and binarised at 0.5.

    ``pil`` (default, M3DM: ``transforms.Resize(NEAREST)`` on the PIL mask, then ``ToTensor`` and ``> 0.5``): PIL's
    nearest filter, which samples the source pixel under each output pixel's centre, floor((i + 0.5) * in / out)
    (torch's ``nearest-exact``); ``torch``: ``F.interpolate(mode="nearest")``, floor(i * in / out), this package's
    earlier rule (README Fidelity notes; the evidence run keeps it).
    """
    if mode == "pil":
        resized = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST), dtype=np.float32)
        return (torch.from_numpy(resized / 255.0) > 0.5).float()
    if mode == "torch":
        gt = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)
        return (F.interpolate(gt[None, None], size=(size, size), mode="nearest")[0, 0] > 0.5).float()
    raise ValueError(f"mask_resize must be one of {MASK_RESIZE_MODES}, got {mode!r}")


def resize_rgb(rgb: np.ndarray, size: int, mode: str = "pil") -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, size, size) in [0, 1], bicubic.

    ``pil`` (default, M3DM): PIL's bicubic resample of the 8-bit image (an antialiased filter whose support grows
    with the reduction), then / 255; ``torch``: ``F.interpolate(mode="bicubic")`` without antialiasing, this
    package's earlier behaviour (0.027 mean / 0.36 max away from PIL on an 800 -> 224 photo; README Fidelity notes).
    """
    if mode == "pil":
        resized = Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC)
        return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).float() / 255.0
    if mode == "torch":
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255.0
        return F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False)[0]
    raise ValueError(f"rgb_resize must be one of {RGB_RESIZE_MODES}, got {mode!r}")


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised (B, 3, H, W) -> [0, 1]."""
    mean = images.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = images.new_tensor(IMAGENET_STD)[:, None, None]
    return (images * std + mean).clamp(0, 1)


def patch_rotation(images: torch.Tensor, cell: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """LSFA's patch-rotation augmentation: cut (B, C, H, W) into cell x cell squares (56 x 56 cells of 4 px at 224)
    and rotate each by k * 90 degrees, k ~ U{0, 1, 2, 3} independently per cell."""
    b, c, h, w = images.shape
    gh, gw = h // cell, w // cell
    cells = images.reshape(b, c, gh, cell, gw, cell).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, cell, cell)
    k = torch.randint(0, 4, (cells.shape[0],), generator=generator).to(images.device)
    out = cells.clone()
    for quarter in (1, 2, 3):  # four masked rotations of the whole batch, not a loop over cells
        sel = k == quarter
        out[sel] = torch.rot90(cells[sel], quarter, dims=(2, 3))
    return out.reshape(b, gh, gw, c, cell, cell).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def resolve_classes(root: str | Path, classes: list[str] | None) -> list[str]:
    """The class folders to use: ``classes`` if given, else every folder under ``root`` with a ``train/`` tree."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset root {root} does not exist. Expected layout:\n{LAYOUT}\n"
            f"See `python -m shared.datasets info mvtec3d` (or eyecandies) and README Recipes."
        )
    if classes:
        return list(classes)
    found = sorted(d.name for d in root.iterdir() if (d / "train").is_dir())
    if not found:
        raise FileNotFoundError(f"no class folder with a train/ tree under {root}. Expected layout:\n{LAYOUT}")
    return found


class MVTec3DDataset(Dataset):
    """One class of MVTec 3D-AD (or converted Eyecandies), split ``train`` (good only) or ``test``.

    Items: ``rgb`` (3, S, S) normalised float, ``xyz`` (3, S, S) float (0 = no point), ``mask`` (S, S) float 0/1,
    ``label`` (0 good / 1 defect), ``defect`` (folder name), ``path`` (the rgb file).
    """

    def __init__(
        self,
        root: str | Path,
        class_name: str,
        split: str = "train",
        image_size: int = 224,
        max_samples: int | None = None,
        rgb_resize: str = "pil",
        mask_resize: str = "pil",
    ):
        if rgb_resize not in RGB_RESIZE_MODES:
            raise ValueError(f"rgb_resize must be one of {RGB_RESIZE_MODES}, got {rgb_resize!r}")
        if mask_resize not in MASK_RESIZE_MODES:
            raise ValueError(f"mask_resize must be one of {MASK_RESIZE_MODES}, got {mask_resize!r}")
        self.rgb_resize, self.mask_resize = rgb_resize, mask_resize
        if split not in ("train", "test", "validation"):
            raise ValueError(f"split must be train, validation or test, got {split!r}")
        self.root, self.class_name, self.split, self.image_size = Path(root), class_name, split, image_size
        split_dir = self.root / class_name / split
        if not split_dir.is_dir():
            raise FileNotFoundError(
                f"{split_dir} does not exist. Expected layout:\n{LAYOUT}\n"
                f"(see `python -m shared.datasets info mvtec3d` and README Recipes)"
            )
        self.samples: list[tuple[Path, Path, Path | None, str]] = []
        for defect in sorted(os.listdir(split_dir)):
            rgb_dir, xyz_dir, gt_dir = (split_dir / defect / sub for sub in ("rgb", "xyz", "gt"))
            if not rgb_dir.is_dir() or not xyz_dir.is_dir():
                raise FileNotFoundError(f"{split_dir / defect} must hold rgb/ and xyz/ folders. Layout:\n{LAYOUT}")
            for rgb in sorted(rgb_dir.glob("*.png")):
                xyz = xyz_dir / (rgb.stem + ".tiff")
                if not xyz.is_file():
                    raise FileNotFoundError(f"{xyz} is missing (paired with {rgb})")
                gt = gt_dir / rgb.name if defect != "good" else None
                if gt is not None and not gt.is_file():
                    raise FileNotFoundError(f"ground-truth mask {gt} is missing (paired with {rgb})")
                self.samples.append((rgb, xyz, gt, defect))
        if not self.samples:
            raise FileNotFoundError(f"no rgb/*.png samples under {split_dir}. Expected layout:\n{LAYOUT}")
        if max_samples is not None:
            self.samples = self.samples[:max_samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        rgb_path, xyz_path, gt_path, defect = self.samples[index]
        s = self.image_size
        rgb = resize_rgb(read_rgb(rgb_path), s, self.rgb_resize)
        rgb = (rgb - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        xyz = torch.from_numpy(read_xyz(xyz_path)).permute(2, 0, 1)[None]
        xyz = F.interpolate(xyz, size=(s, s), mode="nearest")[0]
        if gt_path is not None:
            mask = resize_mask(read_mask(gt_path), s, self.mask_resize)
        else:
            mask = torch.zeros(s, s)
        return {
            "rgb": rgb,
            "xyz": xyz,
            "mask": mask,
            "label": int(defect != "good"),
            "defect": defect,
            "path": str(rgb_path),
        }
