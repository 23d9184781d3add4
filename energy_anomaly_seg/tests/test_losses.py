"""JEM energy, the TAE cross-entropy and the TORE hinge against hand computations."""

import math

import pytest
import torch

from energy_anomaly_seg.losses import cross_entropy, jem_energy, task_oriented_residual_loss
from energy_anomaly_seg.sleeg import anomaly_score


def test_jem_is_negative_logsumexp():
    logits = torch.tensor([[[[1.0]], [[2.0]], [[-3.0]]]])  # (1, 3, 1, 1)
    expected = -math.log(math.exp(1.0) + math.exp(2.0) + math.exp(-3.0))
    assert jem_energy(logits).item() == pytest.approx(expected, abs=1e-6)
    big = torch.randn(2, 19, 5, 7) * 30  # stable where a naive exp would overflow in float32
    naive = -torch.log(torch.exp(big.double()).sum(1))
    assert torch.allclose(jem_energy(big).double(), naive, atol=1e-4)
    assert torch.allclose(anomaly_score(big, None, "energy"), jem_energy(big))


def test_score_formulas_by_hand():
    seg = torch.tensor([[[[0.5]], [[1.5]]]])
    ood = torch.tensor([[[[0.2]], [[1.2]]]])
    jem = -math.log(math.exp(0.5) + math.exp(1.5))
    log_p1 = 1.2 - math.log(math.exp(0.2) + math.exp(1.2))
    assert anomaly_score(seg, ood, "sleeg", "paper", 0.5).item() == pytest.approx(log_p1 + 0.5 * (1.2 + jem), 1e-6)
    assert anomaly_score(seg, ood, "sleeg", "code", 0.3).item() == pytest.approx(0.3 * 1.2 + 1 + jem, 1e-6)
    msp = 1 - math.exp(1.5) / (math.exp(0.5) + math.exp(1.5))
    assert anomaly_score(seg, ood, "msp").item() == pytest.approx(msp, 1e-6)


def test_cross_entropy_averaging_with_ignore():
    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]]]])  # (1, 2, 1, 3)
    labels = torch.tensor([[[0, 1, 255]]])
    l0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    l1 = -math.log(math.e / (1 + math.e))
    assert cross_entropy(logits, labels, average="all").item() == pytest.approx((l0 + l1) / 3, 1e-6)
    assert cross_entropy(logits, labels, average="valid").item() == pytest.approx((l0 + l1) / 2, 1e-6)


def test_tore_hinge_equals_hand_computation_and_stops_gradient():
    # two images of four pixels; labels 0 normal, 1 anomaly, 255 ignored
    h1 = torch.tensor([[1.0, 2.0, 5.0, 0.0], [0.0, 1.0, 2.0, 3.0]], requires_grad=True)
    jem = torch.tensor([[-4.0, -4.0, -1.0, -3.0], [-2.0, -2.0, -2.0, -2.0]], requires_grad=True)
    labels = torch.tensor([[0, 0, 1, 255], [0, 1, 1, 1]])
    guide = jem + 0.5 * h1  # the released code's combined score; it enters under stop-gradient
    loss = task_oriented_residual_loss(h1, guide, labels, margin=15.0)
    m = (h1 + guide).detach()
    img0 = m[0, :2].mean() - m[0, 2] + 15
    img1 = m[1, 0] - m[1, 1:].mean() + 15
    assert img0.item() == pytest.approx(((1 - 4 + 0.5) + (2 - 4 + 1)) / 2 - (5 - 1 + 2.5) + 15)
    assert loss.item() == pytest.approx((max(img0.item(), 0) + max(img1.item(), 0)) / 2, 1e-6)
    loss.backward()
    # d loss / d h1: only the direct term (coefficient 1, not 1.5): +1/(2 n0), -1/(2 n1) per image, 0 when ignored
    expected = torch.tensor([[0.25, 0.25, -0.5, 0.0], [0.5, -1 / 6, -1 / 6, -1 / 6]])
    assert torch.allclose(h1.grad, expected, atol=1e-7)
    assert jem.grad is None  # nothing flows through the stop-gradient branch


def test_tore_hinge_inactive_beyond_margin():
    h1 = torch.tensor([[0.0, 30.0]], requires_grad=True)
    loss = task_oriented_residual_loss(h1, torch.zeros(1, 2), torch.tensor([[0, 1]]), margin=15.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(h1.grad) == 0
