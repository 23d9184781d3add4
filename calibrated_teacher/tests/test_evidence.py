"""Joining per-seed evidence files (README, Evidence): seeds and rows concatenated, the command names the seeds."""

import json

import pytest

from calibrated_teacher.evidence import merge


def _record(tmp_path, seed, ap):
    record = {
        "seeds": [seed],
        "rows": {"supervised": [ap], "calibrated_fiou": [ap + 0.01]},
        "extra": {str(seed): {"kept_ratio": 0.5}},
        "budget": f"seed {seed}",
        "command": f"python -m calibrated_teacher.evidence --seeds {seed}",
    }
    path = tmp_path / f"s{seed}.json"
    path.write_text(json.dumps(record))
    return path


def test_merge_joins_seeds_and_names_the_default_command(tmp_path):
    record = merge([_record(tmp_path, s, 0.1 * s) for s in (1, 2, 3)])
    assert record["seeds"] == [1, 2, 3] and record["rows"]["supervised"] == [0.1, 0.2, pytest.approx(0.3)]
    assert set(record["extra"]) == {"1", "2", "3"}
    assert record["command"] == "python -m calibrated_teacher.evidence"
    assert merge([_record(tmp_path, s, 0.1) for s in (2, 5)])["command"].endswith("--seeds 2 5")


def test_merge_refuses_repeated_seeds(tmp_path):
    with pytest.raises(ValueError, match="repeated seeds"):
        merge([_record(tmp_path, 1, 0.1), _record(tmp_path, 1, 0.2)])
