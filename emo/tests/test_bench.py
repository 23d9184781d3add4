"""bench.py on the tiny variant: one row per configuration, with positive throughput and no error; its command line."""

import pytest

from emo.bench import BenchConfig, main, parse_args

ARGS = [
    '--models',
    'emo_test',
    '--device',
    'cpu',
    '--img_size',
    '32',
    '--batch_size',
    '2',
    '--iters',
    '1',
    '--warmup',
    '1',
]


def _check(rows, modes, capsys):
    assert [(r['mode'], r['amp'], r['channels_last'], r['compile']) for r in rows] == [
        (mode, 'off', 'off', 'off') for mode in modes
    ]
    for row in rows:
        assert 'error' not in row, row
        assert row['img_s'] > 0 and row['ms_step'] > 0 and row['peak_mib'] >= 0
    out = capsys.readouterr().out
    assert 'img/s' in out and out.count('emo_test') == len(modes)


def test_bench_command_line():
    """The shared script shape: --key value, lists as [a,b] or one value, off/on switches, unknown keys rejected."""
    cfg = parse_args(
        [*ARGS, '--modes', '[infer,train]', '--amp', '[off,bf16]', '--channels_last', '[off,on]', '--fuse_bn', 'on']
    )
    assert cfg.models == ['emo_test'] and cfg.device == 'cpu' and cfg.modes == ['infer', 'train']
    assert (cfg.img_size, cfg.batch_size, cfg.iters, cfg.warmup) == (32, 2, 1, 1)
    assert cfg.amp == ['off', 'bf16'] and cfg.channels_last == ['off', 'on'] and cfg.fuse_bn == ['on']
    assert parse_args(['--models', '[emo_1m,emo_5m]', '--batch_sizes', '[1,16]', '--no-isolate']) == BenchConfig(
        models=['emo_1m', 'emo_5m'], batch_sizes=[1, 16], isolate=False
    )
    defaults = parse_args([])
    assert defaults == BenchConfig() and defaults.device == 'auto' and defaults.task == 'classification'
    for bad in (['--steps', '1'], ['--batch-size', '2'], ['--task', 'retinanet'], ['--amp', 'fp8']):
        with pytest.raises(SystemExit):
            parse_args(bad)
    with pytest.raises(ValueError, match="modes.*'infer', 'train'"):
        main(BenchConfig(modes=['graph']))
    with pytest.raises(ValueError, match="compile.*'off', 'on'"):
        main(BenchConfig(compile=['maybe']))


def test_bench_rows_in_process(capsys):
    rows = main(parse_args([*ARGS, '--modes', '[infer,train]', '--no-isolate']))
    _check(rows, ['infer', 'train'], capsys)


def test_bench_fuse_bn_rows_are_inference_only(capsys):
    rows = main(parse_args([*ARGS, '--modes', '[infer,train]', '--fuse_bn', '[off,on]', '--no-isolate']))
    assert [(r['mode'], r['fuse_bn']) for r in rows] == [('infer', 'off'), ('infer', 'on'), ('train', 'off')]
    assert all('error' not in r and r['img_s'] > 0 for r in rows), rows


@pytest.mark.slow
def test_bench_rows_isolated(capsys):
    """The CPU default: a spawned process per configuration (imports torch again, hence slow)."""
    rows = main(parse_args([*ARGS, '--modes', 'train', '--isolate']))
    _check(rows, ['train'], capsys)
    assert rows[0]['peak_mib'] > 0  # a fresh process has no cached memory to reuse


@pytest.mark.parametrize('task', ['ssdlite', 'deeplabv3', 'pspnet'])
def test_bench_dense_task_rows(task, capsys):
    args = [*ARGS[:4], '--batch_size', '2', '--iters', '1', '--warmup', '0', '--img_size', '64']
    rows = main(parse_args([*args, '--task', task, '--modes', 'train', '--no-isolate']))
    assert [r['mode'] for r in rows] == ['train']
    assert all('error' not in r and r['img_s'] > 0 for r in rows), rows
