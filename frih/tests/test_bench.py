"""bench.py: the shared script shape (one name per setting) and its list options."""

import pytest

from frih.bench import BenchConfig, parse_args


def test_bench_command_line():
    cfg = parse_args(["--device", "cpu", "--sizes", "[256,1024]", "--batch_size", "2", "--output_json", "rows.json"])
    assert (cfg.device, cfg.sizes, cfg.batch_size, cfg.output_json) == ("cpu", [256, 1024], 2, "rows.json")
    assert parse_args(["--models", "frih256", "issam256"]).models == ["frih256", "issam256"]
    assert parse_args([]) == BenchConfig()
    assert BenchConfig().device == "auto"
    for argv in (["--batch", "x"], ["--nope", "1"], ["--device", "tpu"], ["--modes", "[half]"]):
        with pytest.raises(SystemExit):
            parse_args(argv)
