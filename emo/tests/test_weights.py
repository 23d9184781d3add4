"""Official checkpoint loading: synthetic checkpoints with the official keys and shapes, in every accepted layout,
through load_official_checkpoint and through timm's pretrained machinery (offline)."""

import hashlib
import json
from pathlib import Path

import pytest
import timm
import torch

import emo  # noqa: F401  (registers the models)
from emo.weights import (
    OFFICIAL_CHECKPOINT_GIT_SHA1,
    OFFICIAL_CHECKPOINTS,
    checkpoint_filter_fn,
    git_blob_sha1,
    load_official_checkpoint,
    official_cache_file_name,
    unwrap_state_dict,
)
from shared.testing import random_state_dict

OFFICIAL_SHAPES = Path(__file__).resolve().parent / 'data' / 'emo_official_state_dict_shapes.json'


@pytest.fixture(scope='module')
def official_shapes():
    return json.loads(OFFICIAL_SHAPES.read_text())


#: Random tensors with the official keys and shapes (``shared.testing.random_state_dict``).
synthetic_checkpoint = random_state_dict


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
    features = timm.create_model(
        'emo_1m', pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=str(path))
    )
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


# ---- pretrained=True without a local file: verified download, one cache file per variant (no network) ------------


def _git_hash_object(data: bytes) -> str:
    """Independent of emo.weights: what ``git hash-object`` prints for a file holding ``data``."""
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


class FakeDownload:
    """Stands in for ``torch.hub.download_url_to_file`` (which timm's URL loading and emo's download both call):
    writes the bytes registered for a URL and records each call."""

    def __init__(self, files_by_url):
        self.files_by_url = files_by_url
        self.calls = []

    def __call__(self, url, dst, hash_prefix=None, progress=True):
        self.calls.append((url, Path(dst).name))
        Path(dst).write_bytes(self.files_by_url[url])


def _checkpoint_bytes(shapes, seed, tmp_path):
    path = tmp_path / f'source_{seed}.pth'
    torch.save(synthetic_checkpoint(shapes, seed=seed), path)
    return path.read_bytes()


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub folder (timm's cache is <hub>/checkpoints) and no Hugging Face access."""
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    hub = tmp_path / 'hub'
    monkeypatch.setattr(torch.hub, '_hub_dir', str(hub))
    return hub


def test_git_blob_sha1_matches_git_hash_object(tmp_path):
    for data, known in [
        (b'', 'e69de29bb2d1d6434b8b29ae775ad8c2e48c5391'),
        (b'hello\n', 'ce013625030ba8dba906f756967f9e9ca394464a'),
    ]:  # `git hash-object` of each
        path = tmp_path / 'f'
        path.write_bytes(data)
        assert git_blob_sha1(path) == known == _git_hash_object(data)
    # the published checksums are 40-digit git object ids, one per variant, all different
    assert set(OFFICIAL_CHECKPOINT_GIT_SHA1) == set(OFFICIAL_CHECKPOINTS)
    assert len(set(OFFICIAL_CHECKPOINT_GIT_SHA1.values())) == 4
    assert all(len(h) == 40 and int(h, 16) >= 0 for h in OFFICIAL_CHECKPOINT_GIT_SHA1.values())


def test_pretrained_download_is_verified_and_cached_per_variant(official_shapes, hub_dir, tmp_path, monkeypatch):
    # EMO-1M and EMO-2M: the pair that collided in timm's shared `net.pth` cache entry
    variants = ['emo_1m', 'emo_2m']
    checkpoints = {v: synthetic_checkpoint(official_shapes[v], seed=i) for i, v in enumerate(variants)}
    files = {}
    for v in variants:
        torch.save(checkpoints[v], tmp_path / 'source.pth')
        files[OFFICIAL_CHECKPOINTS[v]] = (tmp_path / 'source.pth').read_bytes()
        # stand-in for the published checksum, which a synthetic file cannot have
        monkeypatch.setitem(OFFICIAL_CHECKPOINT_GIT_SHA1, v, _git_hash_object(files[OFFICIAL_CHECKPOINTS[v]]))
    download = FakeDownload(files)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)
    for v in variants:
        assert_loaded(timm.create_model(v, pretrained=True), checkpoints[v])
    assert [url for url, _ in download.calls] == [OFFICIAL_CHECKPOINTS[v] for v in variants]
    cached = sorted(p.name for p in (hub_dir / 'checkpoints').iterdir())
    assert cached == [official_cache_file_name(v) for v in variants]
    assert len({official_cache_file_name(v) for v in OFFICIAL_CHECKPOINTS}) == 4
    assert all(official_cache_file_name(v).startswith(f'{v}_in1k-') for v in OFFICIAL_CHECKPOINTS)
    # a second load reads the verified cache, without downloading again
    model = timm.create_model('emo_2m', pretrained=True, num_classes=10)
    assert len(download.calls) == 2
    torch.testing.assert_close(model.stage4[1].qk.conv.weight, checkpoints['emo_2m']['stage4.1.qk.conv.weight'])
    # timm's cache_dir argument is honoured
    other = tmp_path / 'other_cache'
    timm.create_model('emo_1m', pretrained=True, cache_dir=other)
    assert [p.name for p in other.iterdir()] == [official_cache_file_name('emo_1m')]


def test_download_with_wrong_checksum_is_rejected(official_shapes, hub_dir, tmp_path, monkeypatch):
    url = OFFICIAL_CHECKPOINTS['emo_1m']
    download = FakeDownload({url: _checkpoint_bytes(official_shapes['emo_1m'], 0, tmp_path)})
    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)
    with pytest.raises(RuntimeError, match='checksum mismatch') as error:
        timm.create_model('emo_1m', pretrained=True)
    message = str(error.value)
    assert url in message and OFFICIAL_CHECKPOINT_GIT_SHA1['emo_1m'] in message
    assert official_cache_file_name('emo_1m') in message
    assert len(download.calls) == 1
    # nothing unverified stays in the cache: a retry downloads again
    assert list((hub_dir / 'checkpoints').iterdir()) == []


def test_corrupt_cached_file_is_reported_not_loaded(hub_dir, monkeypatch):
    cache = hub_dir / 'checkpoints'
    cache.mkdir(parents=True)
    (cache / official_cache_file_name('emo_5m')).write_bytes(b'truncated')
    download = FakeDownload({})
    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)
    with pytest.raises(RuntimeError, match=f'cached checkpoint is corrupt.*{official_cache_file_name("emo_5m")}'):
        timm.create_model('emo_5m', pretrained=True)
    assert download.calls == []


def test_local_file_never_downloads(official_shapes, hub_dir, tmp_path, monkeypatch):
    download = FakeDownload({})
    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)
    sd = synthetic_checkpoint(official_shapes['emo_6m'], seed=5)
    path = tmp_path / 'net.pth'
    torch.save(sd, path)
    model = timm.create_model('emo_6m', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert_loaded(model, sd)
    assert download.calls == [] and not (hub_dir / 'checkpoints').exists()
