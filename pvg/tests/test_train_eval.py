"""train.py / eval.py on a tiny synthetic ImageFolder set: the run folder, eval reproducing the run's metrics, an
exact resume, the recipe YAMLs, and clear errors for bad input."""

import json

import pytest
import torch

import pvg  # noqa: F401  (registers the models)
from pvg import eval as pvg_eval
from pvg import train as pvg_train
from pvg.config import CONFIG_DIR
from shared.checkpoint import CheckpointError, load_checkpoint
from shared.classification import run_classification
from shared.config import load_yaml
from shared.testing import assert_same_tensors

TINY = [
    '--data.synthetic_train_per_class', '2',
    '--data.synthetic_val_per_class', '1',
    '--data.synthetic_image_size', '64',
    '--data.img_size', '64',
    '--data.batch_size', '10',
    '--data.eval_batch_size', '10',
    '--data.workers', '0',
    '--epochs', '2',
    '--warmup_epochs', '1',
    '--device', 'cpu',
    '--no-tensorboard',
    '--threads', 'null',
]  # fmt: skip


def test_train_then_eval_reproduces_the_metrics(synthetic_root, tmp_path, capsys):
    out = tmp_path / 'run'
    returned = pvg_train.main(pvg_train.parse_args([*TINY, '--output_dir', str(out)]))
    for name in ('config.yaml', 'log.csv', 'metrics.json', 'last.pt', 'best.pt'):
        assert (out / name).is_file(), name
    last = json.loads((out / 'metrics.json').read_text())['last']
    assert returned['last'] == pytest.approx(last)
    state = load_checkpoint(out / 'last.pt')
    assert state['config']['model'] == 'pvg_test' and state['step'] == 4
    result = pvg_eval.main(pvg_eval.parse_args(['--checkpoint', str(out / 'last.pt'), '--device', 'cpu']))
    assert result['weights'] == ['ema', 'raw']
    for key in ('top1', 'top5', 'ema_top1', 'ema_top5'):
        assert result[key] == pytest.approx(last[key], abs=1e-9), key
    assert 'pvg_test after 2 epochs' in capsys.readouterr().out


class _Killed(Exception):
    pass


def test_resume_ends_where_an_uninterrupted_run_ends(synthetic_root, tmp_path):
    """A PVG run killed after epoch 0 and resumed ends bit-identical to an uninterrupted one (graph caches and the
    frozen relative_pos included)."""
    run_classification(pvg_train.parse_args([*TINY, '--output_dir', str(tmp_path / 'full')]), 'pvg')

    def kill_after_first_epoch(epoch, row):
        if epoch == 0:
            raise _Killed

    with pytest.raises(_Killed):
        run_classification(
            pvg_train.parse_args([*TINY, '--output_dir', str(tmp_path / 'cut')]), 'pvg', kill_after_first_epoch
        )
    cut = tmp_path / 'cut' / 'last.pt'
    assert load_checkpoint(cut)['epoch'] == 0
    run_classification(
        pvg_train.parse_args([*TINY, '--output_dir', str(tmp_path / 'cut'), '--resume', str(cut)]), 'pvg'
    )
    a, b = load_checkpoint(tmp_path / 'full' / 'last.pt'), load_checkpoint(cut)
    for key in ('model', 'ema', 'optimizer', 'epoch', 'step'):
        assert_same_tensors(a[key], b[key], key)


def test_official_release_file_is_evaluated_strictly(synthetic_root, tmp_path):
    import timm

    model = timm.create_model('pvg_test', num_classes=10)
    path = tmp_path / 'weights.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    result = pvg_eval.main(pvg_eval.parse_args(['--checkpoint', str(path), *TINY, '--output_dir', str(tmp_path / 'e')]))
    assert result['weights'] == ['weights'] and 0 <= result['top1'] <= 100
    torch.save({'state_dict': {k: v for k, v in model.state_dict().items() if 'fc1' not in k}}, path)
    with pytest.raises(RuntimeError, match='does not fit pvg_test'):
        pvg_eval.main(pvg_eval.parse_args(['--checkpoint', str(path), *TINY, '--output_dir', str(tmp_path / 'f')]))


def test_foreign_checkpoint_and_unknown_key_are_refused(tmp_path):
    foreign = tmp_path / 'other.pt'
    torch.save({'package': 'emo', 'model': {}}, foreign)
    with pytest.raises(CheckpointError, match='not a pvg checkpoint'):
        pvg_eval.parse_args(['--checkpoint', str(foreign)])
    with pytest.raises(SystemExit):
        pvg_train.parse_args(['--graph_radius', '3'])


def test_recipes_are_the_vig_recipe():
    base = load_yaml(CONFIG_DIR / 'pvig_s_in1k.yaml')
    assert base['model'] == 'pvig_s'
    assert (base['lr'], base['lr_base_batch'], base['weight_decay'], base['epochs'], base['warmup_epochs']) == (
        2e-3, 1024, 0.05, 300, 20
    )  # fmt: skip
    assert (base['mixup'], base['cutmix'], base['smoothing'], base['ema_decay'], base['drop_path']) == (
        0.8, 1.0, 0.1, 0.99996, 0.1
    )  # fmt: skip
    data = base['data']
    assert data['auto_augment'] == 'rand-m9-mstd0.5-inc1' and (data['re_prob'], data['re_mode']) == (0.25, 'pixel')
    assert data['mean'] == data['std'] == [0.5, 0.5, 0.5] and data['crop_pct'] == 0.9
    assert load_yaml(CONFIG_DIR / 'pvig_b_in1k.yaml')['data']['crop_pct'] == 0.95
    assert load_yaml(CONFIG_DIR / 'pvg_s_in1k.yaml')['model'] == 'pvg_s'
