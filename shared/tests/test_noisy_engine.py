"""shared.noisy: DivideMix building blocks against hand computations, GMM split, SimCLR loss, backbones, SSL loading."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared.noisy.dividemix import (
    co_guess,
    co_refine,
    gmm_clean_probability,
    linear_rampup,
    mixmatch,
    mixmatch_lambda,
    mixmatch_losses,
    neg_entropy,
    sharpen,
    uniform_prior_penalty,
)
from shared.noisy.features import extract_features
from shared.noisy.models import PreActResNet18, preact_resnet18, resnet50_noisy
from shared.noisy.simclr import SimCLR, SimCLRAugment, load_ssl_checkpoint, nt_xent_loss
from shared.testing import single_torch_thread  # noqa: F401  (autouse fixture)


def test_sharpen_matches_hand_computation():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    expected = torch.tensor([0.25, 0.09, 0.04]) / 0.38  # p^2 / sum p^2 at T = 0.5
    assert torch.allclose(sharpen(p, 0.5), expected.unsqueeze(0))
    assert torch.allclose(sharpen(p, 1.0), p)


def test_mixmatch_lambda_is_max_of_l_and_one_minus_l():
    for lam in (0.0, 0.1, 0.3, 0.5, 0.7, 1.0):
        assert mixmatch_lambda(lam) == max(lam, 1 - lam)
    t = torch.tensor([0.2, 0.8, 0.45])
    assert torch.equal(mixmatch_lambda(t), torch.tensor([0.8, 0.8, 0.55]))
    np.random.seed(0)
    x, y = torch.randn(8, 3), F.one_hot(torch.arange(8) % 3, 3).float()
    for _ in range(20):
        _mixed_x, mixed_y, lam = mixmatch(x, y, alpha=4.0)
        assert lam >= 0.5
        assert torch.allclose(mixed_y.sum(1), torch.ones(8))


def test_mixmatch_losses_and_penalties_match_hand_computation():
    logits_x = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets_x = torch.tensor([[0.75, 0.25], [0.0, 1.0]])
    logits_u = torch.tensor([[0.0, 0.0]])
    targets_u = torch.tensor([[1.0, 0.0]])
    lx, lu = mixmatch_losses(logits_x, targets_x, logits_u, targets_u)
    ls = [
        [2 - math.log(math.exp(2) + 1), -math.log(math.exp(2) + 1)],
        [-math.log(1 + math.e), 1 - math.log(1 + math.e)],
    ]
    expected_lx = -(0.75 * ls[0][0] + 0.25 * ls[0][1] + ls[1][1]) / 2
    assert lx.item() == pytest.approx(expected_lx, rel=1e-6)
    assert lu.item() == pytest.approx((0.25 + 0.25) / 2, rel=1e-6)  # (0.5-1)^2, (0.5-0)^2 over 2 entries
    # uniform prior penalty: KL(u || mean softmax)
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # softmax rows (0.75, 0.25), (0.5, 0.5)
    mean = [0.625, 0.375]
    expected = 0.5 * math.log(0.5 / mean[0]) + 0.5 * math.log(0.5 / mean[1])
    assert uniform_prior_penalty(logits).item() == pytest.approx(expected, rel=1e-6)
    expected_ne = ((0.75 * math.log(0.75) + 0.25 * math.log(0.25)) + 2 * 0.5 * math.log(0.5)) / 2
    assert neg_entropy(logits).item() == pytest.approx(expected_ne, rel=1e-6)


def test_linear_rampup():
    assert linear_rampup(5, 10, 25) == 0
    assert linear_rampup(18, 10, 25) == pytest.approx(25 * 8 / 16)
    assert linear_rampup(40, 10, 25) == 25


def test_co_refine_and_co_guess():
    y = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.2, 0.8]])
    w = torch.tensor([0.5])
    mixed = torch.tensor([0.6, 0.4])
    assert torch.allclose(co_refine(y, w, p, 0.5), (mixed**2 / (mixed**2).sum()).unsqueeze(0))
    probs = [
        torch.tensor([[0.6, 0.4]]),
        torch.tensor([[0.4, 0.6]]),
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([[0.6, 0.4]]),
    ]
    m = torch.tensor([0.65, 0.35])
    assert torch.allclose(co_guess(probs, 0.5), (m**2 / (m**2).sum()).unsqueeze(0))


def test_gmm_separates_two_planted_loss_populations():
    rng = np.random.default_rng(0)
    clean = rng.normal(0.3, 0.1, 800).clip(0)
    noisy = rng.normal(3.0, 0.5, 200)
    losses = torch.tensor(np.concatenate([clean, noisy]))
    prob = gmm_clean_probability(losses)
    assert prob.shape == (1000,)
    assert (prob[:800] > 0.5).mean() > 0.99
    assert (prob[800:] < 0.5).mean() > 0.99


def test_nt_xent_matches_a_brute_force_loop():
    torch.manual_seed(0)
    z1, z2 = torch.randn(4, 5), torch.randn(4, 5)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for i in range(8):
        j = (i + 4) % 8
        den = sum(math.exp(float(z[i] @ z[k]) / 0.5) for k in range(8) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / 0.5) / den)
    assert nt_xent_loss(z1, z2, 0.5).item() == pytest.approx(total / 8, rel=1e-5)


def test_simclr_augment_is_batched_and_keeps_shape():
    torch.manual_seed(0)
    aug = SimCLRAugment((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.rand(6, 3, 16, 16)
    a, b = aug(x), aug(x)
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert not torch.allclose(a, b)


def test_preact_resnet18_parameter_count_and_features():
    model = preact_resnet18(num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.17e6, rel=2e-3)
    tiny = PreActResNet18(num_classes=10, width=4).eval()
    x = torch.randn(3, 3, 16, 16)
    logits, feats = tiny(x, return_features=True)
    assert logits.shape == (3, 10) and feats.shape == (3, 32) and tiny.num_features == 32
    assert torch.allclose(extract_features(tiny, x, None, batch_size=2), feats, atol=1e-6)


def test_load_ssl_checkpoint_strips_moco_and_simclr_prefixes(tmp_path):
    torch.manual_seed(0)
    source = PreActResNet18(num_classes=0, width=4)
    moco = {f"module.encoder_q.{k}": v for k, v in source.state_dict().items()}
    moco["module.encoder_q.fc.weight"] = torch.zeros(3, 3)  # MoCo projection head: dropped
    moco["queue"] = torch.zeros(2)
    torch.save({"state_dict": moco}, tmp_path / "moco.pth")
    target = PreActResNet18(num_classes=7, width=4)
    left = load_ssl_checkpoint(target, tmp_path / "moco.pth")
    assert left == ["linear.weight", "linear.bias"]
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v)
    torch.save(SimCLR(source, 8).state_dict(), tmp_path / "simclr.pt")
    load_ssl_checkpoint(PreActResNet18(num_classes=3, width=4), tmp_path / "simclr.pt")
    with pytest.raises(ValueError, match="backbone weights missing"):
        load_ssl_checkpoint(PreActResNet18(num_classes=3, width=8), tmp_path / "simclr.pt")
    with pytest.raises(FileNotFoundError, match="SSL checkpoint not found"):
        load_ssl_checkpoint(target, tmp_path / "nope.pt")


def test_resnet50_backbone_feature_output():
    model = resnet50_noisy(num_classes=14).eval()
    with torch.no_grad():
        logits, feats = model(torch.randn(1, 3, 64, 64), return_features=True)
    assert logits.shape == (1, 14) and feats.shape == (1, 2048)
