"""Harmonization metrics against a per-image numpy loop and hand-computed values."""

import math

import numpy as np
import pytest
import torch

from shared.metrics import harmonization_metrics


def reference(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, eps: float = 1e-6) -> dict[str, list[float]]:
    """saic-vul formulas, one image at a time on H x W x 3 arrays (the layout of the reference code)."""
    out = {key: [] for key in ("mse", "fmse", "psnr", "psnr_255", "fpsnr", "fg_ratio")}
    for p, t, m in zip(pred, target, mask):
        p, t, m = p.transpose(1, 2, 0), t.transpose(1, 2, 0), m.reshape(m.shape[-2:])[:, :, None]
        diff2 = (p - t) ** 2
        mse = diff2.mean()
        fmse = (m * diff2).sum() / (diff2.shape[-1] * m.sum() + eps)
        out["mse"].append(mse)
        out["fmse"].append(fmse)
        out["psnr"].append(10 * math.log10(t.max() ** 2 / (mse + eps)))
        out["psnr_255"].append(10 * math.log10(255**2 / (mse + eps)))
        out["fpsnr"].append(10 * math.log10(255**2 / (fmse + eps)))
        out["fg_ratio"].append((m > 0.5).mean())
    return out


def random_batch(seed: int, n: int = 4, size: int = 16):
    rng = np.random.default_rng(seed)
    target = rng.uniform(0, 240, size=(n, 3, size, size))
    pred = np.clip(target + rng.normal(scale=8, size=target.shape), 0, 255)
    mask = np.clip(rng.uniform(-0.5, 1.5, size=(n, 1, size, size)), 0, 1)  # soft, with exact 0s and 1s
    return pred, target, mask


@pytest.mark.parametrize("mask_layout", ["n1hw", "nhw"])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_matches_reference_loop(mask_layout, as_tensor):
    pred, target, mask = random_batch(seed=0)
    expected = reference(pred, target, mask)
    if mask_layout == "nhw":
        mask = mask[:, 0]
    if as_tensor:
        pred, target, mask = (torch.from_numpy(a).float() for a in (pred, target, mask))
    got = harmonization_metrics(pred, target, mask)
    for key, values in expected.items():
        assert got[key].shape == (4,)
        rtol = 1e-5 if as_tensor else 1e-12  # float32 inputs
        np.testing.assert_allclose(got[key].numpy(), values, rtol=rtol, err_msg=key)


def test_single_image_and_hand_computed_values():
    target = np.zeros((3, 4, 4))
    target[0, 0, 0] = 200.0  # peak of the ground truth: 200, not 255
    pred = target + 2.0  # squared error 4 everywhere
    mask = np.zeros((4, 4))
    mask[:2] = 1.0  # 8 foreground pixels
    mask[2, 0] = 0.5  # a soft edge pixel: counts half in fMSE, not in fg_ratio (> 0.5 needed)
    got = harmonization_metrics(pred, target, mask)
    assert got["mse"].item() == pytest.approx(4.0)
    assert got["fmse"].item() == pytest.approx(4.0 * 3 * 8.5 / (3 * 8.5 + 1e-6))
    assert got["psnr"].item() == pytest.approx(10 * math.log10(200.0**2 / (4.0 + 1e-6)))
    assert got["psnr_255"].item() == pytest.approx(10 * math.log10(255.0**2 / (4.0 + 1e-6)))
    assert got["psnr_255"].item() - got["psnr"].item() == pytest.approx(20 * math.log10(255 / 200), abs=1e-9)
    assert got["fpsnr"].item() == pytest.approx(10 * math.log10(255.0**2 / (got["fmse"].item() + 1e-6)))
    assert got["fg_ratio"].item() == 0.5
    # Errors outside the mask do not enter fMSE.
    pred[:, 3, 3] += 50.0
    assert harmonization_metrics(pred, target, mask)["fmse"].item() == pytest.approx(got["fmse"].item())


def test_shape_and_range_errors_name_the_problem():
    pred, target, mask = random_batch(seed=1)
    with pytest.raises(ValueError, match=r"pred \(4, 3, 16, 16\) and target \(4, 3, 8, 8\)"):
        harmonization_metrics(pred, target[..., :8, :8], mask)
    with pytest.raises(ValueError, match=r"mask \(3, 1, 16, 16\) does not match"):
        harmonization_metrics(pred, target, mask[:3])
    with pytest.raises(ValueError, match=r"mask \(4, 3, 16, 16\)"):
        harmonization_metrics(pred, target, np.repeat(mask, 3, axis=1))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        harmonization_metrics(pred[:, :1], target[:, :1], mask)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        harmonization_metrics(pred, target, mask * 255)
