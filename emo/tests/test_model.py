"""EMO architecture: official state_dict layout, parameter counts and FLOPs against the paper, the dilated-grid
EW-MHSA against an independent reference, and the timm model API."""

import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import group_parameters
from torch.utils.flop_counter import FlopCounterMode

import emo
from emo.model import EMO, ConvNormAct, LayerNorm2d, MSPatchEmb, fuse_batchnorm, grid_partition, grid_unpartition, iRMB

DATA = Path(__file__).resolve().parent / 'data'
# key -> shape of the released resources/EMO_*/net.pth (official code at commit 703e0b7, README, Fidelity notes)
OFFICIAL_SHAPES = DATA / 'emo_official_state_dict_shapes.json'
VARIANTS = ['emo_1m', 'emo_2m', 'emo_5m', 'emo_6m']

# exact counts from the fvcore tables of resources/EMO_*/log_train.txt
PAPER_PARAMS = {'emo_1m': 1_361_168, 'emo_2m': 2_377_472, 'emo_5m': 5_108_848, 'emo_6m': 6_168_496}
# README / log "FLOPs" are fvcore MACs at 224, given to 3 significant digits (G)
PAPER_GMACS = {'emo_1m': 0.261, 'emo_2m': 0.439, 'emo_5m': 0.903, 'emo_6m': 0.961}


@pytest.fixture(scope='module')
def official_shapes():
    return json.loads(OFFICIAL_SHAPES.read_text())


def _set_fused_attn(model: nn.Module, enable: bool) -> None:
    for m in model.modules():
        if isinstance(m, iRMB) and m.attn_s:
            m.fused_attn = enable


@pytest.mark.parametrize('variant', VARIANTS)
def test_state_dict_identical_to_official(variant, official_shapes):
    sd = timm.create_model(variant).state_dict()
    expected = official_shapes[variant]
    assert list(sd) == list(expected)  # same keys in the same order
    assert {k: list(v.shape) for k, v in sd.items()} == expected


@pytest.mark.parametrize('variant', VARIANTS)
def test_param_count_exact(variant):
    model = timm.create_model(variant)
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMS[variant]


@pytest.mark.parametrize('variant', VARIANTS)
def test_flops_match_paper(variant):
    """FlopCounterMode counts 2 FLOPs per MAC of convs / matmuls and nothing for norms; fvcore, which produced the
    paper's figure, counts MACs plus 2 per BatchNorm (eval) and 5 per LayerNorm output element. With those norm
    counts added the total must equal the paper's figure to its last digit (tolerance: half a unit of 1e-3 G);
    the raw matmul/conv MACs must be within 2.5 % below it."""
    model = timm.create_model(variant).eval()
    _set_fused_attn(model, False)  # FlopCounterMode does not count the CPU SDPA kernel
    for m in model.modules():  # run the BatchNorms as modules (not folded into the convs) so the hooks count them
        if isinstance(m, ConvNormAct):
            m.fold_bn = False
    norm_elems = {'bn': 0, 'ln': 0}

    def hook(kind):
        def fn(module, inputs, output):
            norm_elems[kind] += output.numel()

        return fn

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(hook('bn'))
        elif isinstance(m, LayerNorm2d):
            m.register_forward_hook(hook('ln'))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    macs = counter.get_total_flops() / 2
    fvcore_style = macs + 2 * norm_elems['bn'] + 5 * norm_elems['ln']
    assert abs(fvcore_style / 1e9 - PAPER_GMACS[variant]) <= 0.0005
    assert 0.975 * PAPER_GMACS[variant] < macs / 1e9 < PAPER_GMACS[variant]


# ---- the block -------------------------------------------------------------------------------------------------


