"""bench.py: its config is the shared script shape (BenchConfig + script_parser) and a tiny run prints the table."""

import pytest
import torch

from crema.bench import SCALES, BenchConfig, main, parse_args


def test_bench_config_takes_the_shared_names():
    cfg = parse_args(["--iters", "1", "--cpu_batch", "8", "--device", "cpu", "--scales", "[cifar,clothing1m]"])
    assert (cfg.iters, cfg.cpu_batch, cfg.device, cfg.scales) == (1, 8, "cpu", ["cifar", "clothing1m"])
    assert parse_args(["--scales", "cifar"]).scales == ["cifar"]
    assert parse_args([]).scales == list(SCALES)
    assert BenchConfig().device == "auto"
    for argv in (["--batches", "1"], ["--nope", "1"], ["--device", "tpu"]):
        with pytest.raises(SystemExit):
            parse_args(argv)


def test_bench_checks_the_scales():
    for scales in (["imagenet"], []):
        with pytest.raises(ValueError, match="cifar"):
            main(BenchConfig(scales=scales))


def test_bench_runs_one_scale(capsys):
    threads = torch.get_num_threads()
    try:
        results = main(BenchConfig(scales=["cifar"], iters=1, cpu_batch=2, device="cpu"))
    finally:
        torch.set_num_threads(threads)  # the bench sets its own
    assert list(results) == ["cifar"] and results["cifar"]["credibility_img_s"] > 0
    assert "| cifar |" in capsys.readouterr().out
