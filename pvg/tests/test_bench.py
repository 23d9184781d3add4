"""bench.py: the fast and the dense graph path are timed in one run, on the same model, with a speed-up column."""

import pvg  # noqa: F401  (registers the models)
from pvg import bench


def test_bench_runs_fast_and_dense_in_one_call(capsys):
    rows = bench.main(
        ['--models', 'pvig_test', '--img-size', '64', '--batch-size', '2', '--iters', '1', '--modes', 'infer', 'graph']
    )
    assert [(r['mode'], r['graph']) for r in rows] == [
        ('infer', 'fast'), ('infer', 'dense'), ('graph', 'fast'), ('graph', 'dense')
    ]  # fmt: skip
    assert all(r['img_s'] > 0 and r['peak_mb'] > 0 for r in rows)
    assert rows[0]['speedup'] == rows[0]['img_s'] / rows[1]['img_s']
    out = capsys.readouterr().out
    assert 'speedup' in out and 'knn 16x16' in out
