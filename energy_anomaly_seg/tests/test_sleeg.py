"""Likelihood-guided refinement (Otsu), one SLEEG training step, test-time maps."""

import pytest
import torch
import torch.nn.functional as F

from energy_anomaly_seg import sleeg as sleeg_module
from energy_anomaly_seg.losses import jem_energy
from energy_anomaly_seg.model import create_model
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
    model = create_model("deeplabv3_r18_d8_test").train()
    images, labels = _batch()
    loss, logs = sleeg_losses(
        model,
        images,
        labels,
        AnomalyPatchPool(),
        torch.Generator().manual_seed(0),
        SLEEGSettings(refine_warmup_iters=0),
        iteration=0,
    )
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("patch_head"))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.patch_head.parameters())
    assert 0 < logs["kept_after_refine"] < 1 and 0 < logs["pasted_frac"] < 1
    assert logs["loss"] == pytest.approx(logs["loss_tae"] + 0.05 * logs["loss_tore"], rel=1e-5)


class _FixedOutputs(torch.nn.Module):
    """Stands in for SLEEG in ``sleeg_losses``: fixed segmentation logits and OoD-head logits at label resolution
    (bilinear resizing to the same size is the identity), features that depend on the input only through 0 * x."""

    def __init__(self, seg_logits, ood_logits):
        super().__init__()
        self.seg_logits, self.ood_logits = seg_logits, ood_logits
        self.patch_head = torch.nn.Module()
        self.patch_head.in_index = 0
        self.patch_head.forward = lambda feat: self.ood_logits + 0 * feat.sum()

    def forward_features(self, x):
        return [x.sum() * 0]

    def forward_head(self, feats):
        return self.seg_logits + 0 * feats[0]

    def forward_ood(self, feats):
        return self.patch_head(feats[self.patch_head.in_index])


class _FixedPastes:
    """A patch pool whose pastes are given: the first image row pasted (label 1), the second normal (0)."""

    def __init__(self, ood_labels):
        self.ood_labels = ood_labels

    def add(self, images, generator):
        pass

    def paste(self, images, seg_labels, generator, n, noise_ratio):
        coverage = (self.ood_labels == 1).to(torch.int64)
        return images.clone(), seg_labels, self.ood_labels.clone(), type("Paste", (), {"coverage": coverage})()


