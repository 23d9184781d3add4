"""Adversarial masking (Eq. 5), label modulation (Eq. 7), reconstruction loss (Eq. 10): the sheet's unit checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anm.losses import reconstruction_loss
from anm.masking import MaskerConfig, attention_map, box_sizes, mask_images, masking_ratio, modulate_labels
from anm.model import create_model


def _hot_fmap(batch: int, positions: list[tuple[int, int]], cold: list[tuple[int, int]] | None = None) -> torch.Tensor:
    fmap = torch.full((batch, 8, 4, 4), 1.0)
    for b, (r, c) in enumerate(positions):
        fmap[b, :, r, c] = 5.0
    for b, (r, c) in enumerate(cold or []):
        fmap[b, :, r, c] = 0.0
    return fmap


def test_box_sits_at_the_argmax_of_sum_of_squared_features() -> None:
    gen = torch.Generator().manual_seed(0)
    hot, cold = [(1, 2), (0, 0), (2, 1)], [(3, 3), (2, 2), (0, 3)]
    fmap = _hot_fmap(3, hot, cold)
    images = torch.zeros(3, 3, 32, 32)
    out = mask_images(images, fmap, torch.full((3,), 0.5), MaskerConfig(), gen)
    # independent reference: sum_c F^2 upsampled, first maximum in raster order
    ref = F.interpolate((fmap**2).sum(1, keepdim=True), size=(32, 32), mode="bilinear", align_corners=False)
    top, left, h, w = out.box_max
    for b in range(3):
        row, col = divmod(int(ref[b, 0].flatten().argmax()), 32)
        assert (int(top[b]), int(left[b])) == (min(row, 32 - int(h[b])), min(col, 32 - int(w[b])))
        assert (row // 8, col // 8) == hot[b]  # inside the hot cell of the 4 x 4 map
        erased = (out.x_max[b] != 0).any(0)
        assert erased[top[b] : top[b] + h[b], left[b] : left[b] + w[b]].all()
        assert int(erased.sum()) == int(h[b] * w[b])  # nothing outside the box changed
        row_min, col_min = divmod(int(ref[b, 0].flatten().argmin()), 32)
        assert (row_min // 8, col_min // 8) == cold[b]
        assert int(out.box_min[0][b]) == min(row_min, 32 - int(h[b]))


def test_box_overflowing_the_image_is_shifted_inside() -> None:
    fmap = _hot_fmap(2, [(3, 3), (3, 0)])
    cfg = MaskerConfig(ratio_low=0.1, ratio_high=0.1, quality_coef=0.0)
    out = mask_images(torch.zeros(2, 3, 32, 32), fmap, torch.ones(2), cfg, torch.Generator().manual_seed(1))
    top, left, h, w = out.box_max
    assert (top + h == 32).all()
    assert left[0] + w[0] == 32 and left[1] == 0


def test_box_area_within_the_paper_range() -> None:
    gen = torch.Generator().manual_seed(0)
    cfg = MaskerConfig()
    w = torch.rand(20000, generator=gen)
    w[:100], w[100:200] = 0.0, 1.0
    ratio = masking_ratio(w, cfg, gen)
    assert ratio.min() >= 0.02 and ratio.max() <= 0.10
    for side in (32, 16):
        area = 0.5 * ratio * side * side  # the target area of each box
        assert area.min() >= 0.5 * 0.02 * side * side and area.max() <= 0.5 * 0.10 * side * side
        h, wd = box_sizes(ratio, (side, side), cfg, gen)
        # rounded sides: h w lies within (sqrt(area a) +- 0.5)(sqrt(area / a) +- 0.5) for a in [0.8, 1.25]
        low = (math.sqrt(0.5 * 0.02 * side * side * 0.8) - 0.5) ** 2
        high = (math.sqrt(0.5 * 0.10 * side * side * 1.25) + 0.5) ** 2
        assert (h * wd).min() >= math.floor(low) and (h * wd).max() <= high
        assert ((h * wd).float() - area).abs().mean() < 0.25 * area.mean()


def test_lower_clean_probability_gives_larger_masks() -> None:
    gen = torch.Generator().manual_seed(0)
    cfg = MaskerConfig()
    noisy = masking_ratio(torch.zeros(5000), cfg, gen).mean()
    clean = masking_ratio(torch.ones(5000), cfg, gen).mean()
    assert noisy - clean == pytest.approx(0.03, abs=2e-3)  # quality_coef (1 - w)
    assert clean == pytest.approx(0.045, abs=2e-3)  # mean of U(0.02, 0.07)


def test_modulated_targets_sum_to_one_and_argmax_drops_by_rho() -> None:
    gen = torch.Generator().manual_seed(0)
    targets = torch.softmax(torch.randn(64, 10, generator=gen) * 3, 1)
    rho = 0.02 + 0.08 * torch.rand(64, generator=gen)
    out = modulate_labels(targets, rho)
    torch.testing.assert_close(out.sum(1), torch.ones(64))
    k = targets.argmax(1)
    rows = torch.arange(64)
    torch.testing.assert_close(targets[rows, k] - out[rows, k], rho)
    others = torch.ones_like(targets, dtype=torch.bool)
    others[rows, k] = False
    torch.testing.assert_close((out - targets)[others].view(64, 9), (rho / 9).view(64, 1).expand(64, 9))


def test_fill_is_one_uniform_constant_per_channel() -> None:
    images = torch.full((4, 3, 16, 16), -7.0)
    out = mask_images(images, torch.rand(4, 8, 4, 4), torch.rand(4), MaskerConfig(), torch.Generator().manual_seed(3))
    for b in range(4):
        inside = out.x_max[b, 0] != -7.0
        for c in range(3):
            values = out.x_max[b, c][inside].unique()
            assert values.numel() == 1 and 0 <= float(values) <= 1


def test_vectorised_masker_matches_a_per_image_loop() -> None:
    """The released algorithm written as a loop over images (same draws) gives the same erased images."""
    gen_seed = 5
    images = torch.randn(6, 3, 32, 32)
    fmap = torch.rand(6, 16, 4, 4)
    w = torch.rand(6)
    cfg = MaskerConfig()
    out = mask_images(images, fmap, w, cfg, torch.Generator().manual_seed(gen_seed))
    gen = torch.Generator().manual_seed(gen_seed)
    ratio = cfg.ratio_low + (cfg.ratio_high - cfg.ratio_low) * torch.rand(6, generator=gen) + cfg.quality_coef * (1 - w)
    aspect = 0.8 + (1.25 - 0.8) * torch.rand(6, generator=gen)
    fill_max, fill_min = torch.rand(6, 3, generator=gen), torch.rand(6, 3, generator=gen)
    for i in range(6):
        am = (fmap[i] ** 2).sum(0).flatten()
        am = (am / am.norm()).view(1, 1, 4, 4)
        am = F.interpolate(am, size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
        am = torch.floor(255 * (am - am.min()) / (am.max() - am.min() + 1e-12))
        area = float(ratio[i]) * 1024 * 0.5
        h, wd = round(math.sqrt(area * float(aspect[i]))), round(math.sqrt(area / float(aspect[i])))
        for arg, fill, result in ((am.argmax(), fill_max, out.x_max), (am.argmin(), fill_min, out.x_min)):
            r, c = divmod(int(arg), 32)
            r, c = min(r, 32 - h), min(c, 32 - wd)
            expected = images[i].clone()
            for ch in range(3):
                expected[ch, r : r + h, c : c + wd] = fill[i, ch]
            torch.testing.assert_close(result[i], expected)


def test_independent_min_box_draws_a_second_ratio() -> None:
    cfg = MaskerConfig(ratio_low=0.06, ratio_high=0.13, quality_coef=0.1, area_scale=1.0, independent_min_box=True)
    out = mask_images(torch.zeros(32, 3, 32, 32), torch.rand(32, 8, 4, 4), torch.rand(32), cfg)
    assert not torch.equal(out.ratio_max, out.ratio_min)
    assert out.ratio_max.max() <= 0.23 and out.ratio_min.min() >= 0.06


def test_quantised_attention_is_integer_0_to_255() -> None:
    att = attention_map(torch.rand(3, 8, 4, 4), (32, 32))
    assert torch.equal(att, att.floor()) and att.min() == 0 and att.max() == 255


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="same batch"):
        mask_images(torch.zeros(2, 3, 8, 8), torch.zeros(3, 4, 2, 2), torch.zeros(2), MaskerConfig())
    with pytest.raises(ValueError, match="ratio_low"):
        MaskerConfig(ratio_low=0.2, ratio_high=0.1)


def test_reconstruction_loss_decreases_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = create_model("digits_cnn_tiny")
    x = torch.randn(8, 3, 16, 16)
    masked = mask_images(x, model.forward_feature_map(x).detach(), torch.rand(8), MaskerConfig())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = reconstruction_loss(model, masked.x_max, masked.x_min, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert model.features[0].weight.grad.abs().sum() > 0  # the gradient reaches the shared encoder


def test_reconstruction_loss_refuses_a_wrong_decoder_size() -> None:
    model = create_model("supce_resnet18_tiny")  # the 32 px decoder on 16 px inputs: 2x2 map -> 24 px
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="decoder gives"):
        reconstruction_loss(model, x, x, x)


@pytest.mark.gpu
def test_cuda_batches_mask_with_the_runs_cpu_generator() -> None:
    """The trainer's generator lives on the CPU (it is saved in checkpoints); a CUDA batch draws from it and gets
    the same masks as the same batch on the CPU."""
    images, fmap, w = torch.randn(4, 3, 32, 32), torch.rand(4, 16, 4, 4), torch.rand(4)
    cpu = mask_images(images, fmap, w, MaskerConfig(), torch.Generator().manual_seed(7))
    cuda = mask_images(images.cuda(), fmap.cuda(), w.cuda(), MaskerConfig(), torch.Generator().manual_seed(7))
    assert cuda.x_max.is_cuda
    assert [t.tolist() for t in cuda.box_max] == [t.tolist() for t in cpu.box_max]
    torch.testing.assert_close(cuda.x_min.cpu(), cpu.x_min)
