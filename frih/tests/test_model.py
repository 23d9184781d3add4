"""Architecture facts: parameter counts, shapes, image fusion, FPM equivalence, stage-2 switches."""

import itertools
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from frih.losses import FRIHLoss
from frih.model import (
    FRIH,
    VARIANTS,
    FRIHConfig,
    FusionPredictionModule,
    SSAMHarmonizer,
    build_model,
    count_parameters,
    create_model,
    list_models,
)

TINY = {"stage1_ch": 4, "module_ch": 4, "fpm_ch": 8}


def _inputs(b=2, h=32, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 3, h, w, generator=g)
    mask = torch.zeros(b, 1, h, w)
    mask[:, :, h // 4 : 3 * h // 4, w // 4 : 3 * w // 2 // 2] = 1.0
    return image, mask


def test_parameter_counts_match_the_reference_code_and_the_paper():
    issam = count_parameters(create_model("issam256"))
    idih = count_parameters(create_model("idih256"))
    frih = count_parameters(create_model("frih256"))
    assert abs(issam - 2_185_000) / 2_185_000 < 0.01, issam
    assert abs(idih - 8_301_000) / 8_301_000 < 0.01, idih
    assert abs(frih - 11_980_000) / 11_980_000 < 0.03, frih
    # exact values of this implementation (README / docstrings quote them)
    assert (issam, idih, frih) == (2_185_340, 8_301_284, 12_004_951)
    assert abs(count_parameters(create_model("frih_idih256")) - 11_980_000) / 11_980_000 < 0.03


@pytest.mark.parametrize(("name", "gmac"), [("issam256", 14.88), ("idih256", 1.66)])
def test_compute_at_256_matches_the_reference_measurement(name, gmac):
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(name).eval()
    image, mask = _inputs(1, 256, 256)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image, mask)
    assert counter.get_total_flops() / 2e9 == pytest.approx(gmac, rel=5e-3)  # README, Results (FLOP = 2 MAC)


def test_issam256_layout():
    m = create_model("issam256")
    assert m.encoder.block_channels == [32, 64, 128, 256]
    assert m.level_channels == [128, 64, 32]
    assert [b.attention is not None for b in m.decoder.up_blocks] == [False, False, True]  # SSAM on the last stage
    # BN from block 2 on, none in blocks 0/1
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.encoder.block0.modules())
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.encoder.block1.modules())
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.encoder.blocks_connected["block2"].modules())
    ssam = m.decoder.up_blocks[2].attention
    assert ssam.learning_block[0].block[0].out_channels == 32  # mid_k 0.5 of 64
    assert torch.allclose(ssam.mask_blurring.weight.sum(), torch.tensor(1.0))
    assert "decoder.up_blocks.2.attention.mask_blurring.weight" in m.state_dict()


@pytest.mark.parametrize("arch", ["issam", "idih"])
def test_stage1_shapes_and_size_errors(arch):
    cfg = FRIHConfig(arch=arch, stage1_ch=8 if arch == "idih" else 4, stage1_depth=5 if arch == "idih" else 4)
    model = build_model(cfg).eval()
    d = model.size_divisor
    image, mask = _inputs(1, 2 * d, 3 * d)
    with torch.no_grad():
        out = model(image, mask)
    assert out["images"].shape == image.shape
    with pytest.raises(ValueError, match=f"multiple of {d}"):
        model(image[..., : 2 * d - 1, :], mask[..., : 2 * d - 1, :])


def test_image_fusion_head_blends_with_the_input():
    model = SSAMHarmonizer(depth=3, ch=4).eval()
    image, mask = _inputs()
    with torch.no_grad():
        model.decoder.conv_attention.weight.zero_()
        model.decoder.conv_attention.bias.fill_(100.0)  # attention -> 1: output = input image
        assert torch.allclose(model(image, mask)["images"], image, atol=1e-6)
        model.decoder.conv_attention.bias.fill_(-100.0)  # attention -> 0: output = to_rgb(features)
        out = model(image, mask)
        assert torch.allclose(out["images"], model.decoder.to_rgb(out["features"][-1]), atol=1e-6)


