"""Pyramid ViG against the official model (state_dict keys/order/shapes, trainable parameters, MACs from the manifest in
tests/data), the parts that loading official weights depends on, PVG's size, and inputs of any size."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import pvg  # noqa: F401  (registers the models)
from pvg.model import GraphLU, MaxE, MaxRelativeConv, PyramidViG, psgc_global_channels

MANIFEST = json.loads((Path(__file__).resolve().parent / 'data' / 'pvig_official_state_dict_shapes.json').read_text())
TRAINABLE = {'ti': 10_714_376, 's': 27_251_912, 'm': 49_525_832, 'b': 92_980_328}


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _assert_official_state_dict(model, variant):
    reference = MANIFEST[f'pvig_{variant}_224_gelu']
    own = model.state_dict()
    assert list(own) == list(reference)  # keys and their order
    wrong = {k: (list(v.shape), reference[k]) for k, v in own.items() if list(v.shape) != reference[k]}
    assert not wrong, wrong


@pytest.fixture(scope='module')
def pvig_s():
    torch.manual_seed(0)
    return timm.create_model('pvig_s').eval()


@pytest.mark.parametrize(
    'variant', ['ti', 's', pytest.param('m', marks=pytest.mark.slow), pytest.param('b', marks=pytest.mark.slow)]
)  # M and B take 5-7 s each to build on a busy 2-core machine
def test_state_dict_and_trainable_parameters_equal_the_official_model(variant, pvig_s):
    model = pvig_s if variant == 's' else timm.create_model(f'pvig_{variant}')
    _assert_official_state_dict(model, variant)
    assert _trainable(model) == TRAINABLE[variant]
    rel = [n for n, p in model.named_parameters() if n.endswith('relative_pos')]
    assert rel and all(not model.get_parameter(n).requires_grad for n in rel)


def _macs(model, size=224):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 2


@pytest.mark.parametrize(
    'variant', ['ti', 's', pytest.param('m', marks=pytest.mark.slow), pytest.param('b', marks=pytest.mark.slow)]
)
def test_macs_equal_the_official_count(variant, pvig_s):
    model = pvig_s if variant == 's' else timm.create_model(f'pvig_{variant}').eval()
    official = MANIFEST['macs_flopcounter_224'][f'pvig_{variant}_224_gelu']
    assert abs(_macs(model) - official) / official < 1e-3


def test_dilation_and_reduction_schedule_is_the_official_one(pvig_s):
    graphers = [blk[0] for blk in pvig_s.backbone if isinstance(blk, torch.nn.Sequential)]
    assert [g.graph_conv.dilation for g in graphers] == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert [g.graph_conv.reduction for g in graphers] == [4, 4, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1]
    assert {g.graph_conv.k for g in graphers} == {9}


def _mae_relative_pos(dim, grid):
    """Independent numpy reference: MAE's 2-D sin-cos embedding, R = 2 P P^T / dim (the official helper's maths)."""

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum('m,d->md', pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    pos = np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)
    return 2 * pos @ pos.T / pos.shape[1]


def test_relative_pos_is_the_negated_sincos_similarity(pvig_s):
    grapher = pvig_s.backbone[6][0]  # stage 3, 14 x 14 nodes, no reduction: no resizing involved
    expected = -torch.from_numpy(np.float32(_mae_relative_pos(400, 14)))
    torch.testing.assert_close(grapher.relative_pos[0], expected, rtol=0, atol=1e-6)
    reduced = pvig_s.backbone[0][0].relative_pos  # stage 1: resized to (3136, 196)
    assert reduced.shape == (1, 3136, 196)
    assert reduced[0].argmin(1)[0] == 0  # node 0 is nearest to the key cell holding it


def test_max_relative_conv_interleaves_channels():
    """groups=4 makes the channel order observable: [x_0, m_0, x_1, m_1, ...] (a concatenation would differ)."""
    torch.manual_seed(0)
    conv = MaxRelativeConv(8, torch.nn.Identity()).eval()
    x, m = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
    interleaved = torch.stack([x, m], 2).reshape(2, 16, 3, 3)
    expected = conv.nn[1](torch.nn.functional.conv2d(interleaved, conv.nn[0].weight, conv.nn[0].bias, groups=4))
    torch.testing.assert_close(conv(x, m), expected)
    concatenated = conv.nn[1](
        torch.nn.functional.conv2d(torch.cat([x, m], 1), conv.nn[0].weight, conv.nn[0].bias, groups=4)
    )
    assert not torch.allclose(conv(x, m), concatenated)


def test_maxe_combines_max_and_expectation():
    torch.manual_seed(0)
    maxe = MaxE(8, torch.nn.Identity(), combine='sum').eval()
    x, mx, mean = torch.randn(3, 2, 8, 3, 3).unbind(0)
    torch.testing.assert_close(maxe(x, mx, mean), maxe.nn(x + mx + mean))
    with pytest.raises(ValueError, match='mean'):
        maxe(x, mx)


def test_graphlu_relaxes_gelu():
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(GraphLU(0.0)(x), torch.nn.functional.gelu(x))
    y = GraphLU(1.0)(x)
    expected = x * 0.5 * (1 + torch.erf(x / (2 * math.sqrt(2))))
    torch.testing.assert_close(y, expected)
    negative = x < -0.5
    assert (y[negative].abs() > torch.nn.functional.gelu(x)[negative].abs()).all()  # low values less suppressed


def test_pvg_s_size_is_the_papers():
    model = timm.create_model('pvg_s')
    assert abs(_trainable(model) - 22.2e6) / 22.2e6 < 0.03
    assert _trainable(model) < 0.85 * TRAINABLE['s']  # the paper: 18.5 % fewer than Pyramid ViG-S


def test_psgc_global_share_grows_with_depth():
    model = timm.create_model('pvg_test')
    graphers = [blk[0] for blk in model.backbone if isinstance(blk, torch.nn.Sequential)]
    share = [g.graph_conv.global_channels / g.fc1[0].out_channels for g in graphers]
    assert share == sorted(share) and share[0] < 0.5 and share[-1] == 1.0
    assert psgc_global_channels(80, 0.25) == 20 and psgc_global_channels(80, 1.0) == 80


@pytest.mark.parametrize('variant', ['pvig_test', 'pvg_test'])
@pytest.mark.parametrize('size', [(64, 64), (96, 80), (48, 64)])
def test_any_input_size(variant, size):
    """pos_embed and relative_pos are interpolated to the input (the official code only runs at its design size)."""
    torch.manual_seed(0)
    model = timm.create_model(variant, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize('variant', ['pvig_test', 'pvg_test'])
def test_a_design_size_the_reduction_does_not_divide(variant):
    """img_size 200: stage 1 is 50 x 50 and its r = 4 pooled keys 12 x 12 (not 2500 / 16), as avg-pooling gives."""
    model = timm.create_model(variant, num_classes=3, img_size=200).eval()
    assert model.backbone[0][0].relative_pos.shape == (1, 2500, 144)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 200, 200)).shape == (1, 3)


def test_smaller_input_lowers_the_dilation_and_too_small_is_an_error():
    model = timm.create_model('pvig_test').eval()
    last = model.backbone[-1][0].graph_conv
    assert last.effective_dilation(4) == 1 and last.effective_dilation(1000) == last.dilation
    with pytest.raises(ValueError, match='neighbours'), torch.no_grad():
        model(torch.randn(1, 3, 32, 32))  # stage 4 is 1 x 1: fewer nodes than k


def test_bad_switches_are_clear_errors():
    for kwargs, match in (
        (dict(graph='grid'), 'graph'),
        (dict(aggregation='sum'), 'aggregation'),
        (dict(block_act='relu'), 'activation'),
        (dict(graph_mode='sparse'), 'graph_mode'),
        (dict(global_pool='max'), 'global_pool'),
    ):
        with pytest.raises(ValueError, match=match):
            PyramidViG(depths=(1, 1, 1, 1), channels=(8, 16, 16, 16), k=4, img_size=64, **kwargs)


def test_timm_contract_features_and_classifier():
    torch.manual_seed(0)
    model = timm.create_model('pvg_test').eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
        final, inter = model.forward_intermediates(x)
        pre = model.forward_head(features, pre_logits=True)
    assert [t.shape[1:] for t in inter] == [(16, 16, 16), (32, 8, 8), (48, 4, 4), (64, 2, 2)]
    torch.testing.assert_close(final, features)
    torch.testing.assert_close(logits, model.prediction[4](pre[..., None, None]).flatten(1))
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, 64)  # the 1024-d MLP pre-logits of tiny width emb_dims=64
    model.reset_classifier(0, '')
    with torch.no_grad():
        torch.testing.assert_close(model(x), features)
    backbone = timm.create_model('pvg_test', features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        maps = backbone(x)
    assert [m.shape[1] for m in maps] == [32, 64] and backbone.feature_info.reduction() == [8, 32]
