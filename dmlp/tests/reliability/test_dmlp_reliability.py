"""Reliability of the dmlp run folder: --resume reads and verifies its file, cached stages record what they were
made from and are rebuilt when that changes, a stale noise file is refused, and a diverging stage stops naming itself.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dmlp.purifier import DMLPPurifier, PurifierConfig, PurifierDivergedError
from dmlp.stages import StageDivergedError
from dmlp.tests.test_train import TINY, run_eval, run_train
from shared.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from shared.training import NonFiniteLossError

REPO = Path(__file__).resolve().parents[3]
STAGE_FILES = ("ssl.pt", "ssl_state.pt", "features.pt", "purifier.pt", "retrain_dmlp_naive.pt", "last.pt")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _log(folder: Path) -> str:
    return (folder / "train.log").read_text()


def _train_process(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m dmlp.train TINY ARGS`` in a fresh process started in ``cwd`` (one thread), output captured."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dmlp.train", *TINY, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """One finished tiny chain (ssl, purify, DMLP-Naive); tests work on copies of its folder."""
    out = tmp_path_factory.mktemp("dmlp_base") / "run"
    torch.set_num_threads(1)
    metrics = run_train([*TINY, "--output_dir", str(out)])
    return out, metrics


@pytest.fixture
def run_copy(base_run, tmp_path):
    src, metrics = base_run
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst, metrics


# ------------------------------------------------------------------------------------------------ 1. --resume
def _foreign_emo_run(folder: Path) -> Path:
    """A run folder of another package: RUN.json, config.yaml, metrics.json and an emo last.pt."""
    folder.mkdir(parents=True)
    (folder / "RUN.json").write_text(json.dumps({"package": "emo", "config": {"name": "emo_1m", "epochs": 3}}))
    (folder / "config.yaml").write_text("name: emo_1m\nepochs: 3\n")
    (folder / "metrics.json").write_text(json.dumps({"top1": 71.5}))
    save_checkpoint(
        {"package": "emo", "model": {"w": torch.ones(2)}, "epoch": 2, "config": {"name": "emo_1m"}}, folder / "last.pt"
    )
    return folder / "last.pt"


def _bad_resume_file(kind: str, root: Path) -> Path:
    if kind == "missing":
        return root / "never_made" / "last.pt"
    if kind == "text":
        (root / "notes").mkdir()
        (root / "notes" / "last.pt").write_text("this is a text file, not a checkpoint\n")
        return root / "notes" / "last.pt"
    if kind == "emo_last":
        return _foreign_emo_run(root / "emo_run")
    # a torch file without a package entry that is not a dmlp last.pt (e.g. an older checkpoint of another package)
    (root / "legacy").mkdir()
    torch.save(
        {"model": {"w": torch.zeros(3)}, "optimizer": {}, "epoch": 5, "config": {"name": "x", "lr": 0.1}},
        root / "legacy" / "last.pt",
    )
    return root / "legacy" / "last.pt"


@pytest.mark.parametrize("kind", ["missing", "text", "emo_last", "foreign_legacy"])
def test_resume_refuses_a_file_that_is_not_a_dmlp_checkpoint_before_writing(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fresh run would create runs/ here
    path = _bad_resume_file(kind, tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="not a dmlp checkpoint"):
        run_train([*TINY, "--resume", str(path)])
    assert _snapshot(tmp_path) == before  # no config.yaml, log, RUN.json, noise file; the emo run is untouched
    assert not (tmp_path / "runs").exists() and not (tmp_path / "never_made").exists()
    if kind == "emo_last":
        with pytest.raises(CheckpointError, match="written by package 'emo'"):
            run_eval(["--checkpoint", str(path), "--device", "cpu"])


def test_resume_of_a_text_file_exits_non_zero(tmp_path):
    (tmp_path / "last.pt").write_text("not a checkpoint\n")
    proc = _train_process(tmp_path, "--resume", str(tmp_path / "last.pt"))
    assert proc.returncode != 0
    assert "not a dmlp checkpoint" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_resume_from_a_dmlp_last_pt_reuses_every_stage(run_copy):
    run, metrics = run_copy
    resumed = run_train([*TINY, "--resume", str(run / "last.pt")])
    log = _log(run)
    assert "ssl: reusing" in log and "purify: resumed at epoch 3" in log and "dmlp_naive: finished run reused" in log
    assert "not reused" not in log
    for key in ("label_acc_purified", "test_acc_dmlp_naive"):
        assert resumed[key] == metrics[key], key


def test_every_stage_file_names_dmlp_and_records_what_it_was_made_from(base_run):
    run, _ = base_run
    for name in STAGE_FILES:
        state = load_checkpoint(run / name, package="dmlp")
        owner = state.get("package", state.get("extra", {}).get("package"))
        assert owner == "dmlp", name
    assert json.loads((run / "RUN.json").read_text())["package"] == "dmlp"
    assert load_checkpoint(run / "ssl.pt")["made_from"]["ssl"]["epochs"] == 1
    assert load_checkpoint(run / "purifier.pt")["made_from"]["purifier"]["lr"] == 0.05  # configs/default.yaml
    assert "labels" in load_checkpoint(run / "retrain_dmlp_naive.pt")["extra"]["made_from"]


# ------------------------------------------------------------------------------------------------ 2. stale caches
def test_another_noise_rate_in_an_existing_run_folder_is_refused(run_copy):
    run, _ = run_copy
    before = _snapshot(run)
    with pytest.raises(ValueError, match=r"noise at rate 0\.8.*rate 0\.2 .*was asked for"):
        run_train([*TINY, "--data.noise_rate", "0.2", "--output_dir", str(run)])
    # also when resuming (where the folder check allows config changes): the noise file is not reused
    with pytest.raises(ValueError, match=r"rate 0\.2 .*was asked for"):
        run_train([*TINY, "--data.noise_rate", "0.2", "--resume", str(run / "last.pt")])
    assert _snapshot(run) == before  # metrics.json, noisy_labels.json, last.pt unchanged


def test_changed_ssl_epochs_rebuilds_ssl_and_everything_after_it(run_copy):
    run, _ = run_copy
    run_train([*TINY, "--ssl.epochs", "2", "--resume", str(run / "last.pt")])
    log = _log(run)
    assert "ssl.pt: not reused, it was made from a different ssl.{epochs}; rebuilding this stage" in log
    assert "features.pt: not reused, it was made from a different encoder" in log
    assert "purifier.pt: not reused, it was made from a different features" in log
    assert "retrain_dmlp_naive.pt: not reused" in log
    assert load_checkpoint(run / "ssl.pt")["made_from"]["ssl"]["epochs"] == 2
    assert load_checkpoint(run / "ssl_state.pt")["epoch"] == 1  # SimCLR restarted, not continued from epoch 0


def test_changed_purifier_lr_rebuilds_the_purifier_but_reuses_ssl(run_copy):
    run, _ = run_copy
    old = load_checkpoint(run / "purifier.pt")["purifier"]["labels"]
    run_train([*TINY, "--purifier.lr", "0.02", "--resume", str(run / "last.pt")])
    log = _log(run)
    assert "ssl: reusing" in log and "features.pt: not reused" not in log
    assert "purifier.pt: not reused, it was made from a different purifier.{lr}; rebuilding this stage" in log
    assert "purify: resumed" not in log
    state = load_checkpoint(run / "purifier.pt")
    assert state["made_from"]["purifier"]["lr"] == 0.02 and state["purifier"]["epoch"] == 3
    assert not torch.equal(state["purifier"]["labels"], old)


def test_changed_meta_split_rebuilds_the_purifier_from_its_data_fingerprint(run_copy):
    run, _ = run_copy
    run_train([*TINY, "--data.meta_seed", "1", "--stages", "ssl", "purify", "--resume", str(run / "last.pt")])
    assert "purifier.pt: not reused, it was made from a different labels; rebuilding this stage" in _log(run)


def test_changed_retrain_recipe_retrains(run_copy):
    run, _ = run_copy
    run_train(
        [
            *TINY,
            "--retrain.supervised.lr",
            "0.05",
            "--stages",
            "retrain",
            "--resume",
            str(run / "retrain_dmlp_naive.pt"),
        ]
    )
    log = _log(run)
    assert "retrain_dmlp_naive.pt: not reused, it was made from a different retrain.{supervised}" in log
    assert load_checkpoint(run / "retrain_dmlp_naive.pt")["extra"]["made_from"]["retrain"]["supervised"]["lr"] == 0.05


def test_a_fresh_run_with_another_config_in_a_used_folder_is_refused(run_copy):
    from shared.logger import RunDirError

    run, _ = run_copy
    before = _snapshot(run)
    with pytest.raises(RunDirError, match="different config"):
        run_train([*TINY, "--purifier.lr", "0.02", "--output_dir", str(run)])
    assert _snapshot(run) == before


# ------------------------------------------------------------------------------------------------ 3. divergence
def _outputs(run: Path) -> set[str]:
    return {p.name for p in run.iterdir()} if run.exists() else set()


def test_purifier_at_a_huge_lr_stops_naming_its_stage(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(StageDivergedError, match=r"^purify stage: the label matrix Y diverged") as err:
        run_train([*TINY, "--purifier.lr", "1e6", "--output_dir", str(run)])
    assert isinstance(err.value, NonFiniteLossError)
    assert isinstance(err.value.__cause__, PurifierDivergedError)
    assert not {"purified_labels.json", "last.pt", "metrics.json", "purifier.pt"} & _outputs(run)


def test_purifier_at_a_huge_lr_exits_non_zero(tmp_path):
    run = tmp_path / "run"
    proc = _train_process(tmp_path, "--purifier.lr", "1e6", "--stages", "ssl", "purify", "--output_dir", str(run))
    assert proc.returncode != 0
    assert "StageDivergedError: purify stage:" in proc.stderr
    assert not {"purified_labels.json", "last.pt", "metrics.json"} & _outputs(run)


def test_purifier_guard_catches_non_finite_label_estimates():
    g = torch.Generator().manual_seed(0)
    x, xv = torch.randn(200, 8, generator=g), torch.randn(60, 8, generator=g)
    y, yv = torch.arange(200) % 4, torch.arange(60) % 4
    p = DMLPPurifier(x, y, xv, yv, 4, PurifierConfig(ipc_batch=100, eac_batch=50, max_label_magnitude=None))
    with torch.no_grad():
        p.labels[150, 2] = float("nan")  # e.g. an EMA feedback of NaN probabilities
    with pytest.raises(PurifierDivergedError, match="non-finite label estimates"):
        p.check_labels("EAC feedback")
    with pytest.raises(NonFiniteLossError):  # and an epoch stops at the first loss that sees them
        p.run_epoch()
    # the same lr with the default bound is stopped as a divergence, before Y is ever saved
    p = DMLPPurifier(x, y, xv, yv, 4, PurifierConfig(ipc_batch=100, eac_batch=50, lr=1e6))
    with pytest.raises(PurifierDivergedError, match=r"max \|Y\| = .* > purifier.max_label_magnitude 100"):
        p.run_epoch()
    # a normal lr stays far inside the bound
    p = DMLPPurifier(x, y, xv, yv, 4, PurifierConfig(ipc_batch=100, eac_batch=50, lr=0.05))
    for _ in range(5):
        p.run_epoch()
    assert p.labels.detach().abs().max() < 5


@pytest.mark.parametrize(
    ("lr", "message"), [("1e20", r"^ssl stage: non-finite SimCLR loss"), ("1e6", r"^ssl stage: the encoder collapsed")]
)
def test_ssl_at_a_huge_lr_stops_naming_its_stage(lr, message, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(StageDivergedError, match=message):
        run_train([*TINY, "--ssl.optimizer", "sgd", "--ssl.lr", lr, "--output_dir", str(run)])
    assert not {"ssl.pt", "features.pt", "purified_labels.json", "last.pt", "metrics.json"} & _outputs(run)


def test_dividemix_checkpoint_names_dmlp_and_is_reused_only_for_its_recipe(run_copy):
    run, _ = run_copy
    args = [
        *TINY,
        "--stages",
        "retrain",
        "--retrain.mode",
        "dividemix",
        "--retrain.dividemix.epochs",
        "2",
        "--retrain.dividemix.warmup_epochs",
        "1",
        "--retrain.dividemix.batch_size",
        "50",
        "--retrain.dividemix.warmup_batch_size",
        "100",
    ]
    run_train([*args, "--resume", str(run / "last.pt")])
    state = load_checkpoint(run / "retrain_dmlp_dividemix.pt", package="dmlp")
    assert state["package"] == "dmlp" and state["made_from"]["retrain"]["dividemix"]["lr"] == 0.02
    run_train([*args, "--resume", str(run / "retrain_dmlp_dividemix.pt")])
    assert "retrain_dmlp_dividemix.pt: not reused" not in _log(run)
    run_train([*args, "--retrain.dividemix.lr", "0.01", "--resume", str(run / "last.pt")])
    assert "retrain_dmlp_dividemix.pt: not reused, it was made from a different retrain.{dividemix}" in _log(run)