def reference_ew_mhsa(block: iRMB, x: torch.Tensor) -> torch.Tensor:
    """Independent EW-MHSA (attn_pre=True): the official grid partition written with strided slices.

    The official ``'b c (h1 n1) (w1 n2) -> (b n1 n2) c h1 w1'`` puts pixel (r, c) of the zero-padded map into group
    (r mod n1, c mod n2); attention has no positional term, so only group membership matters.
    """
    B, C, H, W = x.shape
    ws_h, ws_w = (H, W) if block.window_size <= 0 else (block.window_size, block.window_size)
    xp = F.pad(x, (0, (ws_w - W % ws_w) % ws_w, 0, (ws_h - H % ws_h) % ws_h))
    n1, n2 = xp.shape[2] // ws_h, xp.shape[3] // ws_w
    qk = block.qk.conv(xp)
    out = torch.zeros_like(xp)
    d, heads = block.dim_head, block.num_heads
    for a in range(n1):
        for b in range(n2):
            for h in range(heads):
                q = qk[:, h * d : (h + 1) * d, a::n1, b::n2].flatten(2)  # B, d, N
                k = qk[:, C + h * d : C + (h + 1) * d, a::n1, b::n2].flatten(2)
                v = xp[:, h * d : (h + 1) * d, a::n1, b::n2].flatten(2)
                attn = (q.transpose(1, 2) @ k * block.scale).softmax(-1)  # B, N, N
                out[:, h * d : (h + 1) * d, a::n1, b::n2] = (v @ attn.transpose(1, 2)).reshape(B, d, ws_h, ws_w)
    return block.v(out[:, :, :H, :W])


def reference_irmb(block: iRMB, x: torch.Tensor) -> torch.Tensor:
    """Independent iRMB forward (official semantics), with the inner and outer residuals when has_skip."""
    y = block.norm(x)
    y = reference_ew_mhsa(block, y) if block.attn_s else block.v(y)
    dw = block.conv_local.act(block.conv_local.norm(block.conv_local.conv(y)))
    y = y + block.se(dw) if block.has_skip else block.se(dw)
    y = block.proj(y)
    return x + y if block.has_skip else y


def _attention_block(window_size=7, dim=80, dim_head=20, exp_ratio=3.0):
    torch.manual_seed(0)
    block = iRMB(
        dim,
        dim,
        norm_layer='ln_2d',
        act_layer='gelu',
        exp_ratio=exp_ratio,
        dw_ks=5,
        dim_head=dim_head,
        window_size=window_size,
        attn_s=True,
        qkv_bias=True,
        attn_pre=True,
    ).eval()
    with torch.no_grad():  # non-trivial BN statistics so that the comparison covers them too
        block.conv_local.norm.running_mean.uniform_(-0.5, 0.5)
        block.conv_local.norm.running_var.uniform_(0.5, 2.0)
    return block


@pytest.mark.parametrize('fused', [False, True])
@pytest.mark.parametrize(
    'hw,window_size',
    [
        ((14, 14), 7),  # stage 3 at 224: 2 x 2 groups at dilation 2, no padding
        ((7, 7), 7),  # stage 4 at 224: one global window
        ((16, 13), 7),  # stage 3 at 256 x 208: padded to 21 x 14 -> 3 x 2 groups, cropped back
        ((9, 11), 0),  # window_size <= 0: the whole map
        ((20, 20), 10),  # the RetinaNet window size
    ],
)
def test_irmb_attention_matches_reference(hw, window_size, fused):
    block = _attention_block(window_size)
    block.fused_attn = fused
    x = torch.randn(2, 80, *hw)
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference_irmb(block, x), atol=2e-5, rtol=1e-4)


def test_grid_partition_is_dilated_not_contiguous():
    x = torch.arange(14 * 14, dtype=torch.float32).reshape(1, 1, 14, 14)
    groups = grid_partition(x, 1, 1, 2, 2)[0]  # (4 groups, 1 head, 49 tokens, 1)
    assert groups.shape == (4, 1, 49, 1)
    for a in range(2):
        for b in range(2):
            torch.testing.assert_close(groups[a * 2 + b, 0, :, 0], x[0, 0, a::2, b::2].flatten())
    torch.testing.assert_close(grid_unpartition(groups, 1, 2, 2, 7, 7), x)


