"""Evaluation protocol: metric values by hand, the PSNR cap of a perfect prediction, image-weighted "All", fg bins."""

import math

import pytest
import torch
from torch import nn

from frih.evaluation import FG_BINS, evaluate_harmonizer, flat_metrics, format_table, image_metrics, summarize
from frih.inference import Harmonizer


def _images():
    target = torch.full((2, 3, 16, 16), 100 / 255)
    target[0, :, 0, 0] = 1.0  # image 0 has a saturated pixel: peak 255
    target[1, :, 0, 0] = 200 / 255  # image 1 peaks at 200
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 4:8] = 1.0  # 32 / 256 = 12.5 % foreground
    return target, mask


def test_identical_prediction_gives_zero_error_and_the_capped_psnr():
    target, mask = _images()
    m = image_metrics(target, target, mask)
    assert torch.all(m["mse"] == 0) and torch.all(m["fmse"] == 0)
    # PSNR = 10 log10(peak^2 / (0 + 1e-6)): the eps of the reference code caps it
    assert m["psnr"][0].item() == pytest.approx(10 * math.log10(255**2 / 1e-6), abs=1e-4)  # 108.13 dB
    assert m["psnr"][1].item() == pytest.approx(10 * math.log10(200**2 / 1e-6), abs=1e-4)  # 106.02 dB
    assert torch.allclose(m["psnr_255"].float(), torch.full((2,), 10 * math.log10(255**2 / 1e-6)))
    assert torch.allclose(m["fpsnr"].float(), torch.full((2,), 10 * math.log10(255**2 / 1e-6)))


def test_metric_values_by_hand():
    target, mask = _images()
    pred = (target + mask * (10 / 255)).clamp(0, 1)  # +10 grey levels inside the mask
    m = image_metrics(pred, target, mask)
    assert m["fg_ratio"].tolist() == pytest.approx([0.125, 0.125])
    assert m["mse"].tolist() == pytest.approx([100 * 0.125] * 2, rel=1e-5)
    assert m["fmse"].tolist() == pytest.approx([100.0, 100.0], rel=1e-5)
    # a soft edge: binarised at 0.5 the half-weight pixels leave the foreground
    soft = mask.clone()
    soft[:, :, 4:12, 8] = 0.4
    pred = (target + mask * (10 / 255)).clamp(0, 1)  # +10 only on the binary foreground
    m = image_metrics(pred, target, soft)
    assert m["fmse_binary"].tolist() == pytest.approx([100.0, 100.0], rel=1e-5)
    assert m["fmse"].tolist() == pytest.approx([100.0 * 32 / (32 + 8 * 0.4)] * 2, rel=1e-5)
    assert m["psnr"][1].item() == pytest.approx(10 * math.log10(200**2 / 12.5), rel=1e-5)
    assert m["psnr_255"][1].item() == pytest.approx(10 * math.log10(255**2 / 12.5), rel=1e-5)


def _rec(row, subset, mse, ratio):
    return {
        "row": row,
        "subset": subset,
        "name": f"{subset}_{mse}",
        "fg_ratio": ratio,
        "mse": mse,
        "fmse": 2 * mse,
        "psnr": 30.0,
        "psnr_255": 31.0,
        "fpsnr": 20.0,
        "fmse_binary": 2 * mse,
    }


def test_all_is_image_weighted_and_bins_follow_the_reference_edges():
    recs = [_rec("frih", "HCOCO", v, r) for v, r in ((1.0, 0.0), (2.0, 0.05), (3.0, 0.06))]
    recs += [_rec("frih", "Hday2night", 30.0, 0.15), _rec("frih", "Hday2night", 0.0, 0.9)]
    s = summarize(recs)["frih"]
    assert s["HCOCO"]["mse"] == pytest.approx(2.0) and s["Hday2night"]["mse"] == pytest.approx(15.0)
    assert s["All"]["mse"] == pytest.approx(36.0 / 5)  # mean over images, not (2 + 15) / 2
    assert s["All"]["count"] == 5
    assert [s[name]["count"] for name, _, _ in FG_BINS] == [2, 2, 1]  # 0.05 -> first bin, 0.15 -> second
    assert s["fg0-5"]["mse"] == pytest.approx(1.5)
    flat = flat_metrics({"frih": s}, "frih")
    assert flat["mse"] == pytest.approx(7.2) and flat["frih_fmse"] == pytest.approx(14.4)
    assert "| frih | All | 5 | 7.20 |" in format_table({"frih": s})


class _Shift(nn.Module):
    """A fake FRIH: coarse output = input, final = input shifted by +0.1 (normalised space)."""

    size_divisor = 4

    def forward(self, image, mask):
        return {"images": image + 0.1, "coarse": image}


def test_evaluate_harmonizer_rows_on_a_known_model():
    target, mask = _images()
    composite = target.clone()
    loader = [
        {
            "composite": composite,
            "mask": mask,
            "target": target,
            "subset": ["HCOCO", "HFlickr"],
            "name": ["c1_1_1.jpg", "f1_1_1.jpg"],
        }
    ]
    records, grid = evaluate_harmonizer(Harmonizer(_Shift()), loader, num_grid=1)
    summary = summarize(records)
    assert list(summary) == ["composite", "stage1", "frih"]
    assert summary["composite"]["All"]["mse"] == 0 and summary["stage1"]["All"]["mse"] == pytest.approx(0, abs=1e-6)
    # +0.1 in normalised space is +0.1 * std * 255 grey levels per channel (clamped at 255 for the saturated pixel)
    std = torch.tensor([0.229, 0.224, 0.225])
    expected = ((0.1 * std * 255) ** 2).mean().item()
    assert summary["frih"]["HFlickr"]["mse"] == pytest.approx(expected, rel=1e-3)
    assert len(grid) == 1 and set(grid[0]) >= {"composite", "stage1", "frih", "target", "mask"}
