"""Platt / temperature scaling by maximum likelihood, the calibration-set rule and the rolling buffer."""

import pytest
import torch

from calibrated_teacher.calibration import CalibrationBuffer, ScoreCalibrator, calibration_set, logit
from shared.metrics import expected_calibration_error


def _synthetic(a: float, b: float, n: int = 20000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    p = torch.sigmoid(a * logit(scores) + b)
    return scores, torch.rand(n, generator=g, dtype=torch.float64) < p


def test_platt_fit_recovers_known_a_b():
    scores, labels = _synthetic(2.0, -1.0)
    cal = ScoreCalibrator("platt")
    assert cal.fit(scores, labels)
    assert cal.a == pytest.approx(2.0, abs=0.08) and cal.b == pytest.approx(-1.0, abs=0.06)


def test_platt_fit_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    scores, labels = _synthetic(0.7, 0.4, n=3000, seed=1)
    cal = ScoreCalibrator("platt")
    cal.fit(scores, labels)
    ref = LogisticRegression(C=1e10, tol=1e-10, max_iter=1000).fit(logit(scores)[:, None].numpy(), labels.numpy())
    assert cal.a == pytest.approx(float(ref.coef_[0, 0]), abs=1e-4)
    assert cal.b == pytest.approx(float(ref.intercept_[0]), abs=1e-4)


def test_temperature_fit_recovers_known_temperature_and_has_no_bias():
    scores, labels = _synthetic(0.5, 0.0, seed=2)
    cal = ScoreCalibrator("temperature")
    assert cal.fit(scores, labels)
    assert cal.temperature == pytest.approx(2.0, rel=0.05) and cal.b == 0.0


def test_calibration_lowers_ece_of_over_confident_scores():
    scores, labels = _synthetic(0.5, -1.0, seed=3)
    cal = ScoreCalibrator()
    cal.fit(scores[:10000], labels[:10000])
    before = expected_calibration_error(scores[10000:], labels[10000:], n_bins=20)
    after = expected_calibration_error(cal(scores[10000:]), labels[10000:], n_bins=20)
    assert before > 0.1 and after < 0.02


def test_fit_is_skipped_without_both_labels():
    cal = ScoreCalibrator()
    assert not cal.fit(torch.tensor([0.5, 0.6]), torch.tensor([True, True]))
    assert not cal.fitted and cal(torch.tensor([0.3])).item() == pytest.approx(0.3)


def test_robust_fit_stays_finite_on_a_few_separable_pairs_where_mle_diverges():
    # every correct pair scores above every wrong one: the likelihood has no maximum (a -> infinity)
    scores = torch.tensor([0.41, 0.43, 0.45, 0.47, 0.49, 0.52, 0.55, 0.58, 0.61, 0.65] * 2)
    correct = scores > 0.5
    mle, robust = ScoreCalibrator(), ScoreCalibrator(fit="robust", min_pairs=20)
    assert mle.fit(scores, correct) and robust.fit(scores, correct)
    assert mle.a > 50  # the released fit runs away
    assert 0 < robust.a < 50
    # Platt's targets bound the calibrated probabilities away from 0 and 1
    p = robust(torch.tensor([0.41, 0.65]))
    assert 0.0 < p[0] < 0.2 and 0.8 < p[1] < 1.0


def test_robust_fit_needs_min_pairs_and_an_increasing_map():
    cal = ScoreCalibrator(fit="robust", min_pairs=20)
    few = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([False, True, True])
    assert not cal.fit(*few) and not cal.fitted
    scores, labels = _synthetic(2.0, -1.0, n=400, seed=4)
    assert cal.fit(scores, labels) and cal.a > 0
    fitted = cal.state_dict()
    # higher scores wrong more often: a decreasing map would rank the teacher's boxes backwards; the fit is refused
    # and the previous calibrator stays
    assert not cal.fit(scores, ~labels)
    assert cal.state_dict() == fitted
    assert ScoreCalibrator().fit(scores, ~labels)  # the released MLE fit accepts it


def test_robust_fit_equals_mle_on_a_large_window():
    scores, labels = _synthetic(2.0, -1.0)
    mle, robust = ScoreCalibrator(), ScoreCalibrator(fit="robust")
    mle.fit(scores, labels)
    robust.fit(scores, labels)
    assert robust.a == pytest.approx(mle.a, abs=2e-3) and robust.b == pytest.approx(mle.b, abs=2e-3)


def test_calibration_set_rule_on_a_constructed_example():
    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0], [200.0, 200.0, 300.0, 300.0]])
    gt_labels = torch.tensor([0, 1])
    det = torch.tensor(
        [
            [0.0, 5.0, 100.0, 105.0],  # same class, IoU 0.905 -> in the set, correct
            [0.0, 20.0, 100.0, 120.0],  # same class, IoU 0.667 -> in the set (> 0.5), not correct (<= 0.75)
            [0.0, 5.0, 100.0, 105.0],  # other class, IoU 0.905 > 0.75 -> in the set, not correct
            [0.0, 40.0, 100.0, 140.0],  # other class, IoU 0.43 -> out
            [500.0, 500.0, 560.0, 560.0],  # unannotated region -> out (may be a missing annotation)
            [210.0, 210.0, 240.0, 240.0],  # inside a same-class annotation: IoF 1 -> in the set, not correct
        ]
    )
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    in_set, correct = calibration_set(det, labels, gt, gt_labels)
    assert in_set.tolist() == [True, True, True, False, False, True]
    assert correct.tolist() == [True, False, False, False, False, False]


def test_buffer_keeps_the_last_window_of_iterations():
    buffer = CalibrationBuffer(window=3)
    for step in range(6):
        buffer.add(step, torch.full((2,), step / 10), torch.tensor([True, False]))
    scores, correct = buffer.window_data(5)
    assert sorted(set((scores * 10).round().int().tolist())) == [3, 4, 5] and len(correct) == 6
    state = buffer.state_dict()
    other = CalibrationBuffer(window=3)
    other.load_state_dict(state)
    assert torch.equal(other.scores, buffer.scores)
