"""bench.py: its config is the shared script shape (BenchConfig + script_parser) and a tiny run prints every row."""

import pytest
import torch

from anm.bench import BenchConfig, main, parse_args


def test_bench_config_takes_the_shared_names():
    cfg = parse_args(["--batch_size", "32", "--iters", "2", "--device", "cpu", "--threads", "2", "--width", "8"])
    assert (cfg.batch_size, cfg.iters, cfg.device, cfg.threads, cfg.width) == (32, 2, "cpu", 2, 8)
    assert parse_args([]) == BenchConfig()
    assert BenchConfig().device == "auto"
    for argv in (["--steps", "2"], ["--nope", "1"], ["--device", "tpu"]):
        with pytest.raises(SystemExit):
            parse_args(argv)


def test_bench_runs_on_a_tiny_network(capsys):
    threads = torch.get_num_threads()
    try:
        results = main(BenchConfig(width=4, batch_size=4, iters=1, device="cpu"))
    finally:
        torch.set_num_threads(threads)  # the bench sets its own
    assert {"dividemix", "sanm", "sanm_6views", "masker", "masker_overhead_pct"} <= set(results)
    out = capsys.readouterr().out
    assert "B = 4, cpu, 1 thread(s)" in out
    assert "masker overhead:" in out