# One image, labels 2 x 4: pasted pixels in row 0, normal pixels in row 1. A single segmentation class with logit v
# gives JEM = -logsumexp = -v exactly.
JEM = torch.tensor([[[0.0, 1.0, 4.0, 5.0], [-3.0, -3.0, -3.0, -3.0]]])
H0 = torch.tensor([[[20.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
H1 = torch.tensor([[[10.0, 12.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
PASTED = torch.tensor([[[1, 1, 1, 1], [0, 0, 0, 0]]])
# hand-computed per-image Otsu splits (25 bins) of the pasted pixels' scores:
#   JEM                    [0, 1, 4, 5]                  -> {0, 1} | {4, 5}: pixels 0, 1 ignored
#   A(x) = log_softmax(h)[1] + 0.5 (h1 + JEM)
#                          [-5.00005, 6.49999, 1.30685, 1.80685] -> {-5} | rest: pixel 0 ignored
#   JEM + 0.5 h1           [5, 7, 4, 5]                  -> {4, 5, 5} | {7}: pixels 0, 2, 3 ignored
MASK_JEM = [[255, 255, 1, 1], [0, 0, 0, 0]]
MASK_A = [[255, 1, 1, 1], [0, 0, 0, 0]]
MASK_HEAD_PLUS_ENERGY = [[255, 1, 255, 255], [0, 0, 0, 0]]
GUIDE_ENERGY = JEM[0].tolist()
GUIDE_HEAD_PLUS_ENERGY = [[5.0, 7.0, 4.0, 5.0], [-3.0, -3.0, -3.0, -3.0]]


def _released_path_step(monkeypatch, iteration, **settings):
    """One ``sleeg_losses`` step on the fixed outputs; returns (labels, guide) seen by the TORE loss and the logs."""
    seen = {}
    original = sleeg_module.task_oriented_residual_loss

    def spy(anomaly_logit, guide_score, ood_labels, margin):
        seen.update(labels=ood_labels.tolist(), guide=guide_score.tolist(), h1=anomaly_logit.tolist())
        return original(anomaly_logit, guide_score, ood_labels, margin)

    monkeypatch.setattr(sleeg_module, "task_oriented_residual_loss", spy)
    model = _FixedOutputs(-JEM[:, None], torch.stack([H0, H1], dim=1))
    images = torch.zeros(1, 3, 2, 4)
    _, logs = sleeg_losses(
        model,
        images,
        torch.zeros(1, 2, 4, dtype=torch.long),
        _FixedPastes(PASTED),
        torch.Generator(),
        SLEEGSettings(noise_ratio=0.0, **settings),
        iteration,
    )
    assert seen["h1"][0] == H1[0].tolist()
    return seen["labels"][0], seen["guide"][0], logs


@pytest.mark.parametrize(
    "refine_score, tore_guide, iteration, mask, guide",
    [
        ("paper", "energy", 9, MASK_JEM, GUIDE_ENERGY),  # paper, warm-up: JEM
        ("paper", "energy", 10, MASK_A, GUIDE_ENERGY),  # paper after the warm-up: A(x) of eq. 9
        ("released", "energy", 0, MASK_JEM, GUIDE_ENERGY),  # released forward: parent class's energy score
        ("released", "energy", 10_000, MASK_JEM, GUIDE_ENERGY),  # ... for the whole run
        ("head_plus_energy", "energy", 9, MASK_JEM, GUIDE_ENERGY),
        ("head_plus_energy", "head_plus_energy", 10, MASK_HEAD_PLUS_ENERGY, GUIDE_HEAD_PLUS_ENERGY),
        ("paper", "head_plus_energy", 10, MASK_A, GUIDE_HEAD_PLUS_ENERGY),
    ],
)
def test_refinement_mask_and_tore_guide_follow_the_setting(
    monkeypatch, refine_score, tore_guide, iteration, mask, guide
):
    labels, seen_guide, logs = _released_path_step(
        monkeypatch, iteration, refine_score=refine_score, tore_guide=tore_guide, refine_warmup_iters=10, margin=15.0
    )
    assert labels == mask
    assert torch.allclose(torch.tensor(seen_guide), torch.tensor(guide), atol=1e-6)
    # the hinge by hand: mean over normal pixels - mean over kept pasted pixels of h1 + guide, plus the margin
    m = (H1[0] + torch.tensor(guide)).flatten()
    flat = torch.tensor(mask).flatten()
    expected = max(0.0, float(m[flat == 0].mean() - m[flat == 1].mean()) + 15.0)
    assert logs["loss_tore"] == pytest.approx(expected, rel=1e-5)
    assert logs["kept_after_refine"] == pytest.approx(sum(v == 1 for v in mask[0]) / 4)


def test_released_nudge_pass_refines_the_labels_a_second_time(monkeypatch):
    """The released forward overwrites ood_seg with the nudge pass's refined labels and refines them again in the
    real pass: Otsu over the kept JEM values {4, 5} drops 4 as well."""
    labels, guide, _ = _released_path_step(monkeypatch, 0, refine_score="released", input_grad_nudge=True)
    assert labels == [[255, 255, 255, 1], [0, 0, 0, 0]]
    assert torch.allclose(torch.tensor(guide), torch.tensor(GUIDE_ENERGY))


def test_unknown_refine_score_or_tore_guide_is_an_error(capsys):
    with pytest.raises(ValueError, match="refine_score"):
        SLEEGSettings(refine_score="jem")
    with pytest.raises(ValueError, match="tore_guide"):
        SLEEGSettings(tore_guide="paper")
    from energy_anomaly_seg.train import TrainConfig
    from shared.config import parse_config

    for flags, message in (
        (
            ["--objective.refine_score", "jem"],
            "'objective.refine_score': expected one of 'paper', 'released', 'head_plus_energy'",
        ),
        (["--objective.tore_guide", "paper"], "'objective.tore_guide': expected one of 'energy', 'head_plus_energy'"),
        (["--objective.tore_head_weight", "0.5"], "tore_head_weight"),
    ):  # the old keys are gone
        with pytest.raises(SystemExit):
            parse_config(TrainConfig, flags)
        assert message in capsys.readouterr().err


def test_predict_maps_single_pass_matches_direct_computation():
    torch.manual_seed(0)
    model = create_model("deeplabv3_r18_d8_test").eval()
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
