"""FN-MSE against hand computations, including the A_min floor, and the FRIH loss composition."""

import pytest
import torch

from frih.losses import FNMSELoss, FRIHLoss, fn_mse


def _pair():
    target = torch.zeros(2, 3, 20, 20)
    pred = target.clone()
    pred[0] += 0.5  # sample 0: error 0.5 everywhere -> sum of squares 0.25 * 1200 = 300
    pred[1] += 1.0  # sample 1: error 1 everywhere -> sum 1200
    mask = torch.zeros(2, 1, 20, 20)
    mask[0, :, :15, :] = 1.0  # area 300 (> A_min = 100)
    mask[1, :, :2, :10] = 1.0  # area 20 (< A_min): the floor applies
    return pred, target, mask


def test_fn_mse_matches_hand_computation_with_the_area_floor():
    pred, target, mask = _pair()
    # 300 / (3 * 300) and 1200 / (3 * max(20, 100))
    assert torch.allclose(fn_mse(pred, target, mask, min_area=100.0), torch.tensor([1 / 3, 4.0]))
    # iSSAM's A_min = 1000 floors both
    assert torch.allclose(fn_mse(pred, target, mask, min_area=1000.0), torch.tensor([0.1, 0.4]))
    # without a floor the small mask gives 1200 / 60
    assert torch.allclose(fn_mse(pred, target, mask, min_area=0.0), torch.tensor([1 / 3, 20.0]))
    assert torch.allclose(FNMSELoss(100.0)(pred, target, mask), torch.tensor((1 / 3 + 4.0) / 2))


def test_soft_mask_counts_fractionally_and_restriction():
    pred, target, mask = _pair()
    soft = mask * 0.5  # area 150 and 10
    assert torch.allclose(fn_mse(pred, target, soft, 100.0), torch.tensor([300 / 450, 1200 / 300]))
    # restricted to the mask: only the foreground error counts (0.25 * 3 * 300 * 1.0 for sample 0)
    assert torch.allclose(fn_mse(pred, target, mask, 100.0, restrict_to_mask=True), torch.tensor([225 / 900, 60 / 300]))


def test_frih_loss_sums_weighted_terms():
    pred, target, mask = _pair()
    coarse = target + 0.25
    outputs = {
        "images": pred,
        "coarse": coarse,
        "module_images": [pred, coarse],
        "submasks": torch.cat([mask, torch.zeros_like(mask)], 1),
    }
    final = fn_mse(pred, target, mask).mean()
    coarse_term = fn_mse(coarse, target, mask).mean()
    total, parts = FRIHLoss(100.0, final_weight=1.0, coarse_weight=0.5)(outputs, target, mask)
    assert torch.allclose(total, final + 0.5 * coarse_term)
    assert set(parts) == {"final", "coarse"}
    total, parts = FRIHLoss(100.0, coarse_weight=0.0, module_weight=2.0)(outputs, target, mask)
    module_term = (fn_mse(pred, target, mask, restrict_to_mask=True).mean() + 0.0) / 2  # module 2's submask is empty
    assert torch.allclose(total, final + 2.0 * module_term)
    assert parts["modules"] == pytest.approx(float(module_term))
    # a stage-1-only model's output has no "coarse": only the final term
    total, parts = FRIHLoss()({"images": pred}, target, mask)
    assert torch.allclose(total, final) and set(parts) == {"final"}


def test_shape_errors():
    pred, target, mask = _pair()
    with pytest.raises(ValueError, match="differ"):
        fn_mse(pred, target[:, :, :10], mask)
    with pytest.raises(ValueError, match="mask must be"):
        fn_mse(pred, target, mask[:, 0])
