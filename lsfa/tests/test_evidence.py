"""The evidence script end to end at a tiny size, its table and its comparison with a committed record."""

import json

import pytest
import torch

from lsfa import evidence
from lsfa.model import create_point_encoder
from lsfa.point_pretrain import chamfer_l2, ensure_pretrained_point_encoder, pretrain_point_mae, shape_cloud
from lsfa.tests.test_train import TINY

assert TINY[-2] == "--eval.vis_images"
EVIDENCE_TINY = [*TINY[:-2], "--backbone.allow_random_init"]  # tiny random RGB; evidence.py turns overlays off


@pytest.fixture()
def synthetic_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHETIC_DATA_ROOT", str(tmp_path / "synthetic"))
    return tmp_path


def test_chamfer_and_shapes():
    import numpy as np

    a = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    b = torch.tensor([[[0.0, 0, 0], [3, 0, 0]]])
    # a -> b: 0 and 1; b -> a: 0 and 4
    assert float(chamfer_l2(a, b)) == pytest.approx(0.5 + 2.0)
    cloud = shape_cloud(np.random.default_rng(0), 512)
    assert cloud.shape == (512, 3) and abs(cloud.mean(0)).max() < 1e-5 and cloud[:, :2].std() > 1.0


def test_masked_pretraining_learns_and_is_cached(synthetic_root):
    _, log = pretrain_point_mae("point_mae_test", steps=12, batch_size=2, num_points=512, num_group=16, log_every=11)
    assert log[-1]["chamfer_l2"] < log[0]["chamfer_l2"]
    path = ensure_pretrained_point_encoder("point_mae_test", steps=2)
    assert path.is_file() and (path.parent / "pretrain_log.json").is_file()
    mtime = path.stat().st_mtime
    assert ensure_pretrained_point_encoder("point_mae_test", steps=2).stat().st_mtime == mtime  # cached
    loaded = create_point_encoder("point_mae_test", path)  # Point-MAE layout, strict
    random = create_point_encoder("point_mae_test")
    assert not torch.equal(loaded.encoder.first_conv[0].weight, random.encoder.first_conv[0].weight)


@pytest.mark.slow
def test_evidence_runs_and_reproduces_a_draw(synthetic_root, capsys):
    out = synthetic_root / "ev"
    args = ["--seeds", "1", "--point-variant", "point_mae_test", "--pretrain-steps", "2", "--init", "torch_default"]
    record = evidence.main([*args, "--output_dir", str(out), "--", *EVIDENCE_TINY])
    stored = json.loads((out / "evidence.json").read_text())
    assert stored["seeds"] == [1] and stored["method"] == "lsfa" and stored["baselines"] == ["m3dm"]
    for key in ("lsfa/i_auroc", "m3dm/i_auroc", "lsfa/aupro", "m3dm/aupro_exact", "lsfa/loss", "lsfa/ifc_active"):
        assert len(stored["rows"][key]) == 1 and 0 <= stored["rows"][key][0] <= 1e3, key
    assert not any("img_per_s" in k for k in stored["rows"])
    again = evidence.main([*args, "--output_dir", str(synthetic_root / "ev2"), "--", *EVIDENCE_TINY])
    assert again["rows"] == record["rows"]  # deterministic on the CPU
    assert evidence.compare_with_committed(again, stored) == []
    stored["rows"]["lsfa/i_auroc"][0] += 0.1
    assert evidence.compare_with_committed(again, stored) == [
        f"lsfa/i_auroc seed 1: {again['rows']['lsfa/i_auroc'][0]} (committed {stored['rows']['lsfa/i_auroc'][0]})"
    ]
    table = evidence.format_table(record)
    assert "| i_auroc |" in table and "/ 1 |" in table


def test_committed_record_follows_the_schema_and_feeds_the_readme():
    record = json.loads(evidence.COMMITTED.read_text())
    for key in ("package", "claim", "metric", "higher_is_better", "method", "baselines", "seeds", "rows", "budget"):
        assert key in record, key
    assert record["package"] == "lsfa" and record["validation"]["seed"] not in record["seeds"]
    assert len(record["seeds"]) >= 3 and all(len(v) == len(record["seeds"]) for v in record["rows"].values())
    assert record["validation"]["adaptor.init"]["chosen"] in evidence.INIT_GRID
    readme = (evidence.COMMITTED.parent / "README.md").read_text()
    for line in evidence.format_table(record).splitlines():
        assert line in readme, line
    assert all(v > 0 for v in record["rows"]["lsfa/ifc_active"])  # the compactness term engaged in every draw
