"""bench.py on the tiny variant: one row per configuration, with positive throughput and no error."""

import pytest

from emo.bench import main

ARGS = [
    '--models',
    'emo_test',
    '--device',
    'cpu',
    '--img-size',
    '32',
    '--batch-size',
    '2',
    '--steps',
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


def test_bench_rows_in_process(capsys):
    rows = main([*ARGS, '--modes', 'infer', 'train', '--no-isolate'])
    _check(rows, ['infer', 'train'], capsys)


def test_bench_fuse_bn_rows_are_inference_only(capsys):
    rows = main([*ARGS, '--modes', 'infer', 'train', '--fuse-bn', 'off', 'on', '--no-isolate'])
    assert [(r['mode'], r['fuse_bn']) for r in rows] == [('infer', 'off'), ('infer', 'on'), ('train', 'off')]
    assert all('error' not in r and r['img_s'] > 0 for r in rows), rows


@pytest.mark.slow
def test_bench_rows_isolated(capsys):
    """The CPU default: a spawned process per configuration (imports torch again, hence slow)."""
    rows = main([*ARGS, '--modes', 'train', '--isolate'])
    _check(rows, ['train'], capsys)
    assert rows[0]['peak_mib'] > 0  # a fresh process has no cached memory to reuse


@pytest.mark.parametrize('task', ['ssdlite', 'deeplabv3', 'pspnet'])
def test_bench_dense_task_rows(task, capsys):
    args = [*ARGS[:4], '--batch-size', '2', '--steps', '1', '--warmup', '0', '--img-size', '64']
    rows = main([*args, '--task', task, '--modes', 'train', '--no-isolate'])
    assert [r['mode'] for r in rows] == ['train']
    assert all('error' not in r and r['img_s'] > 0 for r in rows), rows
