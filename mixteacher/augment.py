"""Weak and strong views of an image with exact box transforms between them (SoftTeacher's pipeline, which MixTeacher
uses unchanged: ``ssod/datasets/pipelines/{rand_aug.py, geo_utils.py, semi_augment.py}``).

Every geometric step records a 3x3 matrix acting on homogeneous pixel coordinates (x, y, 1), continuous coordinates
with (0, 0) the top-left image corner. A view's matrix maps original-image coordinates to view coordinates, so boxes
move from the teacher's weak view to the student's strong view with ``M_strong @ inverse(M_weak)``.

* labeled:   RandResize + horizontal flip, then one colour op;
* weak:      RandResize + horizontal flip (the teacher's view of an unlabeled image);
* strong:    RandResize + flip (drawn independently of the weak view), then in random order one colour op and one
             geometric op (TranslateX / TranslateY / Rotate / ShearX followed by ShearY), then RandErase.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "COLOUR_OPS",
    "GEOMETRIC_OPS",
    "ViewConfig",
    "box_transform",
    "make_view",
    "transform_boxes",
    "transform_points",
    "warp_affine",
]

Matrix = torch.Tensor


@dataclass
class ViewConfig:
    """One augmentation pipeline.

    Attributes:
        short_range: RandResize range of the shorter side (mmdet ``img_scale=[(1333, lo), (1333, hi)]``, range
            mode); ``(0, 0)`` keeps the image size.
        long_range: when set, the longer side is drawn from this range instead (mmdet ``img_scale=(1024, 1024),
            ratio_range=(0.5, 1.5)`` of the VOC recipe is ``(512, 1536)``).
        max_size: upper bound of the longer side after resizing (1333).
        hflip: flip probability.
        colour: apply one colour op.
        geometric: apply one geometric op (in random order with the colour op).
        erase: RandErase with 1..``erase_max_count`` squares of side up to ``erase_max_size`` x the image side.
    """

    short_range: tuple[int, int] = (400, 1200)
    long_range: tuple[int, int] = (0, 0)
    max_size: int = 1333
    hflip: float = 0.5
    colour: bool = False
    geometric: bool = False
    erase: bool = False
    erase_max_count: int = 5
    erase_max_size: float = 0.2
    translate: float = 0.1
    rotate: float = 30.0
    shear: float = 30.0


# --------------------------------------------------------------------------------------------- matrices


def transform_points(points: torch.Tensor, matrix: Matrix) -> torch.Tensor:
    """Apply a 3x3 matrix to (..., 2) points."""
    homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)
    out = homogeneous @ matrix.to(points.dtype).T
    return out[..., :2] / out[..., 2:]


def transform_boxes(boxes: torch.Tensor, matrix: Matrix, clip_to: tuple[int, int] | None = None) -> torch.Tensor:
    """Map (N, 4) xyxy boxes with a 3x3 matrix: the box around the four transformed corners (exact for scale,
    flip and translation; the enclosing box for rotation and shear), optionally clipped to (height, width)."""
    if boxes.numel() == 0:
        return boxes.reshape(0, 4)
    x0, y0, x1, y1 = boxes.unbind(-1)
    corners = torch.stack(
        [torch.stack([x0, y0], -1), torch.stack([x1, y0], -1), torch.stack([x0, y1], -1), torch.stack([x1, y1], -1)],
        dim=1,
    )
    moved = transform_points(corners, matrix)
    out = torch.cat([moved.amin(dim=1), moved.amax(dim=1)], dim=-1)
    if clip_to is not None:
        h, w = clip_to
        out = torch.stack(
            [out[:, 0].clamp(0, w), out[:, 1].clamp(0, h), out[:, 2].clamp(0, w), out[:, 3].clamp(0, h)], dim=-1
        )
    return out


def box_transform(from_view: Matrix, to_view: Matrix) -> Matrix:
    """Matrix moving coordinates of one view of an image into another view of it (``M_to @ M_from^-1``)."""
    return to_view.double() @ torch.linalg.inv(from_view.double())


def _scale(sx: float, sy: float) -> Matrix:
    return torch.tensor([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _about_centre(linear: Matrix, height: int, width: int) -> Matrix:
    cx, cy = width / 2, height / 2
    to_origin = torch.tensor([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    back = torch.tensor([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return back @ linear @ to_origin


def warp_affine(image: torch.Tensor, matrix: Matrix, fill: float = 0.5) -> torch.Tensor:
    """Warp a (C, H, W) image with a 3x3 affine matrix (input -> output coordinates), output the same size."""
    _, h, w = image.shape
    to_norm = torch.tensor([[2.0 / w, 0.0, -1.0], [0.0, 2.0 / h, -1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    theta = to_norm @ torch.linalg.inv(matrix.double()) @ torch.linalg.inv(to_norm)
    grid = F.affine_grid(theta[:2].to(image.dtype)[None], [1, *image.shape], align_corners=False)
    out = F.grid_sample(image[None] - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0] + fill


# -------------------------------------------------------------------------------------------------- ops


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _enhance(
    op: Callable[[torch.Tensor, float], torch.Tensor],
) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    return lambda image, g: op(image, _uniform(g, 0.1, 1.9))


def _as_uint8(op: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def apply(image: torch.Tensor) -> torch.Tensor:
        return op((image * 255).round().clamp(0, 255).to(torch.uint8)).float() / 255

    return apply


COLOUR_OPS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "Identity": lambda image, g: image,
    "AutoContrast": lambda image, g: TF.autocontrast(image),
    "RandEqualize": lambda image, g: _as_uint8(TF.equalize)(image),
    "RandSolarize": lambda image, g: TF.solarize(image, _uniform(g, 0.5, 1.0)),
    "RandColor": _enhance(TF.adjust_saturation),
    "RandContrast": _enhance(TF.adjust_contrast),
    "RandBrightness": _enhance(TF.adjust_brightness),
    "RandSharpness": _enhance(TF.adjust_sharpness),
    "RandPosterize": lambda image, g: _as_uint8(lambda x: TF.posterize(x, int(torch.randint(4, 9, (), generator=g))))(
        image
    ),
}


def _translate_x(h: int, w: int, g: torch.Generator, cfg: ViewConfig) -> Matrix:
    return torch.tensor(
        [[1.0, 0.0, _uniform(g, -cfg.translate, cfg.translate) * w], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )


def _translate_y(h: int, w: int, g: torch.Generator, cfg: ViewConfig) -> Matrix:
    return torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, 1.0, _uniform(g, -cfg.translate, cfg.translate) * h], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )


def _rotate(h: int, w: int, g: torch.Generator, cfg: ViewConfig) -> Matrix:
    a = math.radians(_uniform(g, -cfg.rotate, cfg.rotate))
    linear = torch.tensor(
        [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    return _about_centre(linear, h, w)


def _shear_xy(h: int, w: int, g: torch.Generator, cfg: ViewConfig) -> Matrix:
    sx = math.tan(math.radians(_uniform(g, -cfg.shear, cfg.shear)))
    sy = math.tan(math.radians(_uniform(g, -cfg.shear, cfg.shear)))
    shear_x = torch.tensor([[1.0, sx, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    shear_y = torch.tensor([[1.0, 0.0, 0.0], [sy, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return _about_centre(shear_y @ shear_x, h, w)


GEOMETRIC_OPS: dict[str, Callable[[int, int, torch.Generator, ViewConfig], Matrix]] = {
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
    "Rotate": _rotate,
    "ShearXY": _shear_xy,
}


def _choice(g: torch.Generator, names: list[str]) -> str:
    return names[int(torch.randint(len(names), (), generator=g))]


def _random_erase(image: torch.Tensor, g: torch.Generator, cfg: ViewConfig) -> torch.Tensor:
    _, h, w = image.shape
    count = int(torch.randint(1, cfg.erase_max_count + 1, (), generator=g))
    sides = (torch.rand(count, generator=g) * cfg.erase_max_size * min(h, w)).long()
    x0 = (torch.rand(count, generator=g) * w).long()
    y0 = (torch.rand(count, generator=g) * h).long()
    ys, xs = torch.arange(h)[:, None, None], torch.arange(w)[None, :, None]
    inside = (xs >= x0) & (xs < x0 + sides) & (ys >= y0) & (ys < y0 + sides)
    return image.masked_fill(inside.any(-1)[None], 0.0)


def make_view(image: torch.Tensor, cfg: ViewConfig, g: torch.Generator) -> tuple[torch.Tensor, Matrix]:
    """One augmented view of a (3, H, W) image in [0, 1]; returns (view, float64 matrix original -> view)."""
    _, h, w = image.shape
    matrix = torch.eye(3, dtype=torch.float64)
    lo, hi = cfg.long_range if cfg.long_range[1] > 0 else cfg.short_range
    if hi > 0:
        side = _uniform(g, lo, hi) if hi > lo else float(lo)
        if cfg.long_range[1] > 0:
            ratio = side / max(h, w)
        else:
            ratio = min(side / min(h, w), cfg.max_size / max(h, w))
        nh, nw = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
        if (nh, nw) != (h, w):
            image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
            matrix = _scale(nw / w, nh / h) @ matrix
        h, w = nh, nw
    if float(torch.rand((), generator=g)) < cfg.hflip:
        image = image.flip(-1)
        matrix = torch.tensor([[-1.0, 0.0, w], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64) @ matrix
    steps = [s for s, on in (("colour", cfg.colour), ("geometric", cfg.geometric)) if on]
    if len(steps) == 2 and float(torch.rand((), generator=g)) < 0.5:
        steps.reverse()
    for step in steps:
        if step == "colour":
            image = COLOUR_OPS[_choice(g, list(COLOUR_OPS))](image, g).clamp(0, 1)
        else:
            op = GEOMETRIC_OPS[_choice(g, list(GEOMETRIC_OPS))](h, w, g, cfg)
            image = warp_affine(image, op)
            matrix = op @ matrix
    if cfg.erase:
        image = _random_erase(image, g, cfg)
    return image.contiguous(), matrix