def test_fpm_per_level_projection_equals_upsample_concat_then_1x1():
    torch.manual_seed(0)
    fpm = FusionPredictionModule([8, 4], num_modules=2, channels=6)
    feats = [[torch.randn(1, 8, 8, 8), torch.randn(1, 4, 16, 16)] for _ in range(2)]
    size = (32, 32)
    x = None
    for level, proj in enumerate(fpm.level_proj):
        y = proj(torch.cat([f[level] for f in feats], 1))
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        x = y if x is None else x + y
    # reference: upsample every map, concatenate per level in the same order, one 1x1 conv with the stacked weights
    ups = torch.cat(
        [
            F.interpolate(torch.cat([f[lv] for f in feats], 1), size=size, mode="bilinear", align_corners=False)
            for lv in range(2)
        ],
        1,
    )
    weight = torch.cat([p.weight for p in fpm.level_proj], 1)
    assert torch.allclose(F.conv2d(ups, weight), x, atol=1e-5)


def test_frih_forward_outputs_and_gradients():
    torch.manual_seed(0)
    model = create_model("frih_tiny", **TINY)
    image, mask = _inputs()
    out = model(image, mask)
    assert out["images"].shape == image.shape and out["coarse"].shape == image.shape
    assert len(out["module_images"]) == 3 and out["submasks"].shape == (2, 3, 32, 48)
    assert torch.equal(out["submasks"].sum(1, keepdim=True), (mask > 0.5).float())
    loss, _ = FRIHLoss(module_weight=1.0)(out, torch.zeros_like(image), mask)
    loss.backward()
    for part in (model.stage1, model.refiners, model.fpm):  # with the per-module term every weight is trained
        assert all(p.grad is not None for p in part.parameters())
    # without it the last module's image head feeds nothing (the FPM blends with the composite)
    assert model.has_unused_parameters(coarse_weight=1.0, module_weight=0.0)
    assert not model.has_unused_parameters(coarse_weight=1.0, module_weight=1.0)
    model.zero_grad(set_to_none=True)
    out = model(image, mask)
    FRIHLoss(module_weight=0.0)(out, torch.zeros_like(image), mask)[0].backward()
    assert model.refiners[2].decoder.to_rgb.weight.grad is None
    assert model.refiners[1].decoder.to_rgb.weight.grad is not None
    last = create_model("frih_tiny", fpm_blend="last", **TINY)
    assert not last.has_unused_parameters(coarse_weight=1.0, module_weight=0.0)


def test_has_unused_parameters_matches_the_gradients_of_every_switch_combination():
    """For each combination of the stage-2 switches and of the loss terms, a CPU backward leaves some parameter
    without a gradient iff has_unused_parameters says so (DDP's find_unused_parameters; e.g. no FPM + parallel
    modules + no per-module term: modules 0..K-2 feed nothing; stop-gradient + no coarse term: stage 1)."""
    image, mask = _inputs(h=32, w=32)
    target = torch.zeros_like(image)
    seen = set()
    for use_fpm, blend, cascade, share, stop, coarse_w, module_w, k in itertools.product(
        (True, False),
        ("composite", "coarse", "last"),
        ("cascaded", "parallel"),
        (False, True),
        (False, True),
        (0.0, 1.0),
        (0.0, 1.0),
        (1, 3),
    ):
        if (not use_fpm and blend != "last") or (k == 1 and (cascade == "parallel" or share)):
            continue  # fpm_blend only matters with the FPM; one module is neither parallel nor shared
        torch.manual_seed(0)
        model = create_model(
            "frih_tiny",
            use_fpm=use_fpm,
            fpm_blend=blend,
            cascade=cascade,
            share_weights=share,
            stop_gradient=stop,
            num_clusters=k,
            **TINY,
        )
        loss, _ = FRIHLoss(final_weight=1.0, coarse_weight=coarse_w, module_weight=module_w)(
            model(image, mask), target, mask
        )
        loss.backward()
        without_grad = [name for name, p in model.named_parameters() if p.grad is None]
        predicted = model.has_unused_parameters(coarse_weight=coarse_w, module_weight=module_w)
        case = dict(use_fpm=use_fpm, fpm_blend=blend, cascade=cascade, share_weights=share, stop_gradient=stop)
        case.update(coarse_weight=coarse_w, module_weight=module_w, num_clusters=k)
        assert bool(without_grad) == predicted, (case, without_grad[:4])
        seen.add(predicted)
    assert seen == {True, False}


