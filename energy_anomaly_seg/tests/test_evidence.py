"""The evidence record: a tiny configuration reproduces itself exactly, rows share the seed's segmentor, the README
table and the reproduction check read the record."""

import json

import pytest

from energy_anomaly_seg import evidence
from energy_anomaly_seg.tests.test_train import TINY


def _tiny_record(tmp_path, name):
    out = tmp_path / name
    evidence.main(
        [
            "--seeds",
            "11",
            "--lr",
            "0.05",
            "--rows",
            "sleeg",
            "tae_only",
            "square_no_refine",
            "--output_dir",
            str(out),
            "--",
            *TINY,
            "--synthetic.root",
            str(tmp_path / "synthetic"),
        ]
    )
    return json.loads((out / "evidence.json").read_text()), out


def test_tiny_evidence_is_deterministic_and_reuses_the_segmentor(tmp_path):
    first, out = _tiny_record(tmp_path, "a")
    again, _ = _tiny_record(tmp_path, "b")
    assert first["rows"] == again["rows"]  # every cell, exactly
    assert first["seeds"] == [11] and first["metric"] == "AP" and first["method"] == "sleeg"
    assert first["baselines"] == ["energy", "max_softmax"] and first["ablations"] == ["tae_only", "square_no_refine"]
    for row in ("sleeg", "energy", "max_softmax", "tae_only", "square_no_refine"):
        for metric in ("AP", "FPR95", "AUROC"):
            assert 0 <= first["rows"][f"{row}/{metric}"][0] <= 100
    assert 0 < first["rows"]["sleeg/kept_after_refine"][0] <= 1  # the mechanism engaged
    # every row resumed from the one segmentor checkpoint of its seed, which the head training leaves untouched
    import torch

    segmentor = torch.load(out / "seed11" / "segmentor" / "last.pt", weights_only=True)
    assert segmentor["phase"] == "segmentor"
    for row in ("sleeg", "tae_only"):
        model = torch.load(out / "seed11" / row / "last.pt", weights_only=True)["model"]
        assert all(torch.equal(v, model[k]) for k, v in segmentor["model"].items() if not k.startswith("patch_head"))
    assert first["rows"]["tae_only/AP"] != first["rows"]["sleeg/AP"]  # the row's own objective was applied


def test_table_and_reproduction_check():
    record = {
        "method": "sleeg",
        "baselines": ["energy"],
        "ablations": ["tae_only"],
        "seeds": [1, 2, 3],
        "rows": {
            f"{r}/{m}": v
            for r, v in (("sleeg", [3.0, 4.0, 5.0]), ("energy", [1.0, 4.5, 2.0]), ("tae_only", [2.0, 3.0, 4.0]))
            for m in ("AP", "FPR95", "AUROC")
        },
    }
    table = evidence.format_table(record)
    assert "| energy | 2.50 ± 1.80 |" in table  # mean ± sample sd
    assert "| 1.50 ± 1.80 | 2 / 3 |" in table  # paired SLEEG - energy: 2.0, -0.5, 3.0
    assert "| 1.00 ± 0.00 | 3 / 3 |" in table
    one_seed = {"seeds": [2], "rows": {"sleeg/AP": [4.0], "energy/AP": [4.25]}}
    assert evidence.compare_with_committed(one_seed, record) == ["energy/AP seed 2: 4.25 (committed 4.5)"]
    assert evidence.compare_with_committed({"seeds": [2], "rows": {"sleeg/AP": [4.0]}}, record) == []


def test_validation_seed_is_never_reported(tmp_path):
    with pytest.raises(SystemExit):
        evidence.main(["--seeds", "0", "1", "--output_dir", str(tmp_path)])
