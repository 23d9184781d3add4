"""The evidence record: schema, paired differences, and (slow) exact reproduction of a committed seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anm.evidence import ARMS, markdown_table, summarise

COMMITTED = Path(__file__).resolve().parents[1] / "EVIDENCE.json"


def test_summary_pairs_the_seeds() -> None:
    record = {
        "seeds": [1, 2, 3],
        "settings": ["digits_sym50"],
        "rows": {"digits_sym50/dividemix": [70.0, 80.0, 60.0], "digits_sym50/dividemix_sanm": [71.0, 79.0, 63.0]},
    }
    summary = summarise(record)["digits_sym50"]
    assert summary["dividemix_sanm_minus_dividemix"]["per_seed"] == [1.0, -1.0, 3.0]
    assert summary["dividemix_sanm_minus_dividemix"]["mean"] == pytest.approx(1.0)
    assert summary["dividemix"]["sd"] == pytest.approx(10.0)  # sample sd
    record["summary"] = summarise(record)
    assert "| digits_sym50 | dividemix_sanm − dividemix | +1.00 | +1.00, -1.00, +3.00 |" in markdown_table(record)


def test_committed_evidence_has_the_schema() -> None:
    record = json.loads(COMMITTED.read_text())
    for key in (
        "package",
        "claim",
        "metric",
        "higher_is_better",
        "method",
        "baselines",
        "seeds",
        "rows",
        "budget",
        "command",
    ):
        assert key in record
    assert record["package"] == "anm" and len(record["seeds"]) >= 3
    for setting in record["settings"]:
        for arm in ARMS:
            assert len(record["rows"][f"{setting}/{arm}"]) == len(record["seeds"])


@pytest.mark.slow
@pytest.mark.timeout(1800)  # several CPU-minutes; longer on a loaded machine
def test_a_committed_seed_reproduces_exactly(tmp_path) -> None:
    from anm.evidence import main, parse_args

    record = json.loads(COMMITTED.read_text())
    setting, seed = record["settings"][0], record["seeds"][0]
    fresh = main(parse_args(["--seeds", str(seed), "--settings", setting, "--out", str(tmp_path / "e.json")]))
    for arm in ARMS:
        assert fresh["rows"][f"{setting}/{arm}"][0] == record["rows"][f"{setting}/{arm}"][0]


def _record(rows: dict[str, list[float]], seeds: list[int]) -> dict:
    details = {k: [{"last_epoch_labeled": 1.0}] * len(v) for k, v in rows.items()}
    return {"seeds": seeds, "settings": ["digits_sym50"], "rows": rows, "details": details, "wall_time_s": 1.0}


def test_merge_joins_runs_of_disjoint_arms_and_seeds(tmp_path) -> None:
    from anm.evidence import merge

    parts = [
        _record({"digits_sym50/dividemix_sanm": [91.0]}, [3]),
        _record({"digits_sym50/ce": [60.0, 61.0, 62.0], "digits_sym50/dividemix": [90.0, 95.0, 93.0]}, [1, 2, 3]),
        _record({"digits_sym50/dividemix_sanm": [92.0, 96.0]}, [1, 2]),
    ]
    paths = []
    for i, part in enumerate(parts):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(part))
    merged = merge([str(p) for p in paths])
    assert merged["seeds"] == [1, 2, 3]
    assert list(merged["rows"]) == ["digits_sym50/ce", "digits_sym50/dividemix", "digits_sym50/dividemix_sanm"]
    assert merged["rows"]["digits_sym50/dividemix_sanm"] == [92.0, 96.0, 91.0]
    assert merged["summary"]["digits_sym50"]["dividemix_sanm_minus_dividemix"]["per_seed"] == [2.0, 1.0, -2.0]
    with pytest.raises(ValueError, match="seed 3 is also in another file"):
        merge([str(paths[0]), str(paths[0])])
    with pytest.raises(ValueError, match=r"no run for seeds \[3\]"):
        merge([str(paths[1]), str(paths[2])])
