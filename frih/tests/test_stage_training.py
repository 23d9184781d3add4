"""Parameter counts derived from the layer list, the loss on a hand-computed example, and the stage-1 training
switches (stop-gradient, no FPM, blur init, in-run warm start, the gradient diagnostic)."""

import pytest
import torch

from frih.losses import FRIHLoss
from frih.model import GaussianBlur, build_model, count_parameters, create_model


def _conv(cin, cout, k=3, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def _double(cin, cout, bn):
    return _conv(cin, cout) + _conv(cout, cout) + (4 * cout if bn else 0)


def _channel_gate(c):
    mid = max(c // 16, 8)
    return 2 * c * mid + mid + mid * c + c


def _ssam_unet(depth, ch, in_ch=4, attend_from=None):
    """Parameters of the iSSAM UNet written out from its description (README, Results; model.SSAMHarmonizer)."""
    attend_from = depth - 2 if attend_from is None else attend_from
    chans = [ch * 2**i for i in range(depth)]
    n = sum(_double(in_ch if i == 0 else chans[i - 1], chans[i], bn=i >= 2) for i in range(depth))
    c_in = chans[-1]
    levels = []
    for d in range(depth - 1):
        c_out = chans[depth - 2 - d]
        n += _conv(c_in, c_out) + _double(2 * c_out, c_out, bn=True)  # up conv (no BN), double conv with BN
        if 0 <= attend_from <= d:  # SSAM on 2 * c_out channels: 3 channel gates, learning block, fixed blur
            c = 2 * c_out
            n += 3 * _channel_gate(c) + _conv(c, c // 2, bias=False) + 2 * (c // 2) + _conv(c // 2, c, bias=False)
            n += 2 * c
        levels.append(c_out)
        c_in = c_out
    n += _conv(c_in, 1, 1) + _conv(c_in, 3, 1)  # fusion gate, to_rgb
    return n, levels


def _fpm(levels, k, c):
    return sum(k * lc * c for lc in levels) + c + 2 * c + _conv(c, c) + 2 * c + _conv(c, 1, 1) + _conv(c, 3, 1)


def _leaf_count(model):
    """Parameters from each layer's hyper-parameters (not from the tensors)."""
    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            cin, cout = (m.in_channels, m.out_channels)
            n += cin * cout // m.groups * m.kernel_size[0] * m.kernel_size[1] + (cout if m.bias is not None else 0)
        elif isinstance(m, torch.nn.Linear):
            n += m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
        elif isinstance(m, torch.nn.BatchNorm2d):
            n += 2 * m.num_features
    return n + sum(p.numel() for name, p in model.named_parameters() if name.endswith("proj_bias"))


def test_parameter_counts_follow_from_the_layer_list():
    issam, _ = _ssam_unet(4, 32)
    assert issam == count_parameters(create_model("issam256")) == 2_185_340
    module, levels = _ssam_unet(4, 39)
    frih = issam + 3 * module + _fpm(levels, 3, 64)
    assert frih == count_parameters(create_model("frih256")) == 12_004_951
    tiny_stage1, _ = _ssam_unet(4, 8)
    tiny_module, tiny_levels = _ssam_unet(4, 8)
    tiny = create_model("frih_tiny")
    assert count_parameters(tiny) == tiny_stage1 + 3 * tiny_module + _fpm(tiny_levels, 3, 16) == 559_348
    no_fpm = create_model("frih_tiny", use_fpm=False)
    assert count_parameters(no_fpm) == tiny_stage1 + 3 * tiny_module
    for name in ("idih256", "frih_idih256", "frih256"):
        model = create_model(name)
        assert _leaf_count(model) == count_parameters(model), name


def test_loss_composition_on_a_hand_computed_example():
    target = torch.zeros(1, 3, 2, 2)
    mask = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])  # area 1.5
    outputs = {
        "images": torch.ones(1, 3, 2, 2),  # error 1 at 12 values: 12 / (3 * 1.5) = 8/3
        "coarse": torch.full((1, 3, 2, 2), 2.0),  # error 4 at 12 values: 48 / 4.5 = 32/3
        "module_images": [torch.tensor([[[[3.0, 3.0], [3.0, 3.0]]]]).expand(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)],
        "submasks": torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]]),
    }
    # module 1 inside its submask: 3 channels x 9 at one pixel / (3 * max(1, A_min = 1)) = 9; module 2: 0 -> mean 4.5
    total, parts = FRIHLoss(min_area=1.0, final_weight=1.0, coarse_weight=0.5, module_weight=2.0)(outputs, target, mask)
    assert parts == pytest.approx({"final": 8 / 3, "coarse": 32 / 3, "modules": 4.5})
    assert float(total) == pytest.approx(8 / 3 + 0.5 * 32 / 3 + 2.0 * 4.5)  # = 17
    assert float(total) == pytest.approx(17.0)


