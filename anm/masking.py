"""Adversarial noisy masking (Eq. 5) and label modulation (Eq. 7) of SANM, vectorised over the batch.

For every image of the labeled and the unlabeled batch (README, "Method"):

1. attention ``A = sum_c F_c^2`` of the last feature map F (no gradient), L2-normalised over its positions,
   resized bilinearly to the input size, min-max scaled to 0..255 and floored (the released uint8 map);
2. ``p_max = argmax A`` and ``p_min = argmin A`` (first extreme in raster order, as ``np.argmax``);
3. masking ratio ``rho = U(ratio_low, ratio_high) + quality_coef (1 - w)``, w the DivideMix clean probability, so a
   sample that looks mislabeled gets a larger box;
4. box of area ``area_scale rho H W`` and aspect ``a ~ U(aspect_low, 1 / aspect_low)``:
   ``h = round(sqrt(area a))``, ``w = round(sqrt(area / a))``, its **top-left corner** at the position, moved back
   inside the image when it overflows;
5. fill: one ``U(0, 1)`` constant per channel inside the box, in normalised space.

``x_max`` erases the box at p_max (the region the network relies on most: "adversarial"), ``x_min`` the same-size
box at p_min. Their targets are modulated (Eq. 7): ``-rho`` on the argmax class, ``+rho / (C - 1)`` on the others.

Every random draw comes from an explicit ``torch.Generator`` (the trainer owns it and saves it in its checkpoints),
on the generator's own device (a CPU generator also serves CUDA batches: the draws are moved, so a run's masks do
not depend on the device), and nothing loops over images: a batch of B images costs a handful of tensor operations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = [
    "MaskedBatch",
    "MaskerConfig",
    "attention_map",
    "box_sizes",
    "erase_boxes",
    "mask_images",
    "masking_ratio",
    "modulate_labels",
    "peak_positions",
    "place_boxes",
]


@dataclass
class MaskerConfig:
    """Hyper-parameters of the adversarial masking (defaults: the released CIFAR code)."""

    ratio_low: float = field(default=0.02, metadata={"help": "rho = U(ratio_low, ratio_high) + quality_coef (1 - w)"})
    ratio_high: float = 0.07
    quality_coef: float = field(default=0.03, metadata={"help": "weight of 1 - w in the ratio (released CIFAR: 0.03)"})
    area_scale: float = field(
        default=0.5, metadata={"help": "box area = area_scale * rho * H * W (CIFAR 0.5; the Clothing1M script 1.0)"}
    )
    aspect_low: float = field(default=0.8, metadata={"help": "aspect ratio ~ U(aspect_low, 1 / aspect_low)"})
    independent_min_box: bool = field(
        default=False,
        metadata={
            "help": "draw rho and the box of x_min separately from x_max's (the Clothing1M script); "
            "CIFAR: one box size for both"
        },
    )
    quantize: bool = field(default=True, metadata={"help": "floor the 0..255 attention map to integers (released)"})

    def __post_init__(self) -> None:
        if not 0 <= self.ratio_low <= self.ratio_high:
            raise ValueError(f"need 0 <= ratio_low <= ratio_high, got {self.ratio_low}, {self.ratio_high}")
        if not 0 < self.aspect_low <= 1:
            raise ValueError(f"aspect_low must lie in (0, 1], got {self.aspect_low}")
        if self.area_scale <= 0 or self.quality_coef < 0:
            raise ValueError("area_scale must be > 0 and quality_coef >= 0")


@dataclass
class MaskedBatch:
    """The two erased copies of a batch, their ratios and boxes (``top``, ``left``, ``height``, ``width``)."""

    x_max: torch.Tensor
    x_min: torch.Tensor
    ratio_max: torch.Tensor
    ratio_min: torch.Tensor
    box_max: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    box_min: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    attention: torch.Tensor


@torch.no_grad()
def attention_map(fmap: torch.Tensor, size: tuple[int, int], quantize: bool = True) -> torch.Tensor:
    """``B x H x W`` attention in 0..255: sum_c F^2, L2-normalised, bilinear resize, min-max scaled (floored)."""
    b, _, h, w = fmap.shape
    att = fmap.detach().float().pow(2).sum(1).view(b, h * w)
    att = F.normalize(att, p=2, dim=1).view(b, 1, h, w)
    att = F.interpolate(att, size=size, mode="bilinear", align_corners=False).squeeze(1)
    flat = att.view(b, -1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    att = (255 * (flat - low) / (high - low + 1e-12)).view_as(att)
    return att.floor() if quantize else att


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U(0, 1) draws of ``shape`` on ``device``, taken from ``generator`` on its own device (torch refuses a CPU
    generator for a CUDA tensor)."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def peak_positions(att: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row_max, col_max, row_min, col_min) of each map: the first maximum / minimum in raster order."""
    flat = att.flatten(1)
    width = att.shape[-1]
    arg_max, arg_min = flat.argmax(1), flat.argmin(1)
    return arg_max // width, arg_max % width, arg_min // width, arg_min % width


