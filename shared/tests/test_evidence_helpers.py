from shared.evidence import committed_mismatches, mean_sd


def test_mean_sd_formats_mean_and_sample_sd():
    assert mean_sd([1.0, 2.0, 3.0]) == "2.00 ± 1.00"
    assert mean_sd([0.5], digits=3) == "0.500 ± 0.000"


def test_committed_mismatches_compare_shared_seeds_only():
    committed = {"seeds": [1, 2], "rows": {"a": [1.0, 2.0]}}
    assert committed_mismatches({"seeds": [2], "rows": {"a": [2.0]}}, committed) == []
    assert committed_mismatches({"seeds": [2, 3], "rows": {"a": [2.5, 9.0]}}, committed) == [
        "a seed 2: 2.5 (committed 2.0)"
    ]
    assert committed_mismatches({"seeds": [1], "rows": {"b": [1.0]}}, committed) == ["b seed 1: 1.0 (committed None)"]