def _batch(seed=0, b=2, h=32, w=32):
    g = torch.Generator().manual_seed(seed)
    image, target = torch.randn(b, 3, h, w, generator=g), torch.randn(b, 3, h, w, generator=g)
    mask = torch.zeros(b, 1, h, w)
    mask[:, :, 8:24, 4:20] = 1.0
    return image, target, mask


def _stage1_grad(model, loss_fn):
    image, target, mask = _batch()
    model.zero_grad(set_to_none=True)
    out = model(image, mask)
    loss_fn(out, target, mask)[0].backward()
    return [p.grad for p in model.stage1.parameters()]


def test_stop_gradient_leaves_stage1_to_its_own_loss():
    torch.manual_seed(0)
    model = create_model("frih_tiny", stop_gradient=True)
    grads = _stage1_grad(model, FRIHLoss(1.0, final_weight=1.0, coarse_weight=0.0, module_weight=1.0))
    assert all(g is None or not g.abs().any() for g in grads)
    end_to_end = create_model("frih_tiny")
    grads = _stage1_grad(end_to_end, FRIHLoss(1.0, final_weight=1.0, coarse_weight=0.0, module_weight=1.0))
    assert any(g is not None and g.abs().any() for g in grads)
    # the forward is the same function either way
    end_to_end.load_state_dict(model.state_dict())
    image, _, mask = _batch()
    model.eval(), end_to_end.eval()
    with torch.no_grad():
        assert torch.equal(model(image, mask)["images"], end_to_end(image, mask)["images"])


def test_without_fpm_the_final_output_is_the_last_module_output():
    torch.manual_seed(0)
    model = create_model("frih_tiny", use_fpm=False).eval()
    assert model.fpm is None and not model.has_unused_parameters(coarse_weight=1.0, module_weight=0.0)
    # parallel modules without the FPM: modules 0..K-2 feed nothing unless the per-module term is on
    parallel = create_model("frih_tiny", use_fpm=False, cascade="parallel")
    assert parallel.has_unused_parameters(coarse_weight=1.0, module_weight=0.0)
    assert not parallel.has_unused_parameters(coarse_weight=1.0, module_weight=1.0)
    image, _, mask = _batch()
    with torch.no_grad():
        out = model(image, mask)
    assert torch.equal(out["images"], out["module_images"][-1])
    with torch.no_grad():
        assert torch.equal(model(image, mask, stage1_only=True)["images"], out["coarse"])


