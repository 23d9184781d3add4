"""Loading official Pyramid ViG release files: synthetic files with the official keys and shapes (from the manifest in
tests/data), flat and wrapped, through load_official_checkpoint and timm's pretrained machinery; strict errors."""

import json
from pathlib import Path

import pytest
import timm
import torch

import pvg  # noqa: F401  (registers the models)
from pvg.weights import OFFICIAL_RELEASE, checkpoint_filter_fn, load_official_checkpoint, unwrap_state_dict
from shared.checkpoint import CheckpointError
from shared.testing import random_state_dict

MANIFEST = json.loads((Path(__file__).resolve().parent / 'data' / 'pvig_official_state_dict_shapes.json').read_text())


@pytest.fixture(scope='module')
def release_ti(tmp_path_factory):
    sd = random_state_dict(MANIFEST['pvig_ti_224_gelu'])
    path = tmp_path_factory.mktemp('release') / 'pvig_ti_78.5.pth.tar'
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope='module')
def model_ti():
    return timm.create_model('pvig_ti').eval()


def _assert_loaded(model, sd):
    wrong = [k for k, v in model.state_dict().items() if not torch.equal(v, sd[k])]
    assert not wrong, wrong


@pytest.mark.parametrize(
    'wrap',
    [
        lambda sd: sd,
        lambda sd: {'state_dict': sd},
        lambda sd: {'state_dict': {}, 'state_dict_ema': sd},
        lambda sd: {'model': {k: v * 0 for k, v in sd.items()}, 'ema': sd},
        lambda sd: {f'module.{k}': v for k, v in sd.items()},
    ],
    ids=['flat', 'state_dict', 'state_dict_ema', 'model+ema', 'ddp_prefix'],
)
def test_official_layouts_load_strictly(wrap, release_ti, model_ti, tmp_path):
    _, sd = release_ti
    path = tmp_path / 'wrapped.pth'
    torch.save(wrap(sd), path)
    with torch.no_grad():
        for p in model_ti.parameters():
            p.zero_()
    load_official_checkpoint(model_ti, path)
    _assert_loaded(model_ti, sd)


def test_timm_pretrained_file_overlay_loads_the_release(release_ti):
    path, sd = release_ti
    model = timm.create_model('pvig_ti', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    _assert_loaded(model, sd)
    backbone = timm.create_model(
        'pvig_ti', pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(path))
    )  # a backbone without the classifier conv
    assert torch.equal(backbone.stem.convs[0].weight, sd['stem.convs.0.weight'])


def test_checkpoint_filter_keeps_every_weight_and_drops_only_a_missing_head(release_ti):
    _, sd = release_ti
    backbone = timm.create_model('pvig_test', num_classes=0)
    backbone.prediction[4] = torch.nn.Identity()
    filtered = checkpoint_filter_fn(
        {'state_dict': {'prediction.4.weight': torch.zeros(1), 'a': torch.zeros(1)}}, backbone
    )
    assert filtered.keys() == {'a'}  # kept: the strict load reports it
    assert checkpoint_filter_fn(sd, timm.create_model('pvig_test')).keys() == sd.keys()


def test_missing_unexpected_and_misshaped_keys_are_named(release_ti, model_ti, tmp_path):
    _, sd = release_ti
    model = model_ti
    cases = {
        'missing': {k: v for k, v in sd.items() if k != 'backbone.3.0.fc1.0.weight'},
        'unexpected': {**sd, 'backbone.3.0.extra': torch.zeros(1)},
        'shape': {**sd, 'pos_embed': torch.zeros(1, 48, 28, 28)},
    }
    for name, state in cases.items():
        path = tmp_path / f'{name}.pth'
        torch.save(state, path)
        with pytest.raises(RuntimeError, match='backbone.3.0|pos_embed'):
            load_official_checkpoint(model, path)
    with pytest.raises(RuntimeError, match='missing'):
        load_official_checkpoint(timm.create_model('pvig_test'), release_ti[0])  # another variant's file


def test_missing_file_names_the_release():
    with pytest.raises(FileNotFoundError, match='releases/tag/pyramid-vig'):
        load_official_checkpoint(timm.create_model('pvig_test'), '/nonexistent/pvig_s_82.1.pth.tar')
    assert 'pyramid-vig' in OFFICIAL_RELEASE


@pytest.mark.parametrize('content', ['text', [1, 2, 3], {'model': None}])
def test_a_file_that_is_not_a_checkpoint_is_named(content, tmp_path):
    path = tmp_path / 'weights.pth'
    path.write_text('not a checkpoint') if content == 'text' else torch.save(content, path)
    with pytest.raises(CheckpointError, match=f'not a .*checkpoint.*{path.name}'):
        load_official_checkpoint(timm.create_model('pvig_test'), path)


def test_unwrap_rejects_non_state_dicts():
    with pytest.raises(TypeError):
        unwrap_state_dict([1, 2])
    with pytest.raises(TypeError, match='not tensors'):
        unwrap_state_dict({'a': 'text'})
    assert unwrap_state_dict({'_orig_mod.module.a': torch.ones(1)}).keys() == {'a'}