def test_contiguous_windows_would_differ():
    """The reference is sensitive to the partition: a local-window variant of the block gives other outputs."""
    block = _attention_block()
    x = torch.randn(1, 80, 14, 14)
    with torch.no_grad():
        windows = x.reshape(1, 80, 2, 7, 2, 7).permute(0, 2, 4, 1, 3, 5).reshape(4, 80, 7, 7)
        local = reference_ew_mhsa(block, windows)  # each window alone = contiguous partition
        local = local.reshape(1, 2, 2, -1, 7, 7).permute(0, 3, 1, 4, 2, 5).reshape(1, -1, 14, 14)
        assert (local - reference_ew_mhsa(block, x)).abs().max() > 1e-3


def test_attn_pre_false_path_runs_attention_on_v():
    torch.manual_seed(0)
    block = iRMB(
        40,
        40,
        norm_layer='ln_2d',
        act_layer='gelu',
        exp_ratio=2.0,
        dim_head=20,
        window_size=7,
        attn_s=True,
        qkv_bias=True,
        attn_pre=False,
    ).eval()
    x = torch.randn(1, 40, 7, 7)
    with torch.no_grad():
        y = block.norm(x)
        q, k = block.qk(y).flatten(2).chunk(2, dim=1)
        v = block.v(y).flatten(2)
        out = torch.cat(
            [
                v[:, h * 40 : (h + 1) * 40]
                @ ((q[:, h * 20 : (h + 1) * 20].transpose(1, 2) @ k[:, h * 20 : (h + 1) * 20]) * block.scale)
                .softmax(-1)
                .transpose(1, 2)
                for h in range(2)
            ],
            dim=1,
        ).reshape(1, 80, 7, 7)
        expected = x + block.proj(out + block.conv_local(out))
        torch.testing.assert_close(block(x), expected, atol=2e-5, rtol=1e-4)


def test_structure_follows_official_layout():
    model = timm.create_model('emo_1m')
    stem_patch, stem_block = model.stage0
    assert isinstance(stem_patch, MSPatchEmb) and isinstance(stem_patch.convs[0][2], nn.Identity)
    assert stem_patch.convs[0][0].bias is not None and stem_patch.convs[0][0].stride == (2, 2)
    assert not stem_block.has_skip and not stem_block.attn_s and isinstance(stem_block.v, nn.Identity)
    assert isinstance(stem_block.se.act1, nn.SiLU) and stem_block.se.conv_reduce.out_channels == 24
    for i, stage in enumerate(model.stages):
        first, rest = stage[0], list(stage)[1:]
        assert first.conv_local.conv.stride == (2, 2) and not first.has_skip and not first.attn_s
        assert first.v.conv.out_channels == int(first.v.conv.in_channels * (2.0, 2.5, 3.0, 3.5)[i] * 2)
        for block in rest:
            assert block.has_skip and block.conv_local.conv.stride == (1, 1)
            assert block.attn_s == (i >= 2)
            assert isinstance(block.conv_local.norm, nn.BatchNorm2d) and isinstance(block.conv_local.act, nn.SiLU)
    # attention head counts of the official EMO-1M: 80 / 20 = 4, 168 / 21 = 8
    assert model.stage3[1].num_heads == 4 and model.stage4[1].num_heads == 8
    t = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(model.stage3[1].v.act(t), F.gelu(t))  # exact erf GELU, not the tanh approximation
    assert model.stage3[1].qk.conv.bias is not None
    assert model.stage1[1].proj.conv.bias is None and model.stage1[1].conv_local.conv.bias is None


def test_norm_eps_is_1e6():
    model = timm.create_model('emo_1m')
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))]
    assert len(norms) > 30 and all(m.eps == 1e-6 for m in norms)


def test_drop_path_schedule():
    """linspace(0, rate, 15) over the stage 1-4 blocks in order, stem excluded (EMO-1M: max 0.04036)."""
    model = timm.create_model('emo_1m')
    rates = [
        b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0.0 for stage in model.stages for b in stage
    ]
    assert rates == pytest.approx(torch.linspace(0, 0.04036, 15).tolist(), rel=1e-6)
    assert isinstance(model.stage0[1].drop_path, nn.Identity)
    assert timm.create_model('emo_5m').stage4[-1].drop_path.drop_prob == pytest.approx(0.05)