def test_blur_init_switch_and_loading_a_released_state_dict():
    torch.manual_seed(0)
    gaussian = create_model("issam256")
    torch.manual_seed(0)
    released = create_model("issam256", blur_init="released")
    g_kernel = gaussian.decoder.up_blocks[2].attention.mask_blurring.weight
    r_kernel = released.decoder.up_blocks[2].attention.mask_blurring.weight
    assert float(g_kernel.sum()) == pytest.approx(1.0) and bool((g_kernel > 0).all())
    assert float(r_kernel.sum()) != pytest.approx(1.0) and bool((r_kernel < 0).any())
    assert float(r_kernel.std()) == pytest.approx(1 / 7, rel=0.35)  # Xavier: sqrt(1 / ((49 + 49) / 2))
    # a released checkpoint carries its own (random) kernel: loading it strictly gives the released network exactly
    gaussian.load_state_dict(released.state_dict(), strict=True)
    gaussian.eval(), released.eval()
    image, _, mask = _batch(h=64, w=64)
    with torch.no_grad():
        assert torch.equal(gaussian(image, mask)["images"], released(image, mask)["images"])
    frih = create_model("frih_tiny", blur_init="released")
    blurs = [m for m in frih.modules() if isinstance(m, GaussianBlur)]
    assert len(blurs) == 4 and all(float(b.weight.sum()) != pytest.approx(1.0) for b in blurs)
    with pytest.raises(ValueError, match="blur_init"):
        build_model(create_model("frih_tiny").cfg.__class__(blur_init="box"))


def test_gradient_diagnostic_separates_the_terms():
    from frih.diagnose_gradients import gradient_split

    torch.manual_seed(0)
    model = create_model("frih_tiny").train()
    image, target, mask = _batch(b=4)
    row = gradient_split(model, FRIHLoss(100.0, 1.0, 1.0, 1.0), image, target, mask)
    assert row["coarse_grad_norm"] > 0 and row["rest_grad_norm"] > 0
    assert row["ratio_rest_over_coarse"] == pytest.approx(row["rest_grad_norm"] / row["coarse_grad_norm"])
    assert -1.0 <= row["cosine"] <= 1.0
    stopped = create_model("frih_tiny", stop_gradient=True).train()
    assert gradient_split(stopped, FRIHLoss(100.0, 1.0, 1.0, 1.0), image, target, mask)["rest_grad_norm"] == 0.0


@pytest.mark.parametrize("stage1", ["issam", "idih"])
def test_frih_stage1_starts_from_the_base_networks_initialisation(stage1):
    cfg = {"stage1": stage1, "stage1_ch": 8, "module_ch": 4, "fpm_ch": 8}
    if stage1 == "idih":
        cfg["stage1_depth"] = 4
    torch.manual_seed(3)
    frih = create_model("frih_tiny", **cfg)
    torch.manual_seed(3)
    base = create_model("frih_tiny", arch=stage1, **cfg)
    assert frih.stage1.state_dict().keys() == base.state_dict().keys()
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in frih.stage1.state_dict().items())


def _ddp_steps(ctx, overrides: dict) -> str:
    """Two training steps of a tiny FRIH under DDP as train.py wraps it (gloo, CPU); records whether they ran."""
    from frih.config import Config
    from frih.train import build_criterion, wrap_for_training
    from shared.config import config_from_dict

    torch.set_num_threads(1)
    try:
        cfg = config_from_dict(Config, overrides)
        torch.manual_seed(0)
        model = build_model(cfg.model)
        wrapped, criterion = wrap_for_training(model, cfg, ctx), build_criterion(cfg.loss)
        image, _, mask = _batch(seed=ctx.rank)
        for _ in range(2):  # DDP's reduction check fires at the second forward
            criterion(wrapped(image, mask), image.flip(-1), mask)[0].backward()
        return "ok"
    except RuntimeError as err:
        return str(err)[:300]


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_trains_the_no_fpm_parallel_ablation_without_the_per_module_loss():
    """--model.use_fpm false --model.cascade parallel --loss.module_weight 0: modules 0..K-2 get no gradient, so
    train.py must wrap with find_unused_parameters=True (it used to pass False and DDP failed its reduction check)."""
    from shared.testing import on_gloo_ranks

    overrides = {
        "model": {"stage1_ch": 4, "module_ch": 4, "fpm_ch": 8, "use_fpm": False, "cascade": "parallel"},
        "loss": {"module_weight": 0.0},
    }
    assert on_gloo_ranks(_ddp_steps, overrides) == ["ok", "ok"]
