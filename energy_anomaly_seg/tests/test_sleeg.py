"""Likelihood-guided refinement (Otsu), one SLEEG training step, test-time maps."""

import pytest
import torch
import torch.nn.functional as F

from energy_anomaly_seg import sleeg as sleeg_module
from energy_anomaly_seg.losses import jem_energy
from energy_anomaly_seg.model import create_sleeg
from energy_anomaly_seg.self_generated_anomalies import AnomalyPatchPool
from energy_anomaly_seg.sleeg import (
    SLEEGSettings,
    anomaly_score,
    otsu_threshold,
    predict_anomaly_maps,
    refine_anomaly_labels,
    sleeg_losses,
)


def otsu_reference(values, weight, nbins):
    """The released ``otsu_thresholding`` formulation: an (N, D, nbins) comparison tensor, float64."""
    v, w = values.double(), weight.double()
    mu = (v * w).sum(1, keepdim=True) / (w.sum(1, keepdim=True) + 1e-4)
    tmax = (v - (1 - w) * 1e5).amax(1, keepdim=True)
    tmin = (v + (1 - w) * 1e5).amin(1, keepdim=True)
    lattice = (tmax - tmin) / nbins * torch.arange(nbins, dtype=torch.float64)[None] + tmin
    cluster = (v[:, :, None] <= lattice[:, None, :]).double()
    w3, d3 = w[:, :, None], v[:, :, None]
    less = (cluster * d3 * w3).sum(1) / ((cluster * w3).sum(1) + 1e-4)
    more = ((1 - cluster) * d3 * w3).sum(1) / (((1 - cluster) * w3).sum(1) + 1e-4)
    sigma = (cluster * w3).sum(1) * (less - mu) ** 2 + ((1 - cluster) * w3).sum(1) * (more - mu) ** 2
    return lattice.gather(1, sigma.argmax(1, keepdim=True))


def test_otsu_picks_the_valley_of_a_bimodal_sample():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(3000, generator=g) * 0.5 - 2.0
    high = torch.randn(1000, generator=g) * 0.5 + 3.0
    threshold = otsu_threshold(torch.cat([low, high])[None], nbins=25).item()
    assert -0.5 < threshold < 1.5  # the valley between the modes at -2 and 3
    assert (low <= threshold).float().mean() > 0.99 and (high > threshold).float().mean() > 0.99


def test_otsu_equals_released_formulation_with_weights():
    g = torch.Generator().manual_seed(1)
    values = torch.randn(4, 500, generator=g) * torch.tensor([[1.0], [3.0], [0.2], [10.0]])
    weight = torch.rand(4, 500, generator=g) < 0.3
    ours = otsu_threshold(values, weight, 25)
    assert torch.allclose(ours.double(), otsu_reference(values, weight, 25), atol=1e-5)
    # unweighted entries do not move the threshold
    shifted = torch.where(weight, values, torch.full_like(values, 1e3))
    assert torch.equal(otsu_threshold(shifted, weight, 25), ours)
    assert otsu_threshold(values, torch.zeros_like(weight), 25).isneginf().all()


def test_refinement_ignores_only_low_scoring_pasted_pixels():
    score = torch.tensor([[[0.0, 0.1, 5.0, 5.2, 9.0, -3.0]]])
    labels = torch.tensor([[[1, 1, 1, 1, 0, 0]]])
    refined = refine_anomaly_labels(score, labels, nbins=25)
    assert refined.tolist() == [[[255, 255, 1, 1, 0, 0]]]


def _batch(seed=0, b=2, h=48, w=80):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g), torch.randint(0, 19, (b, h, w), generator=g)


def test_training_step_updates_only_the_ood_head():
    torch.manual_seed(0)
    model = create_sleeg("deeplabv3_r18_d8_test").train()
    images, labels = _batch()
    loss, logs = sleeg_losses(model, images, labels, AnomalyPatchPool(), torch.Generator().manual_seed(0),
                              SLEEGSettings(refine_warmup_iters=0), iteration=0)
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("patch_head"))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.patch_head.parameters())
    assert 0 < logs["kept_after_refine"] < 1 and 0 < logs["pasted_frac"] < 1
    assert logs["loss"] == pytest.approx(logs["loss_tae"] + 0.05 * logs["loss_tore"], rel=1e-5)


def test_refinement_warmup_uses_jem_alone(monkeypatch):
    seen = []
    original = sleeg_module.refine_anomaly_labels

    def spy(score, labels, nbins=25, ignore_index=255):
        seen.append(score.clone())
        return original(score, labels, nbins, ignore_index)

    monkeypatch.setattr(sleeg_module, "refine_anomaly_labels", spy)
    torch.manual_seed(0)
    model = create_sleeg("deeplabv3_r18_d8_test").eval()  # deterministic head (no dropout, BN running stats)
    images, labels = _batch(1)
    settings = SLEEGSettings(refine_warmup_iters=10, refine_head_weight=0.5, noise_ratio=0.0)
    for iteration in (9, 10):
        sleeg_losses(model, images, labels, AnomalyPatchPool(), torch.Generator().manual_seed(3), settings, iteration)
    # same pastes (same generator seed): recompute JEM and h[1] on the pasted batch
    pool, g = AnomalyPatchPool(), torch.Generator().manual_seed(3)
    pool.add(images, g)
    pasted, _, _, _ = pool.paste(images, labels, g, 10, 0.0)
    with torch.no_grad():
        out = model(pasted)
        size = labels.shape[-2:]
        jem = jem_energy(F.interpolate(out["seg_logits"], size=size, mode="bilinear", align_corners=False))
        h1 = F.interpolate(out["ood_logits"], size=size, mode="bilinear", align_corners=False)[:, 1]
    assert torch.allclose(seen[0], jem, atol=1e-5)  # iteration 9 < 10: JEM alone
    assert torch.allclose(seen[1], jem + 0.5 * h1, atol=1e-5)


def test_predict_maps_single_pass_matches_direct_computation():
    torch.manual_seed(0)
    model = create_sleeg("deeplabv3_r18_d8_test").eval()
    image = torch.randint(0, 256, (3, 40, 72), dtype=torch.uint8)
    maps = predict_anomaly_maps(model, image, img_scale=(72, 40), scales=[1.0], flip=False)
    x = sleeg_module.normalize_image(image)[None]
    out = model(x)

    def up(t):
        return F.interpolate(t, size=(40, 72), mode="bilinear", align_corners=False)

    assert torch.allclose(maps["energy"], up(up(jem_energy(out["seg_logits"])[:, None]))[0, 0], atol=1e-5)
    sleeg = anomaly_score(out["seg_logits"], out["ood_logits"], "sleeg", "paper", 0.5)
    assert torch.allclose(maps["sleeg"], up(up(sleeg[:, None]))[0, 0], atol=1e-5)
    assert torch.allclose(maps["msp"], 1 - up(out["seg_logits"]).softmax(1).amax(1)[0], atol=1e-5)
    full = predict_anomaly_maps(model, image, img_scale=(72, 40))
    assert all(full[k].shape == (40, 72) for k in ("msp", "energy", "sleeg", "pred"))
    assert not torch.allclose(full["sleeg"], maps["sleeg"])  # 8 passes averaged
