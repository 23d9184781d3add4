"""dmlp.evidence: digits in the CIFAR layout through the real loader, every row present, a seed reproduces exactly."""

import json

import pytest
import torch

import dmlp.evidence as evidence
from shared.noisy.data import load_cifar


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(evidence, "CE_EPOCHS", 1)
    monkeypatch.setattr(evidence, "DM_EPOCHS", 3)
    monkeypatch.setattr(evidence, "DM_WARMUP", 1)
    monkeypatch.setattr(evidence, "PURIFIER", {**evidence.PURIFIER, "epochs": 20})


def test_digits_are_real_images_read_by_the_cifar_loader():
    root, size = evidence.dataset_root("digits")
    train, test = load_cifar(root, 10, True, size), load_cifar(root, 10, False, size)
    assert (len(train), len(test), size) == (1500, 297, 8)
    assert torch.bincount(train.labels, minlength=10).min() >= 120  # 174-183 images per digit in scikit-learn
    split = evidence.make_split("digits", "sym80", 1)
    assert len(split.meta) == 30 and len(split.rest) == 1470  # 2 % meta set
    assert split.features.shape == (1500, evidence.FEATURE_DIM) and len(split.meta) > evidence.FEATURE_DIM


@pytest.mark.slow
def test_rows_are_complete_and_a_seed_reproduces_exactly(tiny, tmp_path):
    """About 35 s at one thread: every row of one setting twice, equal to the last digit."""
    first = evidence.run_setting("digits", "sym80", 2, tmp_path / "a", log=lambda *_: None)
    again = evidence.run_setting("digits", "sym80", 2, tmp_path / "b", log=lambda *_: None)
    assert first == again
    expected = {f"label_acc/{r}" for r in ("noisy", "meta_lr", "ipc", "eac_fb", "ipc_eac", "dmlp")}
    expected |= {f"test_acc/{r}" for r in ("ce_noisy", "meta_pseudo", "ipc", "eac_fb", "ipc_eac", "dmlp")}
    expected |= {"test_acc/dividemix", "test_acc/dmlp_dividemix"}
    assert set(first) == expected
    assert first["label_acc/dmlp"] > first["label_acc/noisy"] + 10  # the purifier engaged (80 % noise)
    assert first["label_acc/ipc"] > first["label_acc/noisy"] + 2
    record = evidence.build_record(
        [2], ["digits"], ["sym80"], {2: {f"digits/sym80/{k}": v for k, v in first.items()}}, 1.0
    )
    for key in ("package", "claim", "metric", "higher_is_better", "method", "baselines", "seeds", "rows", "budget"):
        assert key in record
    committed = tmp_path / "committed.json"
    committed.write_text(json.dumps(record))
    assert evidence.compare_with_committed(record, json.loads(committed.read_text()), log=lambda *_: None)


def test_per_seed_files_merge_in_seed_order_and_refuse_other_grids():
    def record(seed, noises=("sym80",)):
        rows = {"digits/sym80/test_acc/dmlp": [float(seed)]}
        grid = {"datasets": ["digits"], "noises": list(noises), "budget": "b; wall 1s", "command": "dmlp.evidence"}
        return {**grid, "seeds": [seed], "rows": rows}

    merged = evidence.merge_records([record(3), record(1), record(2)])
    assert merged["seeds"] == [1, 2, 3] and merged["rows"]["digits/sym80/test_acc/dmlp"] == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="different grids"):
        evidence.merge_records([record(1), record(2, ("sym50",))])
    with pytest.raises(ValueError, match="more than one file"):
        evidence.merge_records([record(1), record(1)])
