"""The timm model contract, for every registered EMO variant: classifier reset and pooling, TorchScript, FX tracing
(plain torch.fx, torchvision's create_feature_extractor, timm's FX feature path), features_only,
forward_intermediates and the pretrained cfg fields that timm's tooling reads.

Written from timm's documented model interface (``reset_classifier(num_classes, global_pool)`` with '' meaning no
pooling, ``forward_head(x, pre_logits)``, ``forward_intermediates``, ``features_only`` / ``feature_cls='fx'``,
``pretrained_cfg``). Cheap checks run on every variant at 64 x 64, the backward pass through an FX graph and the
scripted FX graph on the tiny ``emo_test``.
"""

import copy

import pytest
import timm
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_model_data_config
from torchvision.models.feature_extraction import create_feature_extractor

import emo
from emo.model import EMO, iRMB

pytestmark = [
    pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning'),
    # emitted by torch.fx's own GraphModule when scripted, and torchvision's note on train/eval node names
    pytest.mark.filterwarnings('ignore:The TorchScript type system:UserWarning'),
    pytest.mark.filterwarnings('ignore:NOTE. The nodes obtained by tracing:UserWarning'),
]

VARIANTS = timm.list_models('emo_*')  # every registered EMO, so that new variants are covered automatically
PRETRAINED = [v for v in VARIANTS if v in emo.OFFICIAL_CHECKPOINTS]
TINY = 'emo_test'
SIZE = 64  # stage 3/4 maps of 4 x 4 and 2 x 2: both padded to the 7 x 7 window, so padding and crop are exercised


def _model(variant: str, **kwargs) -> EMO:
    torch.manual_seed(0)
    return timm.create_model(variant, **kwargs).eval()


def _input(*hw: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, *(hw or (SIZE, SIZE)), generator=torch.Generator().manual_seed(1))


def _set_fused_attn(model: nn.Module, enable: bool) -> None:
    for m in model.modules():
        if isinstance(m, iRMB):
            m.fused_attn = enable


def test_variants_are_enumerated():
    assert {'emo_1m', 'emo_2m', 'emo_5m', 'emo_6m', TINY} <= set(VARIANTS)
    assert set(PRETRAINED) == {'emo_1m', 'emo_2m', 'emo_5m', 'emo_6m'}


