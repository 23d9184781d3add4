"""Image-harmonization metrics: MSE, foreground MSE, PSNR and foreground PSNR, per image.

Follows the saic-vul ``image_harmonization`` evaluation (``iharm/inference/metrics.py``), which FRIH-era papers
copy: per image on the 0-255 float scale (predictions clamped to [0, 255], not rounded), soft masks as produced by
resizing, and dataset numbers are means over images (the iHarmony4 "All" column is image-weighted).
"""

from __future__ import annotations

import torch

from shared.metrics._inputs import ArrayLike, to_tensor


def harmonization_metrics(
    pred: ArrayLike,
    target: ArrayLike,
    mask: ArrayLike,
    eps: float = 1e-6,
) -> dict[str, torch.Tensor]:
    """Per-image MSE, fMSE, PSNR, PSNR with peak 255, fPSNR and foreground ratio.

    With ``d = pred - target`` over the 3 channels and ``m`` the mask broadcast over channels, per image:

    - ``mse`` = mean(d^2) over H*W*3;
    - ``fmse`` = sum(m * d^2) / (3 * sum_HW(m) + eps) (saic-vul ``fMSE``);
    - ``psnr`` = 10 log10(max(target)^2 / (mse + eps)) with max(target) the image's ground-truth maximum, as the
      saic-vul ``PSNR`` (the headline number; identical to ``psnr_255`` when the image has a saturated pixel);
    - ``psnr_255`` = 10 log10(255^2 / (mse + eps)) (skimage ``data_range=255``, PCT-Net);
    - ``fpsnr`` = 10 log10(255^2 / (fmse + eps));
    - ``fg_ratio`` = fraction of pixels with m > 0.5 (for the foreground-ratio bins [0, 0.05], (0.05, 0.15],
      (0.15, 1]).

    Computed in float64.

    Args:
        pred: (N, 3, H, W) or (3, H, W) harmonized images, floats in [0, 255].
        target: ground-truth real images, same shape.
        mask: foreground masks in [0, 1] (soft allowed): (N, 1, H, W), (N, H, W), or (1, H, W) / (H, W) for one
            image.
        eps: the stabiliser added to the denominators (1e-6 in the reference code).

    Returns:
        ``{"mse", "fmse", "psnr", "psnr_255", "fpsnr", "fg_ratio"}``, each a float64 tensor of shape (N,) on the
        input's device.

    Raises:
        ValueError: shapes that do not match (the message names them) or a mask outside [0, 1].
    """
    pred = to_tensor(pred, "pred")
    target = to_tensor(target, "target").to(pred.device)
    mask = to_tensor(mask, "mask").to(pred.device)
    if pred.shape != target.shape:
        raise ValueError(f"harmonization_metrics: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.ndim == 3:
        pred, target = pred[None], target[None]
    if pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(f"harmonization_metrics: images must be (N, 3, H, W) or (3, H, W), got {tuple(pred.shape)}")
    expected = (pred.shape[0], 1, *pred.shape[2:])
    given = tuple(mask.shape)
    if mask.ndim in (2, 3):
        mask = mask.reshape(-1, 1, *mask.shape[-2:])
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"harmonization_metrics: mask {given} does not match images {tuple(pred.shape)}; expected "
            f"{expected} or {(expected[0], *expected[2:])}"
        )
    mask = mask.double()
    if mask.min() < 0 or mask.max() > 1:
        raise ValueError("harmonization_metrics: mask values must lie in [0, 1]")

    squared_error = (pred.double() - target.double()).square()
    mse = squared_error.mean(dim=(1, 2, 3))
    fmse = (mask * squared_error).sum(dim=(1, 2, 3)) / (3 * mask.sum(dim=(1, 2, 3)) + eps)
    peak = target.double().amax(dim=(1, 2, 3))
    return {
        "mse": mse,
        "fmse": fmse,
        "psnr": 10 * torch.log10(peak.square() / (mse + eps)),
        "psnr_255": 10 * torch.log10(255.0**2 / (mse + eps)),
        "fpsnr": 10 * torch.log10(255.0**2 / (fmse + eps)),
        "fg_ratio": (mask > 0.5).double().mean(dim=(1, 2, 3)),
    }
