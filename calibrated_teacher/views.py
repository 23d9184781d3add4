"""The weak (teacher) and strong (student) views of a sparsely annotated image, with exact box transforms
(README, Method; released ``MultiBranch`` pipeline with its geometric ops and RandErase commented out).

* weak:   RandResize (short side drawn from ``short_range``, long side <= ``max_size``) + horizontal flip 0.5;
* strong: an independent RandResize + flip, then one colour op from {Identity, AutoContrast, Equalize, Solarize,
          Color, Contrast, Brightness, Sharpness, Posterize}.

A view's 3x3 matrix maps original pixel coordinates (continuous, (0, 0) the top-left corner) to view coordinates,
so boxes move from the weak to the strong view with ``M_strong @ inverse(M_weak)`` (scale and flip: exact).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

__all__ = ["COLOUR_OPS", "make_view", "transform_boxes", "view_to_view"]


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _on_uint8(op: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor) -> torch.Tensor:
    return op((image * 255).round().clamp(0, 255).to(torch.uint8)).float() / 255


COLOUR_OPS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "Identity": lambda image, g: image,
    "AutoContrast": lambda image, g: TF.autocontrast(image),
    "Equalize": lambda image, g: _on_uint8(TF.equalize, image),
    "Solarize": lambda image, g: TF.solarize(image, _uniform(g, 0.5, 1.0)),
    "Color": lambda image, g: TF.adjust_saturation(image, _uniform(g, 0.1, 1.9)),
    "Contrast": lambda image, g: TF.adjust_contrast(image, _uniform(g, 0.1, 1.9)),
    "Brightness": lambda image, g: TF.adjust_brightness(image, _uniform(g, 0.1, 1.9)),
    "Sharpness": lambda image, g: TF.adjust_sharpness(image, _uniform(g, 0.1, 1.9)),
    "Posterize": lambda image, g: _on_uint8(
        lambda x: TF.posterize(x, int(torch.randint(4, 9, (), generator=g))), image
    ),
}


def transform_boxes(boxes: torch.Tensor, matrix: torch.Tensor, clip_to: tuple[int, int] | None = None) -> torch.Tensor:
    """(N, 4) xyxy boxes through a 3x3 scale/flip matrix (exact), optionally clipped to (height, width)."""
    if boxes.numel() == 0:
        return boxes.reshape(0, 4)
    m = matrix.to(torch.float64)
    xs = boxes[:, [0, 2]].double() * m[0, 0] + m[0, 2]
    ys = boxes[:, [1, 3]].double() * m[1, 1] + m[1, 2]
    out = torch.stack([xs.amin(1), ys.amin(1), xs.amax(1), ys.amax(1)], dim=1)
    if clip_to is not None:
        h, w = clip_to
        out = torch.stack(
            [out[:, 0].clamp(0, w), out[:, 1].clamp(0, h), out[:, 2].clamp(0, w), out[:, 3].clamp(0, h)], 1
        )
    return out.to(boxes.dtype)


def view_to_view(from_view: torch.Tensor, to_view: torch.Tensor) -> torch.Tensor:
    """Matrix moving coordinates of one view of an image into another view of it."""
    return to_view.double() @ torch.linalg.inv(from_view.double())


def make_view(
    image: torch.Tensor,
    short_range: tuple[int, int],
    max_size: int,
    hflip: float,
    colour: bool,
    g: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One view of a (3, H, W) image in [0, 1]: (view, float64 3x3 matrix original -> view)."""
    _, h, w = image.shape
    matrix = torch.eye(3, dtype=torch.float64)
    lo, hi = short_range
    if hi > 0:
        side = _uniform(g, lo, hi) if hi > lo else float(lo)
        ratio = min(side / min(h, w), max_size / max(h, w))
        nh, nw = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
        if (nh, nw) != (h, w):
            image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
            matrix = torch.diag(torch.tensor([nw / w, nh / h, 1.0], dtype=torch.float64))
        h, w = nh, nw
    if float(torch.rand((), generator=g)) < hflip:
        image = image.flip(-1)
        flip = torch.tensor([[-1.0, 0.0, w], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        matrix = flip @ matrix
    if colour:
        names = list(COLOUR_OPS)
        image = COLOUR_OPS[names[int(torch.randint(len(names), (), generator=g))]](image, g).clamp(0, 1)
    return image.contiguous(), matrix
