"""bench.py: its config is the shared script shape and a tiny run measures every row."""

import pytest
import torch

from calibrated_teacher.bench import BenchConfig, main, parse_args


def test_bench_runs_every_row_on_the_tiny_detector(capsys):
    threads = torch.get_num_threads()
    try:
        rows = main(
            BenchConfig(variant="retinanet_tiny", img_size=64, batch_size=1, iters=1, device="cpu", calib_pairs=1000)
        )
    finally:
        torch.set_num_threads(threads)  # the bench sets its own
    assert [r["what"] for r in rows] == [
        "supervised step",
        "calibrated teacher step",
        "inference",
        "Platt fit, 1000 pairs",
    ]
    assert all(r["ms"] > 0 for r in rows)
    assert "retinanet_tiny at 64 px" in capsys.readouterr().out


def test_bench_arguments_are_checked():
    assert parse_args(["--img_size", "800", "--amp", "bf16"]).img_size == 800
    with pytest.raises(SystemExit):
        parse_args(["--amp", "fp8"])
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        main(BenchConfig(variant="nope"))
