"""bench.py: its config is the shared script shape (BenchConfig + script_parser)."""

import pytest

from dmlp.bench import BenchConfig, parse_args


def test_bench_config_takes_the_shared_names():
    cfg = parse_args(["--quick", "--iters", "1", "--threads", "1", "--output_json", "rows.json", "--device", "cpu"])
    assert (cfg.quick, cfg.iters, cfg.threads, cfg.output_json, cfg.device) == (True, 1, 1, "rows.json", "cpu")
    assert parse_args([]) == BenchConfig()
    assert (BenchConfig().device, BenchConfig().iters, BenchConfig().threads) == ("auto", None, None)
    for argv in (["--nope", "1"], ["--device", "tpu"], ["--iters", "x"]):
        with pytest.raises(SystemExit):
            parse_args(argv)
