"""bench.py: its config is the shared script shape (``--key value``, unknown keys are errors) and a metrics-only run
prints the metric line."""

import pytest
import torch

from energy_anomaly_seg.bench import BenchConfig, main, parse_args


def test_bench_parses_the_new_names_and_rejects_unknown_keys():
    cfg = parse_args(
        [
            "--train_size",
            "[512,1024]",
            "--test_size",
            "[1024,2048]",
            "--batch_size",
            "4",
            "--iters",
            "2",
            "--test_images",
            "1",
            "--metric_pixels",
            "1e6",
            "--skip_models",
            "--threads",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert cfg == BenchConfig(
        device="cpu",
        train_size=(512, 1024),
        test_size=(1024, 2048),
        batch_size=4,
        iters=2,
        test_images=1,
        metric_pixels=1e6,
        skip_models=True,
        threads=1,
    )
    defaults = parse_args([])
    assert (defaults.device, defaults.iters, defaults.test_images, defaults.metric_pixels) == ("auto", 5, 3, 2e8)
    assert defaults.train_size is defaults.test_size is defaults.batch_size is defaults.variant is None
    for old in (["--steps", "2"], ["--skip-models"], ["--train-size", "64", "128"], ["--device", "tpu"]):
        with pytest.raises(SystemExit):
            parse_args(old)
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        main(BenchConfig(variant="nope"))


def test_bench_metrics_only_run_prints_the_metric_line(capsys):
    threads = torch.get_num_threads()
    try:
        main(BenchConfig(device="cpu", skip_models=True, metric_pixels=1e5, threads=1))
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "SLEEG bench on CPU" in out and "sleeg_deeplabv3_r18_d8_tiny" in out
    assert "AP + AUROC + FPR95 over 1.00e+05 pixels" in out and "train it/s" not in out
