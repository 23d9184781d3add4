"""bench.py: its config is the shared script shape (``--key value``, unknown keys are errors)."""

import pytest

from lsfa.bench import BenchConfig, parse_args


def test_bench_parses_the_new_names_and_rejects_unknown_keys():
    cfg = parse_args(["--quick", "--device", "cpu", "--amp", "bf16", "--threads", "1", "--output_json", "rows.json"])
    assert cfg == BenchConfig(quick=True, device="cpu", amp="bf16", threads=1, output_json="rows.json")
    assert parse_args([]) == BenchConfig(quick=False, device="auto", amp="off", threads=None, output_json=None)
    for bad in (["--amp", "fp8"], ["--device", "tpu"], ["--steps", "2"], ["--batch-size", "2"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
