"""Losses of FRIH: foreground-normalised MSE (FN-MSE) on the final, the stage-1 and (optionally) each module's output.

FN-MSE is saic-vul's `MaskWeightedMSE` (`iharm/model/losses.py`), the loss of iDIH/iSSAM (WACV 2021, eq. 3 of
Sofiiuk et al.): per sample b,

    L_b = sum_{c,h,w} (y_hat - y)^2 / (C * max(sum_{h,w} M, A_min)),

the squared error summed over all pixels and channels, normalised by the foreground area (floored at A_min), C = 3.
It is computed in the networks' ImageNet-normalised space, as in the reference code. A_min = 100 is the iDIH /
HRNet / DucoNet setting and this package's default; the released iSSAM config used the class default 1000.

FRIH's loss terms and weights are not public [HYP, README "Fidelity notes", item 12]: final output weight 1, stage-1
(coarse) output weight 1 (deep supervision) and the mean over modules of each module's output FN-MSE restricted to its
submask, weight 1 (`frih.config.LossConfig`; the class defaults below leave the module term off).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["FNMSELoss", "FRIHLoss", "fn_mse"]


def fn_mse(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    min_area: float = 100.0,
    restrict_to_mask: bool = False,
) -> torch.Tensor:
    """Per-sample FN-MSE, shape (B,).

    Args:
        pred, target: (B, C, H, W).
        mask: (B, 1, H, W) foreground weights in [0, 1] (soft masks count fractionally).
        min_area: A_min, the floor of the foreground area (in pixels).
        restrict_to_mask: weight the squared error by the mask (sum over the foreground only); used for the
            optional per-module terms, not by the reference loss.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != pred.shape[0] or mask.shape[2:] != pred.shape[2:]:
        raise ValueError(f"mask must be (B, 1, H, W) matching {tuple(pred.shape)}, got {tuple(mask.shape)}")
    err = (pred.float() - target.float()).square()
    if restrict_to_mask:
        err = err * mask
    area = mask.float().sum(dim=(1, 2, 3)).clamp_min(min_area)
    return err.sum(dim=(1, 2, 3)) / (pred.shape[1] * area)


class FNMSELoss(nn.Module):
    """Module form of `fn_mse`, averaged over the batch."""

    def __init__(self, min_area: float = 100.0):
        super().__init__()
        self.min_area = min_area

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return fn_mse(pred, target, mask, self.min_area).mean()


class FRIHLoss(nn.Module):
    """Weighted sum of FN-MSE terms on a model output dict (see the module docstring).

    Works for stage-1-only models too (their output has no "coarse"/"module_images").
    Returns (total loss, {term name: detached value}).
    """

    def __init__(
        self, min_area: float = 100.0, final_weight: float = 1.0, coarse_weight: float = 1.0, module_weight: float = 0.0
    ):
        super().__init__()
        self.min_area = min_area
        self.final_weight = final_weight
        self.coarse_weight = coarse_weight
        self.module_weight = module_weight

    def forward(
        self, outputs: dict[str, Any], target: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        terms = {"final": (self.final_weight, fn_mse(outputs["images"], target, mask, self.min_area).mean())}
        if "coarse" in outputs and self.coarse_weight:
            terms["coarse"] = (self.coarse_weight, fn_mse(outputs["coarse"], target, mask, self.min_area).mean())
        if "module_images" in outputs and self.module_weight:
            subs = outputs["submasks"]
            per_module = [
                fn_mse(img, target, subs[:, k : k + 1], self.min_area, restrict_to_mask=True).mean()
                for k, img in enumerate(outputs["module_images"])
            ]
            terms["modules"] = (self.module_weight, torch.stack(per_module).mean())
        total = sum(w * v for w, v in terms.values())
        return total, {k: float(v.detach()) for k, (_, v) in terms.items()}
