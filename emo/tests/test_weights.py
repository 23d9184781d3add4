"""Official checkpoint loading: synthetic checkpoints with the official keys and shapes, in every accepted layout,
through load_official_checkpoint and through timm's pretrained machinery (offline)."""
import json
from pathlib import Path

import pytest
import timm
import torch

import emo  # noqa: F401  (registers the models)
from emo.weights import checkpoint_filter_fn, load_official_checkpoint, unwrap_state_dict

OFFICIAL_SHAPES = Path(__file__).resolve().parent / 'data' / 'emo_official_state_dict_shapes.json'


@pytest.fixture(scope='module')
def official_shapes():
    return json.loads(OFFICIAL_SHAPES.read_text())


def synthetic_checkpoint(shapes, seed=0):
    """Random tensors with the official keys and shapes (BN counters as int64 scalars, variances positive)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        if key.endswith('num_batches_tracked'):
            sd[key] = torch.tensor(1000 + seed, dtype=torch.long)
        elif key.endswith('running_var'):
            sd[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=gen) * 0.1
    return sd


def assert_loaded(model, sd):
    mismatched = [k for k, v in model.state_dict().items() if not torch.equal(v, sd[k])]
    assert not mismatched, mismatched


@pytest.mark.parametrize('variant', ['emo_1m', 'emo_2m', 'emo_5m', 'emo_6m'])
def test_strict_load_of_official_layout(variant, official_shapes):
    sd = synthetic_checkpoint(official_shapes[variant])
    model = timm.create_model(variant)
    model.load_state_dict(checkpoint_filter_fn({'net': sd, 'net_E': sd}, model), strict=True)
    assert_loaded(model, sd)


def test_unwrap_prefers_ema_and_strips_prefixes():
    net, ema = {'a': torch.zeros(1)}, {'a': torch.ones(1)}
    assert unwrap_state_dict({'net': net, 'net_E': ema, 'optimizer': {}})['a'].item() == 1
    assert unwrap_state_dict({'net': net, 'net_E': ema}, use_ema=False)['a'].item() == 0
    assert unwrap_state_dict({'net': net, 'net_E': None})['a'].item() == 0  # trainer run without EMA
    assert unwrap_state_dict({'state_dict': net, 'state_dict_ema': ema})['a'].item() == 1
    assert list(unwrap_state_dict({'module._orig_mod.a': torch.zeros(1)})) == ['a']
    assert list(unwrap_state_dict({'model': {'module.a': torch.zeros(1)}})) == ['a']
    with pytest.raises(TypeError):
        unwrap_state_dict([1, 2])


@pytest.mark.parametrize('layout', ['flat', 'net_wrapped', 'ddp_prefixed'])
def test_load_official_checkpoint_file(layout, official_shapes, tmp_path):
    ema = synthetic_checkpoint(official_shapes['emo_1m'], seed=1)
    raw = synthetic_checkpoint(official_shapes['emo_1m'], seed=2)
    if layout == 'flat':
        ckpt = ema
    elif layout == 'net_wrapped':
        ckpt = {'net': raw, 'net_E': ema, 'epoch': 300}
    else:
        ckpt = {f'module.{k}': v for k, v in ema.items()}
    path = tmp_path / 'net.pth'
    torch.save(ckpt, path)
    model = timm.create_model('emo_1m')
    result = load_official_checkpoint(model, path)
    assert not result.missing_keys and not result.unexpected_keys
    assert_loaded(model, ema)
    if layout == 'net_wrapped':
        load_official_checkpoint(model, path, use_ema=False)
        assert_loaded(model, raw)


def test_timm_pretrained_from_local_file(official_shapes, tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    sd = synthetic_checkpoint(official_shapes['emo_1m'], seed=3)
    other = synthetic_checkpoint(official_shapes['emo_1m'], seed=4)
    path = tmp_path / 'net.pth'
    torch.save({'net': other, 'net_E': sd}, path)
    model = timm.create_model('emo_1m', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert_loaded(model, sd)
    # fine-tuning head: timm drops the 1000-class classifier, everything else is loaded
    model10 = timm.create_model('emo_1m', pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path)))
    assert model10.head.out_features == 10
    torch.testing.assert_close(model10.stage4[2].proj.conv.weight, sd['stage4.2.proj.conv.weight'])
    features = timm.create_model('emo_1m', pretrained=True, features_only=True,
                                 pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(features.stage3[1].qk.conv.weight, sd['stage3.1.qk.conv.weight'])


def test_backbone_without_head_ignores_classification_keys(official_shapes, tmp_path):
    sd = synthetic_checkpoint(official_shapes['emo_2m'])
    path = tmp_path / 'net.pth'
    torch.save(sd, path)
    model = timm.create_model('emo_2m')
    model.prune_intermediate_layers(indices=4, prune_norm=True, prune_head=True)
    load_official_checkpoint(model, path, strict=True)
    assert_loaded(model, sd)


def test_mismatching_checkpoint_fails_strict(official_shapes, tmp_path):
    sd = synthetic_checkpoint(official_shapes['emo_1m'])
    path = tmp_path / 'net.pth'
    torch.save(sd, path)
    with pytest.raises(RuntimeError, match='size mismatch'):
        load_official_checkpoint(timm.create_model('emo_2m'), path)


def test_weights_only_rejects_pickled_objects(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'net': {}, 'payload': torch.nn.ReLU()}, path)  # an arbitrary pickled object
    with pytest.raises(Exception, match='[Ww]eights only'):
        load_official_checkpoint(timm.create_model('emo_test'), path)


def test_missing_file_names_the_official_location(tmp_path):
    with pytest.raises(FileNotFoundError, match='zhangzjn/EMO'):
        load_official_checkpoint(timm.create_model('emo_test'), tmp_path / 'absent.pth')
