"""ECE before/after calibration on constructed detections, the reliability diagram, pseudo-box precision."""

import math

import pytest
import torch

from calibrated_teacher.calibration import ScoreCalibrator
from calibrated_teacher.engine import calibration_quality, pseudo_box_precision, reliability_diagram
from shared.metrics import expected_calibration_error


def test_calibration_quality_matches_by_same_class_iou_above_0_75(tmp_path):
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}
    output = {
        "boxes": torch.tensor(
            [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 10.0, 20.0]]
        ),
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.3]),
        "labels": torch.tensor([1, 2, 1, 1]),
    }  # correct, wrong class, IoU 0.83 correct, below ori_thr (left out)
    cal = ScoreCalibrator()
    cal.a, cal.b, cal.fitted = 1.0, -1.0, True
    q = calibration_quality([(output, target)], cal, ori_thr=0.4)
    assert q["num"] == 3 and q["correct"].tolist() == [True, False, True]
    assert q["ece_raw"] == pytest.approx(expected_calibration_error([0.9, 0.8, 0.7], [1, 0, 1], n_bins=20))
    calibrated = torch.sigmoid(torch.logit(torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)) - 1)
    assert q["ece_calibrated"] == pytest.approx(expected_calibration_error(calibrated, [1, 0, 1], n_bins=20), rel=1e-5)
    path = reliability_diagram(q, tmp_path / "r.png")
    assert path.stat().st_size > 1000


def test_pseudo_box_precision_at_equal_count():
    # step, raw, calibrated, correct, kept; the calibrator changed between step 1 and 2
    table = torch.tensor(
        [
            [0, 0.9, float("nan"), 1, 1],  # before the first fit: counted in merged_total only
            [1, 0.8, 0.75, 1, 1],
            [1, 0.6, 0.50, 0, 0],
            [2, 0.5, 0.72, 1, 1],  # later calibrator: a lower raw score is now trusted
            [2, 0.7, 0.60, 0, 0],
        ]
    )
    out = pseudo_box_precision(table)
    assert out["merged_total"] == 3 and out["merged_precision"] == 1.0
    assert out["kept"] == 2 and out["precision_calibrated"] == 1.0
    assert out["precision_raw_equal_count"] == 0.5  # raw top-2: 0.8 (correct), 0.7 (wrong)
    assert math.isnan(pseudo_box_precision(torch.zeros(0, 5))["precision_calibrated"])
