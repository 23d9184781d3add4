"""ImageNet training/evaluation scripts: a tiny run of train.py re-evaluated by eval.py, official-layout checkpoints,
the recipe YAMLs against the official configs (README, Recipes), config validation, the optimizer's no-decay rule, the
RandAugment fix."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image, ImageOps
from timm.data import auto_augment
from timm.layers import DropPath
from timm.optim import create_optimizer_v2

import emo  # noqa: F401  (registers the models)
from emo import eval as emo_eval
from emo import train as emo_train
from emo.config import OFFICIAL_DROP_PATH
from emo.tests.test_weights import OFFICIAL_SHAPES, synthetic_checkpoint
from shared.augment import allow_zero_bit_posterize
from shared.checkpoint import load_checkpoint
from shared.classification import build_classification_model, build_loaders, evaluate
from shared.distributed import init_distributed

PKG = Path(emo_train.__file__).resolve().parent
CONFIGS = PKG / 'configs'
# a tiny version of the embedded default: 10 classes x 4 train / 2 val images of 32 px, one epoch of 5 steps
TINY = [
    '--data.synthetic_train_per_class',
    '4',
    '--data.synthetic_val_per_class',
    '2',
    '--data.synthetic_image_size',
    '32',
    '--data.img_size',
    '32',
    '--data.batch_size',
    '8',
    '--data.eval_batch_size',
    '8',
    '--data.workers',
    '0',
    '--epochs',
    '1',
    '--warmup_epochs',
    '0',
    '--device',
    'cpu',
    '--no-tensorboard',
    '--threads',
    'null',
]


def test_train_writes_run_folder_and_eval_reproduces_it(synthetic_root, tmp_path, capsys):
    out = tmp_path / 'run'
    returned = emo_train.main(emo_train.parse_args([*TINY, '--output_dir', str(out)]))
    for name in ('config.yaml', 'log.csv', 'metrics.json', 'last.pt', 'best.pt', 'train.log'):
        assert (out / name).is_file(), name
    written = json.loads((out / 'metrics.json').read_text())
    assert written['model'] == 'emo_test' and written['evaluated'] == 'ema'
    last = written['last']
    assert returned['last'] == pytest.approx(last)
    assert {'top1', 'top5', 'ema_top1', 'ema_top5'} <= set(last)
    state = load_checkpoint(out / 'last.pt')
    assert state['epoch'] == 0 and state['step'] == 5  # 40 images / batch 8
    assert state['config']['model'] == 'emo_test' and state['config']['drop_path'] == 0.0

    result = emo_eval.main(emo_eval.parse_args(['--checkpoint', str(out / 'last.pt'), '--device', 'cpu']))
    assert result['weights'] == ['ema', 'raw']
    for key in ('top1', 'top5', 'loss', 'ema_top1', 'ema_top5', 'ema_loss'):
        assert result[key] == pytest.approx(last[key], abs=1e-9), key
    assert json.loads((out / 'eval' / 'metrics.json').read_text())['ema_top1'] == pytest.approx(last['ema_top1'])
    printed = capsys.readouterr().out
    assert '[ema] top-1' in printed and '[raw] top-1' in printed


def test_official_trainer_layout_evaluates(synthetic_root, tmp_path):
    """{'net', 'net_E'} with the official keys/shapes of EMO-1M: net_E reported as EMA, net as raw."""
    shapes = json.loads(OFFICIAL_SHAPES.read_text())['emo_1m']
    raw, ema = synthetic_checkpoint(shapes, seed=1), synthetic_checkpoint(shapes, seed=2)
    path = tmp_path / 'net.pth'
    torch.save({'net': raw, 'net_E': ema, 'epoch': 300}, path)
    args = [*TINY, '--model', 'emo_1m', '--num_classes', '1000']
    result = emo_eval.main(
        emo_eval.parse_args([*args, '--checkpoint', str(path), '--output_dir', str(tmp_path / 'eval')])
    )
    assert result['weights'] == ['ema', 'raw']
    assert (tmp_path / 'eval' / 'metrics.json').is_file()

    cfg = emo_train.parse_args(args)
    ctx = init_distributed('cpu')
    _, val_loader, _ = build_loaders(cfg.data, ctx, cfg.seed)
    model = build_classification_model(cfg, 1000)
    for weights, prefix in ((ema, 'ema_'), (raw, '')):
        model.load_state_dict(weights)
        reference = evaluate(model, val_loader, ctx)
        assert result[prefix + 'top1'] == pytest.approx(reference['top1'])
        assert result[prefix + 'loss'] == pytest.approx(reference['loss'])
    assert result['loss'] != pytest.approx(result['ema_loss'])

    flat = tmp_path / 'flat.pth'
    torch.save(ema, flat)
    single = emo_eval.main(
        emo_eval.parse_args([*args, '--checkpoint', str(flat), '--output_dir', str(tmp_path / 'eval_flat')])
    )
    assert single['weights'] == ['weights'] and single['top1'] == pytest.approx(result['ema_top1'])


SHEET = {'emo_1m': 0.04036, 'emo_2m': 0.05, 'emo_5m': 0.05, 'emo_6m': 0.05}


@pytest.mark.parametrize('variant', sorted(SHEET))
def test_recipe_yaml_is_the_paper_recipe(variant):
    cfg = emo_train.parse_args(['-c', str(CONFIGS / f'{variant}_in1k.yaml')])
    assert cfg.model == variant and cfg.drop_path == SHEET[variant]
    assert (cfg.opt, cfg.lr, cfg.lr_base_batch, cfg.opt_betas, cfg.opt_eps) == ('adamw', 6e-3, 2048, (0.9, 0.999), 1e-8)
    assert (cfg.weight_decay, cfg.epochs, cfg.warmup_epochs, cfg.warmup_lr, cfg.min_lr) == (0.05, 300, 20, 1e-6, 1e-6)
    assert (cfg.ema_decay, cfg.clip_grad, cfg.smoothing, cfg.mixup, cfg.cutmix) == (0.9998, 5.0, 0.1, 0.0, 0.0)
    assert cfg.amp == 'fp16' and cfg.pretrained is None
    d = cfg.data
    assert not d.synthetic and d.batch_size * 8 == 2048  # 8 GPUs x 256: the official global batch, lr 6e-3
    assert (d.img_size, d.crop_pct, d.interpolation, math.floor(d.img_size / d.crop_pct)) == (
        224,
        0.875,
        'bicubic',
        256,
    )
    assert (d.train_interpolation, d.auto_augment, d.color_jitter, d.re_prob) == (
        'random',
        'rand-m9-mstd0.5-inc1',
        0.4,
        0.0,
    )
    assert (d.scale, d.hflip) == ((0.08, 1.0), 0.5)


def test_official_drop_path_table_matches_the_constructors():
    for variant, rate in OFFICIAL_DROP_PATH.items():
        model = timm.create_model(variant)
        assert max(m.drop_prob for m in model.modules() if isinstance(m, DropPath)) == pytest.approx(rate)
    assert emo_train.parse_args(['--model', 'emo_5m']).drop_path == 0.05  # null: the official rate
    assert emo_train.parse_args(['--model', 'emo_5m', '--drop_path', '0.1']).drop_path == 0.1
    assert emo_train.parse_args(['--model', 'emo_test']).drop_path == 0.0


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        emo_train.parse_args(['--learning_rate', '0.1'])
    assert 'unknown argument' in capsys.readouterr().err
    bad = tmp_path / 'bad.yaml'
    bad.write_text('model: emo_1m\ndata:\n  rooot: /data\n')
    with pytest.raises(SystemExit):
        emo_train.parse_args(['-c', str(bad)])
    err = capsys.readouterr().err
    assert "unknown config key 'data.rooot'" in err and 'data.root' in err
    with pytest.raises(SystemExit):
        emo_eval.parse_args([])
    assert '--checkpoint PATH is required' in capsys.readouterr().err
    ckpt = tmp_path / 'weights.pt'
    torch.save(timm.create_model('emo_test').state_dict(), ckpt)
    with pytest.raises(SystemExit):
        emo_eval.parse_args(['--checkpoint', str(ckpt), '--epochs', 'three'])
    assert "config key 'epochs': expected an integer" in capsys.readouterr().err


def test_timm_no_decay_rule_equals_the_official_one():
    """Official optim/__init__.py: no decay for 1-D parameters and names ending in '.bias' (EMO has no skip list)."""
    model = timm.create_model('emo_1m')
    assert not hasattr(model, 'no_weight_decay')
    groups = create_optimizer_v2(model, opt='adamw', lr=1e-3, weight_decay=0.05).param_groups
    ours = {id(p) for g in groups if g['weight_decay'] == 0 for p in g['params']}
    official = {id(p) for n, p in model.named_parameters() if p.ndim == 1 or n.endswith('.bias')}
    assert ours == official and 0 < len(official) < len(list(model.parameters()))
    assert {g['weight_decay'] for g in groups} == {0.0, 0.05}


def test_zero_bit_posterize_gives_a_black_image():
    image = Image.new('RGB', (8, 8), (200, 100, 50))
    with pytest.raises(ValueError):  # what the installed Pillow does with timm's magnitude-10 PosterizeIncreasing
        ImageOps.posterize(image, 0)
    allow_zero_bit_posterize()
    op = auto_augment.AugmentOp('PosterizeIncreasing', prob=1.0, magnitude=10)
    assert op.level_fn(10, op.hparams) == (0,)
    out = op(image)
    assert out.size == image.size and out.getextrema() == ((0, 0), (0, 0), (0, 0))
    assert auto_augment.NAME_TO_OP['PosterizeIncreasing'](image, 4).getpixel((0, 0)) == (192, 96, 48)


def test_train_py_runs_as_a_script_from_the_package_folder():
    result = subprocess.run(
        [sys.executable, 'train.py', '--help'], cwd=PKG, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert '--data.root' in result.stdout and '--drop_path' in result.stdout


def test_unwrap_recognises_training_checkpoint_layouts():
    """emo.weights (used by build_retinanet's pretrained_backbone) prefers the EMA of a train.py checkpoint."""
    from emo.weights import unwrap_state_dict

    raw, ema = {'a': torch.zeros(1)}, {'a': torch.ones(1)}
    assert unwrap_state_dict({'model': raw, 'ema': ema, 'optimizer': {}, 'epoch': 3})['a'].item() == 1
    assert unwrap_state_dict({'model': raw, 'ema': ema}, use_ema=False)['a'].item() == 0
    assert unwrap_state_dict({'model': raw, 'ema': None})['a'].item() == 0  # trained with ema_decay: null
    assert unwrap_state_dict({'model': raw, 'model_ema': ema})['a'].item() == 1
    assert unwrap_state_dict({'net': raw, 'net_E': ema})['a'].item() == 1


def test_eval_reads_a_config_stored_before_the_run_level_renames(tmp_path):
    """Checkpoints written before RunConfig stored ``torch_threads`` and ``device: null``; eval still resolves them."""
    path = tmp_path / 'old.pt'
    torch.save(
        {
            'model': {},
            'config': {
                'model': 'emo_test',
                'torch_threads': 1,
                'device': None,
                'output_dir': '/elsewhere',
                'data': {'img_size': 32},
            },
        },
        path,
    )
    cfg = emo_eval.parse_args(['--checkpoint', str(path)])
    assert (cfg.model, cfg.threads, cfg.device, cfg.data.img_size, cfg.output_dir) == ('emo_test', 1, 'auto', 32, None)
    assert emo_eval.parse_args(['--checkpoint', str(path), '--output_dir', 'here']).output_dir == 'here'
