"""Any-resolution inference: padding to the network's multiple, or low-resolution prediction applied at full size.

Two modes (`Harmonizer(mode=...)`):

* "full" (default): the whole image goes through the network at its own resolution, zero-padded (composite and
  mask, before normalisation, split evenly top/bottom and left/right as saic-vul's `PadToDivisor`) to a multiple of
  the network's `size_divisor`, then cropped back, so a 1001x777 input gives a 1001x777 output. Cost grows with
  H*W (README, "Performance").
* "lowres": composite and mask are resized to `lowres_size` (bilinear with antialiasing), predicted there, and the
  predicted change (prediction - resized composite) is upsampled bilinearly and added to the full-resolution
  composite inside the full-resolution mask: out = composite + mask * up(pred_low - composite_low). The background
  is left untouched and fine texture comes from the full-resolution composite; the colour change is smooth at the
  scale of 1/lowres_size of the image. A design choice of this package (not from the paper).

Images enter as RGB in [0, 1] (B, 3, H, W) and leave clamped to [0, 1]; the saic-vul protocol multiplies by 255 and
does not round before computing metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from frih.config import PACKAGE
from frih.model import FRIHConfig, build_model, denormalize_image, normalize_image
from shared.checkpoint import load_checkpoint
from shared.config import AmpMode, config_from_dict
from shared.training import autocast

__all__ = [
    "Harmonizer",
    "load_model_from_checkpoint",
    "model_from_state",
    "pad_to_multiple",
    "unpad",
]


def pad_to_multiple(
    x: torch.Tensor, divisor: int, value: float = 0.0
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad (B, C, H, W) so H and W are multiples of `divisor`; returns (padded, (top, bottom, left, right))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    if ph == 0 and pw == 0:
        return x, pads
    return F.pad(x, (pads[2], pads[3], pads[0], pads[1]), value=value), pads


def unpad(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    top, bottom, left, right = pads
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


class Harmonizer:
    """Run a harmonization network on images of any size.

    Args:
        model: an iSSAM / iDIH / FRIH network (returns a dict with "images" and, for FRIH, "coarse").
        device: where to run.
        mode: "full" or "lowres" (see the module docstring).
        lowres_size: network resolution of the "lowres" mode.
        amp: "off", "bf16" or "fp16" autocast.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "cpu",
        mode: Literal["full", "lowres"] = "full",
        lowres_size: int = 256,
        amp: AmpMode = "off",
    ):
        if mode not in ("full", "lowres"):
            raise ValueError(f"mode must be 'full' or 'lowres', got {mode!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.mode = mode
        self.lowres_size = lowres_size
        self.amp = amp
        self.size_divisor = int(getattr(model, "size_divisor", 1))

    def _run(self, composite: torch.Tensor, mask: torch.Tensor, return_coarse: bool) -> dict[str, torch.Tensor]:
        padded, pads = pad_to_multiple(composite, self.size_divisor)
        padded_mask, _ = pad_to_multiple(mask, self.size_divisor)
        with autocast(self.device, self.amp):
            out = self.model(normalize_image(padded), padded_mask)
        result = {"images": unpad(denormalize_image(out["images"].float()), pads).clamp(0, 1)}
        if return_coarse and "coarse" in out:
            result["coarse"] = unpad(denormalize_image(out["coarse"].float()), pads).clamp(0, 1)
        return result

    @torch.no_grad()
    def predict(
        self, composite: torch.Tensor, mask: torch.Tensor, return_coarse: bool = True
    ) -> dict[str, torch.Tensor]:
        """composite (B, 3, H, W) in [0, 1], mask (B, 1, H, W) in [0, 1] -> {"images"[, "coarse"]} in [0, 1].

        "coarse" (FRIH's stage-1 output) is returned for FRIH models when `return_coarse`.
        """
        if composite.ndim != 4 or composite.shape[1] != 3:
            raise ValueError(f"composite must be (B, 3, H, W), got {tuple(composite.shape)}")
        if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2:] != composite.shape[2:]:
            raise ValueError(f"mask must be (B, 1, H, W) matching the composite, got {tuple(mask.shape)}")
        composite = composite.to(self.device, torch.float32)
        mask = mask.to(self.device, torch.float32)
        if self.mode == "full":
            return self._run(composite, mask, return_coarse)
        size = (self.lowres_size, self.lowres_size)
        comp_low = F.interpolate(composite, size=size, mode="bilinear", align_corners=False, antialias=True)
        mask_low = F.interpolate(mask, size=size, mode="bilinear", align_corners=False, antialias=True)
        low = self._run(comp_low, mask_low, return_coarse)
        full = composite.shape[-2:]
        result = {}
        for key, pred in low.items():
            delta = F.interpolate(pred - comp_low, size=full, mode="bilinear", align_corners=False)
            result[key] = (composite + mask * delta).clamp(0, 1)
        return result

    def harmonize(self, composite: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One image: composite (H, W, 3) uint8, mask (H, W) float in [0, 1] -> (H, W, 3) uint8."""
        c = torch.from_numpy(np.ascontiguousarray(composite)).permute(2, 0, 1)[None].float() / 255.0
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        out = self.predict(c, m, return_coarse=False)["images"][0]
        return (out * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()


def load_model_from_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of a `train.py` checkpoint (weights_only load) -> (model in eval mode, config dict).

    The network is :func:`frih.model.build_model` of the checkpoint's ``config["model"]`` (the architecture it was
    trained with), without the initialisation that its weights replace."""
    state = load_checkpoint(path, map_location="cpu", package=PACKAGE, required=("model", "config"))
    return model_from_state(state, device), state["config"]


def model_from_state(state: dict[str, Any], device: str | torch.device = "cpu") -> nn.Module:
    """The network of a checkpoint already read (``model`` and ``config`` entries), in eval mode on ``device``."""
    model = build_model(config_from_dict(FRIHConfig, state["config"]["model"]), init=False)
    model.load_state_dict(state["model"])
    return model.to(device).eval()