def _module_inputs(model, image, mask):
    seen = []
    hooks = [r.register_forward_hook(lambda mod, args, out: seen.append(args[0])) for r in model.refiners]
    with torch.no_grad():
        out = model(image, mask)
    for h in hooks:
        h.remove()
    return seen, out


def test_cascaded_vs_parallel_inputs():
    image, mask = _inputs()
    cascaded = create_model("frih_tiny", **TINY).eval()
    seen, out = _module_inputs(cascaded, image, mask)
    assert torch.equal(seen[0], out["coarse"])
    assert torch.equal(seen[1], out["module_images"][0]) and torch.equal(seen[2], out["module_images"][1])
    parallel = create_model("frih_tiny", cascade="parallel", **TINY).eval()
    seen, out = _module_inputs(parallel, image, mask)
    assert all(torch.equal(s, out["coarse"]) for s in seen)
    # the heads of modules 0..K-2 (and K-1: the FPM blends with the composite) feed nothing without the per-module loss
    assert parallel.has_unused_parameters(coarse_weight=1.0, module_weight=0.0)


def test_weight_sharing_compose_and_clustering_switches():
    base = create_model("frih_tiny", **TINY)
    shared = create_model("frih_tiny", share_weights=True, **TINY)
    one_module = count_parameters(base.refiners[0])
    assert len(shared.refiners) == 1
    assert count_parameters(base) - count_parameters(shared) == 2 * one_module
    image, mask = _inputs()
    composed = create_model("frih_tiny", compose_submasks=True, **TINY).eval()
    with torch.no_grad():
        out = composed(image, mask)
    prev = out["coarse"]
    for k, refined in enumerate(out["module_images"]):
        outside = out["submasks"][:, k : k + 1].expand_as(refined) == 0
        assert torch.equal(refined[outside], prev[outside])  # module k only changes its own region
        prev = refined
    on_coarse = create_model("frih_tiny", cluster_on="coarse", **TINY).eval()
    with torch.no_grad():
        out = on_coarse(image, mask)
        expected = on_coarse.split_regions(image, out["coarse"], mask)
    assert torch.equal(out["submasks"], expected)


def test_registry_and_config_errors():
    assert list_models() == sorted(VARIANTS) == ["frih256", "frih_idih256", "frih_tiny", "idih256", "issam256"]
    with pytest.raises(ValueError, match="unknown model"):
        create_model("frih999")
    with pytest.raises(ValueError, match="unknown FRIHConfig field"):
        create_model("frih256", clusters=3)
    with pytest.raises(ValueError, match="num_clusters"):
        FRIH(FRIHConfig(num_clusters=0))


@pytest.mark.parametrize(
    ("recipe", "variant"),
    [
        ("default", "frih_tiny"),
        ("frih_iharmony4", "frih256"),
        ("issam_iharmony4", "issam256"),
        ("idih_iharmony4", "idih256"),
    ],
)
def test_recipes_train_the_named_variants(recipe, variant):
    from frih.config import DEFAULT_CONFIG
    from frih.train import parse_args

    expected = VARIANTS[variant]
    if recipe == "default":  # the tiny architecture with the stage-1/stage-2 settings of README Fidelity notes 20-21
        expected = replace(expected, stop_gradient=True, fpm_blend="last", compose_submasks=True, stage2_gate_bias=1.0)
    assert parse_args(["-c", str(DEFAULT_CONFIG.parent / f"{recipe}.yaml")]).model == expected
