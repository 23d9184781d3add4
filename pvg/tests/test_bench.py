"""bench.py: the fast and the dense graph path are timed in one run, on the same model, with a speed-up column;
its command line."""

import pytest

import pvg  # noqa: F401  (registers the models)
from pvg import bench


def test_bench_command_line():
    """The shared script shape: --key value, lists as [a,b] or one value, unknown keys and bad values rejected."""
    cfg = bench.parse_args(
        ['--models', '[pvig_s,pvg_s]', '--batch_size', '4', '--img_size', '64', '--iters', '2', '--amp', '[off,bf16]']
    )
    assert cfg.models == ['pvig_s', 'pvg_s'] and (cfg.batch_size, cfg.img_size, cfg.iters) == (4, 64, 2)
    assert cfg.amp == ['off', 'bf16'] and cfg.device == 'auto'
    cfg = bench.parse_args(['--models', 'pvig_test', '--channels_last', '[off,on]', '--modes', 'graph'])
    assert cfg.models == ['pvig_test'] and cfg.channels_last == ['off', 'on'] and cfg.modes == ['graph']
    assert bench.parse_args([]) == bench.BenchConfig()
    for bad in (['--batch-size', '4'], ['--steps', '1'], ['--amp', 'fp8'], ['--device', 'tpu']):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
    with pytest.raises(ValueError, match="modes.*'infer', 'train', 'graph'"):
        bench.main(bench.BenchConfig(modes=['export']))


def test_bench_runs_fast_and_dense_in_one_call(capsys):
    rows = bench.main(
        bench.parse_args(
            [
                '--models',
                'pvig_test',
                '--img_size',
                '64',
                '--batch_size',
                '2',
                '--iters',
                '1',
                '--modes',
                '[infer,graph]',
            ]
        )
    )
    assert [(r['mode'], r['graph']) for r in rows] == [
        ('infer', 'fast'), ('infer', 'dense'), ('graph', 'fast'), ('graph', 'dense')
    ]  # fmt: skip
    assert all(r['img_s'] > 0 and r['peak_mb'] > 0 for r in rows)
    assert rows[0]['speedup'] == rows[0]['img_s'] / rows[1]['img_s']
    out = capsys.readouterr().out
    assert 'speedup' in out and 'knn 16x16' in out