# ---- classifier and pooling ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('variant', VARIANTS)
def test_reset_classifier_without_pooling_returns_the_unpooled_map(variant):
    model = _model(variant)
    x = _input()
    with torch.no_grad():
        features = model.forward_features(x)
        model.reset_classifier(0)  # keeps the pooling: pooled features
        pooled = model(x)
        model.reset_classifier(0, '')  # no pooling, no classifier
        unpooled = model(x)
        head_only = model.forward_head(features)
        pre_logits = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    torch.testing.assert_close(pooled, features.mean((2, 3)), rtol=0, atol=0)
    assert unpooled.shape == (2, model.num_features, SIZE // 32, SIZE // 32)
    assert model.num_classes == 0 and isinstance(model.get_classifier(), nn.Identity)
    for out in (unpooled, head_only, pre_logits):
        torch.testing.assert_close(out, features, rtol=0, atol=0)
    model.reset_classifier(0)  # global_pool=None keeps the current (absent) pooling
    with torch.no_grad():
        assert model(x).dim() == 4


@pytest.mark.parametrize('variant', VARIANTS)
def test_create_model_without_pooling_and_classifier(variant):
    model = _model(variant, num_classes=0, global_pool='')
    with torch.no_grad():
        out = model(_input())
    assert out.shape == (2, model.num_features, SIZE // 32, SIZE // 32)
    assert dict(model.named_parameters()).keys().isdisjoint({'head.weight', 'head.bias'})


@pytest.mark.parametrize('variant', VARIANTS)
def test_reset_classifier_to_new_class_count(variant):
    model = _model(variant)
    x = _input()
    model.reset_classifier(0, '')
    model.reset_classifier(11, 'avg')
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert isinstance(model.head, nn.Linear) and model.head.in_features == model.num_features
    assert logits.shape == (2, 11) and model.num_classes == 11
    torch.testing.assert_close(logits, model.head(features.mean((2, 3))))


def test_default_head_keeps_the_official_order():
    """norm -> spatial mean -> Linear, bit for bit (the official ``reduce(x, 'b c h w -> b c', 'mean')``)."""
    model = _model(TINY)
    x = _input()
    with torch.no_grad():
        y = model.stage0(x)
        for stage in (model.stage1, model.stage2, model.stage3, model.stage4):
            y = stage(y)
        expected = model.head(model.norm(y).mean((2, 3)))
        out = model(x)
    assert torch.equal(out, expected)


@pytest.mark.parametrize(
    ('pool', 'reference', 'width'),
    [
        ('max', lambda f: f.amax((2, 3)), 1),
        ('avgmax', lambda f: 0.5 * (f.mean((2, 3)) + f.amax((2, 3))), 1),
        ('catavgmax', lambda f: torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1), 2),
        ('fast', lambda f: f.mean((2, 3)), 1),
    ],
)
def test_other_timm_pool_types(pool, reference, width):
    model = _model(TINY)
    x = _input()
    model.reset_classifier(5, pool)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model(x)
    assert model.head.in_features == width * model.num_features
    torch.testing.assert_close(pre_logits, reference(features))
    torch.testing.assert_close(logits, model.head(reference(features)))


def test_invalid_pooling_is_a_clear_error():
    model = _model(TINY)
    with pytest.raises(ValueError, match='unknown global_pool'):
        model.reset_classifier(3, 'token')
    with pytest.raises(ValueError, match='needs num_classes=0'):
        model.reset_classifier(3, '')
    with pytest.raises(ValueError, match='needs num_classes=0'):
        timm.create_model(TINY, global_pool='')
    assert model.num_classes == 1000 and model.head.out_features == 1000  # a refused reset changes nothing


# ---- TorchScript ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('variant', VARIANTS)
def test_torchscript_equals_eager(variant):
    model = _model(variant)
    x = _input()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('fused', [True, False])
def test_torchscript_odd_sizes_and_no_pooling(fused):
    """Input whose stage maps need different bottom/right padding; explicit and fused attention; unpooled head."""
    model = _model(TINY)
    _set_fused_attn(model, fused)
    model.reset_classifier(0, '')
    x = _input(80, 72)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        out = scripted(x)
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    assert out.shape == (2, model.num_features, 3, 3)


# ---- FX --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('variant', VARIANTS)
def test_fx_symbolic_trace_equals_eager(variant):
    model = _model(variant)
    x = _input()
    graph_module = torch.fx.symbolic_trace(model)
    # the shape-dependent EW-MHSA helpers are leaves (one call each), not traced-through control flow
    leaf_calls = [
        n.target.__name__
        for n in graph_module.graph.nodes
        if n.op == 'call_function' and getattr(n.target, '__module__', '') == 'emo.model'
    ]
    attention_blocks = sum(isinstance(m, iRMB) and m.attn_s for m in model.modules())
    assert attention_blocks > 0
    assert sorted(set(leaf_calls)) == ['crop_to_size_of', 'grid_attention', 'pad_to_window_multiple']
    assert len(leaf_calls) == 3 * attention_blocks
    with torch.no_grad():
        torch.testing.assert_close(graph_module(x), model(x), rtol=1e-5, atol=1e-5)


def test_fx_backward_equals_eager():
    """Training-mode trace (BatchNorm on batch statistics): same loss and same gradient for every parameter."""
    torch.manual_seed(0)
    model = timm.create_model(TINY, drop_path_rate=0.0).train()
    traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    x = _input(80, 72)
    losses = []
    for net in (model, traced):
        loss = net(x).logsumexp(-1).mean()
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    traced_params = dict(traced.named_parameters())
    assert traced_params.keys() == dict(model.named_parameters()).keys()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(traced_params[name].grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_torchscript_of_fx_graph_equals_eager():
    model = _model(TINY)
    x = _input(80, 72)
    scripted = torch.jit.script(torch.fx.symbolic_trace(model))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('variant', VARIANTS)
def test_create_feature_extractor_returns_the_stage_outputs(variant):
    model = _model(variant)
    x = _input()
    nodes = [info['module'] for info in model.feature_info]
    assert nodes == ['stage1', 'stage2', 'stage3', 'stage4']
    extractor = create_feature_extractor(model, return_nodes=nodes)
    with torch.no_grad():
        features = extractor(x)
        expected = model.forward_intermediates(x, intermediates_only=True)
    assert list(features) == nodes
    for i, (out, ref) in enumerate(zip(features.values(), expected)):
        assert out.shape == (2, model.feature_info[i]['num_chs'], SIZE // 2 ** (i + 2), SIZE // 2 ** (i + 2))
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('variant', VARIANTS)
def test_features_only_hook_and_fx_paths_agree(variant):
    x = _input()
    torch.manual_seed(0)
    features = timm.create_model(variant, features_only=True).eval()
    torch.manual_seed(0)
    fx_features = timm.create_model(variant, features_only=True, feature_cls='fx').eval()
    assert features.feature_info.reduction() == fx_features.feature_info.reduction() == [4, 8, 16, 32]
    assert features.feature_info.channels() == fx_features.feature_info.channels()
    with torch.no_grad():
        outs, fx_outs = features(x), fx_features(x)
    assert len(outs) == len(fx_outs) == 4
    for out, fx_out, chs in zip(outs, fx_outs, features.feature_info.channels()):
        assert out.shape[1] == chs
        torch.testing.assert_close(fx_out, out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('variant', VARIANTS)
def test_forward_intermediates(variant):
    model = _model(variant)
    x = _input()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        features = model.forward_features(x)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    torch.testing.assert_close(final, features, rtol=0, atol=0)
    assert [t.shape for t in intermediates] == [
        (2, info['num_chs'], SIZE // info['reduction'], SIZE // info['reduction']) for info in model.feature_info
    ]
    assert len(last_two) == 2
    torch.testing.assert_close(last_two[1], intermediates[3], rtol=0, atol=0)


# ---- pretrained cfg ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('variant', VARIANTS)
def test_pretrained_cfg_fields(variant):
    model = _model(variant)
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    channels, height, width = cfg['input_size']
    assert channels == 3 and cfg['pool_size'] == (height // 32, width // 32)
    assert cfg['num_classes'] == model.num_classes == 1000
    assert cfg['interpolation'] == 'bicubic' and 0 < cfg['crop_pct'] <= 1
    assert cfg['mean'] == IMAGENET_DEFAULT_MEAN and cfg['std'] == IMAGENET_DEFAULT_STD
    state_dict = model.state_dict()
    assert state_dict[f"{cfg['first_conv']}.weight"].shape[1] == channels
    assert state_dict[f"{cfg['classifier']}.weight"].shape[0] == cfg['num_classes']
    assert model.get_classifier() is model.get_submodule(cfg['classifier'])
    # what timm's data pipeline resolves from the model
    data_cfg = resolve_model_data_config(model)
    assert data_cfg['input_size'] == cfg['input_size'] and data_cfg['crop_pct'] == cfg['crop_pct']
    assert data_cfg['mean'] == cfg['mean'] and data_cfg['interpolation'] == 'bicubic'
    if variant in PRETRAINED:
        assert cfg['input_size'] == (3, 224, 224) and cfg['crop_pct'] == 0.875
        assert cfg['url'] == emo.OFFICIAL_CHECKPOINTS[variant] and cfg['tag'] == 'in1k'
    # the unpooled map at the cfg's input size has the cfg's pool size (cheap for the tiny model only)
    if variant == TINY:
        model.reset_classifier(0, '')
        with torch.no_grad():
            assert model(torch.randn(1, *cfg['input_size'])).shape[-2:] == cfg['pool_size']