def masking_ratio(
    clean_prob: torch.Tensor, cfg: MaskerConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """rho_i = U(ratio_low, ratio_high) + quality_coef (1 - w_i): larger masks for likely-mislabeled samples."""
    w = clean_prob.detach().float().view(-1)
    u = _uniform(tuple(w.shape), generator, w.device)
    return cfg.ratio_low + (cfg.ratio_high - cfg.ratio_low) * u + cfg.quality_coef * (1 - w)


def box_sizes(
    ratio: torch.Tensor,
    size: tuple[int, int],
    cfg: MaskerConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Box height and width: area = area_scale rho H W, aspect ~ U(aspect_low, 1/aspect_low), sides rounded.

    Sides are capped at H - 1 and W - 1 (the released code redraws until they fit; with the paper's ratios they
    always fit, so the cap never binds there)."""
    height, width = size
    area = cfg.area_scale * ratio * height * width
    u = _uniform(tuple(ratio.shape), generator, ratio.device)
    aspect = cfg.aspect_low + (1 / cfg.aspect_low - cfg.aspect_low) * u
    h = torch.sqrt(area * aspect).round().long().clamp(0, height - 1)
    w = torch.sqrt(area / aspect).round().long().clamp(0, width - 1)
    return h, w


def place_boxes(
    rows: torch.Tensor, cols: torch.Tensor, h: torch.Tensor, w: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners at (rows, cols), moved back inside the image when the box overflows (released rule)."""
    height, width = size
    top = torch.where(rows + h > height, height - h, rows)
    left = torch.where(cols + w > width, width - w, cols)
    return top, left


def erase_boxes(
    images: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    h: torch.Tensor,
    w: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A copy of ``images`` (``B x C x H x W``) with each box filled by one U(0, 1) constant per channel."""
    b, c, height, width = images.shape
    rows = torch.arange(height, device=images.device).view(1, height, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, width)
    inside = (
        (rows >= top.view(b, 1, 1))
        & (rows < (top + h).view(b, 1, 1))
        & (cols >= left.view(b, 1, 1))
        & (cols < (left + w).view(b, 1, 1))
    )
    fill = _uniform((b, c), generator, images.device).to(images.dtype).view(b, c, 1, 1)
    return torch.where(inside.unsqueeze(1), fill, images)


@torch.no_grad()
def mask_images(
    images: torch.Tensor,
    fmap: torch.Tensor,
    clean_prob: torch.Tensor,
    cfg: MaskerConfig,
    generator: torch.Generator | None = None,
) -> MaskedBatch:
    """Build x_max and x_min of a batch from its feature maps and clean probabilities (Eq. 5).

    Args:
        images: the normalised views the attention was computed on (``B x C x H x W``).
        fmap: the trained network's last feature map of ``images`` (``B x C' x h x w``).
        clean_prob: DivideMix's w of each sample (labeled and unlabeled alike, as released).
        cfg: masking hyper-parameters.
        generator: source of every random draw (ratios, aspects, fills).
    """
    if images.shape[0] != fmap.shape[0] or clean_prob.numel() != images.shape[0]:
        raise ValueError(
            f"images ({images.shape[0]}), feature maps ({fmap.shape[0]}) and clean probabilities "
            f"({clean_prob.numel()}) must describe the same batch"
        )
    size = (images.shape[-2], images.shape[-1])
    att = attention_map(fmap, size, cfg.quantize)
    r_max, c_max, r_min, c_min = peak_positions(att)
    ratio_max = masking_ratio(clean_prob, cfg, generator).to(images.device)
    h_max, w_max = box_sizes(ratio_max, size, cfg, generator)
    if cfg.independent_min_box:
        ratio_min = masking_ratio(clean_prob, cfg, generator).to(images.device)
        h_min, w_min = box_sizes(ratio_min, size, cfg, generator)
    else:
        ratio_min, h_min, w_min = ratio_max, h_max, w_max
    top_max, left_max = place_boxes(r_max, c_max, h_max, w_max, size)
    top_min, left_min = place_boxes(r_min, c_min, h_min, w_min, size)
    x_max = erase_boxes(images, top_max, left_max, h_max, w_max, generator)
    x_min = erase_boxes(images, top_min, left_min, h_min, w_min, generator)
    return MaskedBatch(
        x_max=x_max,
        x_min=x_min,
        ratio_max=ratio_max,
        ratio_min=ratio_min,
        box_max=(top_max, left_max, h_max, w_max),
        box_min=(top_min, left_min, h_min, w_min),
        attention=att,
    )


def modulate_labels(targets: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ``t_k - rho`` on the argmax class k, ``t_j + rho / (C - 1)`` elsewhere (the sum stays 1)."""
    num_classes = targets.shape[1]
    if num_classes < 2:
        raise ValueError("label modulation needs at least 2 classes")
    top = F.one_hot(targets.argmax(1), num_classes).to(targets.dtype)
    rho = ratio.view(-1, 1).to(targets.dtype)
    return targets - rho * top + rho / (num_classes - 1) * (1 - top)