def test_layernorm2d_matches_channel_layernorm():
    norm = LayerNorm2d(12)
    nn.init.normal_(norm.norm.weight)
    nn.init.normal_(norm.norm.bias)
    x = torch.randn(2, 12, 5, 6)
    expected = F.layer_norm(x.permute(0, 2, 3, 1).contiguous(), (12,), norm.norm.weight, norm.norm.bias, 1e-6)
    torch.testing.assert_close(norm(x), expected.permute(0, 3, 1, 2))


def test_mspatchemb_multi_dilation_averages_branches():
    emb = MSPatchEmb(3, 8, kernel_size=3, stride=2, dilations=(1, 2)).eval()
    x = torch.randn(1, 3, 32, 32)
    out = emb(x)
    assert out.shape == (1, 8, 16, 16)
    torch.testing.assert_close(out, (emb.convs[0](x) + emb.convs[1](x)) / 2)


# ---- model forward and the timm API ------------------------------------------------------------------------------


@pytest.mark.parametrize('hw', [(64, 64), (80, 96), (70, 45)])
def test_any_input_size(hw):
    model = timm.create_model('emo_test').eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(2, 3, *hw), intermediates_only=True)
    for i, f in enumerate(feats):
        size = list(hw)
        for _ in range(i + 2):
            size = [math.ceil(s / 2) for s in size]
        assert list(f.shape) == [2, model.feature_info[i]['num_chs'], *size]
        assert torch.isfinite(f).all()


def test_fused_and_explicit_attention_agree():
    model = timm.create_model('emo_test').eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        fused = model(x)
        _set_fused_attn(model, False)
        torch.testing.assert_close(model(x), fused, atol=1e-5, rtol=1e-4)


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so that folding them is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)


@pytest.mark.parametrize(('variant', 'hw'), [('emo_test', (96, 96)), ('emo_test', (80, 50)), ('emo_1m', (224, 224))])
def test_fuse_batchnorm_keeps_outputs(variant, hw):
    torch.manual_seed(0)
    model = timm.create_model(variant).eval()
    _randomise_batchnorm(model)
    x = torch.randn(2, 3, *hw)
    before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        reference = model(x)
        fused = fuse_batchnorm(model)
        out = fused(x)
    remaining = [name for name, m in fused.named_modules() if isinstance(m, nn.BatchNorm2d)]
    # only the pre-norms that feed attention stay; EMO's attention stages use LayerNorm, so none is left
    assert before > 0 and remaining == [], (before, remaining)
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)


def test_fuse_batchnorm_refuses_training_mode():
    with pytest.raises(RuntimeError, match='eval'):
        fuse_batchnorm(timm.create_model('emo_test'))


def test_forward_features_head_and_classifier():
    model = timm.create_model('emo_test').eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 48, 2, 2)
        pooled = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pooled, feats.mean((2, 3)))
        torch.testing.assert_close(model.forward_head(feats), model.head(pooled))
        torch.testing.assert_close(model(x), model.head(pooled))
    assert model.get_classifier() is model.head and model.num_features == model.head_hidden_size == 48
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)
    model.reset_classifier(0, global_pool='max')
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_features(x).amax((2, 3)))
    with pytest.raises(ValueError):
        model.reset_classifier(3, global_pool='token')
    assert timm.create_model('emo_test', num_classes=0)(x).shape == (2, 48)


def test_features_only_and_forward_intermediates():
    x = torch.randn(1, 3, 64, 64)
    model = timm.create_model('emo_test').eval()
    assert [(f['num_chs'], f['reduction'], f['module']) for f in model.feature_info] == [
        (16, 4, 'stage1'),
        (24, 8, 'stage2'),
        (32, 16, 'stage3'),
        (48, 32, 'stage4'),
    ]
    features = timm.create_model('emo_test', features_only=True).eval()
    assert features.feature_info.channels() == [16, 24, 32, 48]
    assert features.feature_info.reduction() == [4, 8, 16, 32]
    features.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        outs = features(x)
        final, inter = model.forward_intermediates(x)
        assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]
        for a, b in zip(outs, inter):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(final, model.forward_features(x))
        normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)[0]
        torch.testing.assert_close(normed, final)
        early = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
        assert [t.shape[1] for t in early] == [16, 24]
    last_two = timm.create_model('emo_1m', features_only=True, out_indices=(2, 3))
    assert last_two.feature_info.channels() == [80, 168]


