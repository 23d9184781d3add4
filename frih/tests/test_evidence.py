"""The evidence protocol: equal-time epochs from the stored calibration, a tiny configuration reproduces itself, the
real-photo set (held-out test photos, read by the iHarmony4 loader) and the in-run warm start of stage 1."""

import hashlib

import numpy as np
import pytest
import torch

from frih import evidence
from frih.data import IHarmony4Dataset
from frih.synthetic import PHOTO_TEST_NAMES, write_photo_iharmony4


def test_equal_time_epochs_follow_the_calibration():
    speeds = {"issam": 0.5, "idih": 0.25, "frih": 2.0, "frih_no_fpm": 1.6}
    flags = []
    budget = evidence.budget_seconds(speeds, flags)
    assert budget == evidence.EPOCHS * 2.0
    assert evidence.epochs_for("frih", budget, speeds, flags) == evidence.EPOCHS
    assert evidence.epochs_for("issam", budget, speeds, flags) == 4 * evidence.EPOCHS
    assert evidence.epochs_for("idih", budget, speeds, flags) == 8 * evidence.EPOCHS
    assert evidence.epochs_for("frih_no_fpm", budget, speeds, flags) == int(evidence.EPOCHS * 2.0 / 1.6)
    warm = ["--model.stop_gradient", "true", "--stage1_epochs", "10"]
    budget = evidence.budget_seconds(speeds, warm)
    assert budget == pytest.approx(10 * 0.5 + (evidence.EPOCHS - 10) * 2.0)
    # the no-FPM ablation gets the same warm start and the rest of the budget at its own speed
    assert evidence.epochs_for("frih_no_fpm", budget, speeds, warm) == 10 + int((evidence.EPOCHS - 10) * 2.0 / 1.6)


def test_tiny_evidence_configuration_reproduces_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(evidence, "EPOCHS", 1)
    monkeypatch.setattr(evidence, "TRAINED_ROWS", ("issam", "frih"))
    base = list(evidence.BASE)
    base[base.index("--data.synthetic_num_real") + 1] = "3"
    base[base.index("--data.synthetic_size") + 1] = "48"
    monkeypatch.setattr(evidence, "BASE", [*base, "--data.synthetic_root", str(tmp_path / "photos")])
    speeds = {"issam": 1.0, "frih": 2.0}
    flags = ["--model.stop_gradient", "true"]
    first = evidence.run_seed(7, speeds, flags, tmp_path / "a", log=lambda *_: None)
    second = evidence.run_seed(7, speeds, flags, tmp_path / "b", log=lambda *_: None)
    assert first == second
    assert set(first) >= {"time/issam", "epochs/issam", "time/frih", "time/frih_stage1", "time/composite"}
    assert (tmp_path / "a" / "seed7" / "time_issam").is_dir()  # iSSAM trained 2 epochs (the FRIH budget)
    assert not (tmp_path / "a" / "seed7" / "epochs_frih").exists()  # same run as time_frih, not trained twice


def test_photo_set_is_deterministic_holds_out_test_photos_and_loads(tmp_path):
    a = write_photo_iharmony4(tmp_path / "a", image_size=48, num_real_per_subset=7, seed=3, subsets=("HCOCO",))
    b = write_photo_iharmony4(tmp_path / "b", image_size=48, num_real_per_subset=7, seed=3, subsets=("HCOCO",))

    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in root.rglob("*.*")}

    assert digest(a) == digest(b)
    train = IHarmony4Dataset(a, ["HCOCO"], "train")
    test = IHarmony4Dataset(a, ["HCOCO"], "test")
    # 7 reals cycle through the 7 photos: the test split holds the crops of the held-out photos only
    assert len(train) > 0 and len(test) > 0
    test_reals = {s.real for s in test.samples}
    assert not test_reals & {s.real for s in train.samples}
    assert len(test_reals) == len(PHOTO_TEST_NAMES)
    sample = test[0]
    m = sample["mask"] > 0.5
    changed = np.abs(sample["composite"].astype(float) - sample["target"].astype(float)).sum(-1)
    assert changed[m].mean() > changed[~m].mean()  # the colour transfer sits in the foreground


def test_stage1_warm_start_epochs_leave_stage2_untouched(tmp_path):
    from frih import train

    argv = [*evidence.BASE, "--data.synthetic_num_real", "3", "--data.synthetic_size", "48"]
    argv += ["--data.synthetic_root", str(tmp_path / "photos"), "--optim.epochs", "1", "--stage1_epochs", "1"]
    argv += ["--output_dir", str(tmp_path / "run"), "--checkpoint_interval", "1"]
    cfg = train.parse_args(argv)
    train.main(cfg)
    from frih.model import build_model
    from shared.checkpoint import load_checkpoint

    torch.manual_seed(cfg.seed)
    trained = load_checkpoint(tmp_path / "run" / "last.pt", package="frih")["model"]
    init = build_model(cfg.model).state_dict()
    # seed_everything(seed) precedes the build in train.py: the same draw gives the initial weights
    from shared.distributed import seed_everything

    seed_everything(cfg.seed, 0)
    init = build_model(cfg.model).state_dict()
    stage2 = [k for k in init if not k.startswith("stage1.") and "num_batches_tracked" not in k]
    assert stage2 and all(torch.equal(trained[k], init[k]) for k in stage2)
    assert not all(torch.equal(trained[k], init[k]) for k in init if k.startswith("stage1.") and "weight" in k)


@pytest.mark.slow
def test_frih_beats_issam_at_equal_wall_clock_on_seed_3_as_committed(tmp_path, monkeypatch):
    """EVIDENCE.json on one seed: with the stored calibration and the chosen stage-1 training, FRIH's fMSE is below
    iSSAM's at the same wall-clock budget on seed 3 (true on seeds 2 and 3, not on seed 1, where FRIH loses by 4.0;
    README "Evidence"), every value is the committed one to the last digit, and FRIH's stage 1 equals iSSAM trained
    alone for the same epochs (stop-gradient + shared initialisation)."""
    import json

    committed = json.loads(evidence.COMMITTED.read_text())
    monkeypatch.setattr(evidence, "TRAINED_ROWS", ("issam", "frih"))
    speeds, flags = committed["calibration"]["seconds_per_epoch"], committed["validation"]["frih_flags"]
    res = evidence.run_seed(3, speeds, flags, tmp_path, log=lambda *_: None)
    j = committed["seeds"].index(3)
    for mode in ("time", "epochs"):
        for row in ("issam", "frih", "frih_stage1", "composite"):
            for k in evidence.METRICS:
                assert res[f"{mode}/{row}"][k] == committed["rows"][f"{mode}/{row}/{k}"][j], (mode, row, k)
    assert res["time/frih"]["fmse"] < res["time/issam"]["fmse"]
    assert res["time/frih_stage1"] == res["epochs/issam"]