def test_prune_intermediate_layers():
    model = timm.create_model('emo_test').eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=[1], intermediates_only=True)[0]
        model.prune_intermediate_layers([1])
        assert len(model.stage3) == 0 and len(model.stage4) == 0 and isinstance(model.head, nn.Identity)
        assert model.num_features == 24
        torch.testing.assert_close(model.forward_intermediates(x, indices=[1], intermediates_only=True)[0], expected)
        assert model(x).shape == (1, 24)


def test_grad_checkpointing_gives_identical_outputs_and_grads():
    torch.manual_seed(0)
    model = timm.create_model('emo_test', drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_ckpt = model(x)
    out_ckpt.square().mean().backward()
    torch.testing.assert_close(out_ckpt, out)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def test_group_matcher_covers_every_parameter():
    model = timm.create_model('emo_1m')
    groups = group_parameters(model, model.group_matcher())
    names = [n for group in groups.values() for n in group]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    first = next(iter(groups.values()))
    assert all(n.startswith('stage0.') for n in first)
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == 6  # stem, 4 stages, then the unmatched norm + head


def test_pretrained_cfgs():
    assert set(VARIANTS) <= set(timm.list_models('emo_*')) and 'emo_test' in timm.list_models('emo_*')
    assert set(timm.list_pretrained('emo_*')) == {f'{v}.in1k' for v in VARIANTS}
    for variant in VARIANTS:
        model = timm.create_model(variant)
        cfg = model.pretrained_cfg
        assert cfg['url'] == f'https://github.com/zhangzjn/EMO/raw/main/resources/EMO_{variant[4:].upper()}/net.pth'
        assert cfg['url'] == emo.OFFICIAL_CHECKPOINTS[variant]
        assert cfg['input_size'] == (3, 224, 224) and cfg['crop_pct'] == 0.875
        assert cfg['interpolation'] == 'bicubic'
        assert cfg['mean'] == (0.485, 0.456, 0.406) and cfg['std'] == (0.229, 0.224, 0.225)
        assert cfg['first_conv'] == 'stage0.0.convs.0.0' and cfg['classifier'] == 'head'
        sd = model.state_dict()
        assert f"{cfg['first_conv']}.weight" in sd and f"{cfg['classifier']}.weight" in sd
        assert cfg['license']


def test_in_chans_and_num_classes_kwargs():
    model = timm.create_model('emo_test', in_chans=1, num_classes=5)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 5)
    assert isinstance(model, EMO)


def test_window_size_override():
    model = timm.create_model('emo_test')
    model.set_window_size(10)
    assert {b.window_size for s in model.stages for b in s if b.attn_s} == {10}
    assert timm.create_model('emo_test', window_sizes=(7, 7, 4, 0)).stage4[1].window_size == 0


@pytest.mark.gpu
def test_cuda_matches_cpu_and_amp(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    model = timm.create_model('emo_1m').eval()
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
        model = model.cuda()
        torch.testing.assert_close(model(x.cuda()).cpu(), expected, atol=1e-4, rtol=1e-3)
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast('cuda', dtype=dtype):
                out = model(x.cuda())
            assert torch.isfinite(out).all()
            # AMP changes the numerics; the logits must still agree closely with fp32
            assert (out.float().cpu() - expected).abs().max() < 0.1 * expected.abs().max()
        model = model.to(memory_format=torch.channels_last)
        out = model(x.cuda().to(memory_format=torch.channels_last))
        torch.testing.assert_close(out.cpu(), expected, atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
def test_cuda_training_step_amp():
    model = timm.create_model('emo_test').cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(8, 3, 64, 64, device='cuda')
    with torch.autocast('cuda', dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), torch.randint(0, 1000, (8,), device='cuda'))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
