"""The DMLP chain end to end on the synthetic CIFAR-format set: outputs, eval, exact resume, DDP, the default."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dmlp.stages as dmlp_stages
import dmlp.train as dmlp_train
from dmlp import eval as dmlp_eval
from shared.checkpoint import load_checkpoint, save_checkpoint
from shared.label_noise import load_noisy_labels
from shared.noisy.data import load_label_file
from shared.testing import assert_same_tensors, run_torchrun

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--data.synthetic_train_size",
    "600",
    "--data.synthetic_test_size",
    "200",
    "--data.image_size",
    "16",
    "--data.meta_fraction",
    "0.25",
    "--data.noise_rate",
    "0.8",
    "--ssl.width",
    "4",
    "--ssl.epochs",
    "1",
    "--ssl.batch_size",
    "64",
    "--ssl.optimizer",
    "adam",
    "--ssl.lr",
    "0.003",
    "--ssl.warmup_epochs",
    "0",
    "--ssl.proj_dim",
    "16",
    "--purifier.epochs",
    "3",
    "--purifier.ipc_batch",
    "225",
    "--purifier.eac_batch",
    "100",
    "--retrain.width",
    "4",
    "--retrain.init",
    "ssl",
    "--retrain.supervised.epochs",
    "2",
    "--retrain.supervised.batch_size",
    "50",
    "--retrain.supervised.milestones",
    "1",
    "--device",
    "cpu",
    "--no-tensorboard",
]


def run_train(argv: list[str]) -> dict:
    """``python -m dmlp.train ARGV`` in this process."""
    return dmlp_train.main(dmlp_train.parse_args(argv))


def run_eval(argv: list[str]) -> dict:
    """``python -m dmlp.eval ARGV`` in this process."""
    return dmlp_eval.main(dmlp_eval.parse_args(argv))


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("chain")
    torch.set_num_threads(1)
    metrics = run_train([*TINY, "--retrain.baselines", "ce_noisy", "meta_only", "--output_dir", str(out)])
    return out, metrics


def test_chain_writes_every_stage_output(chain_run):
    out, _metrics = chain_run
    for name in (
        "config.yaml",
        "ssl.pt",
        "features.pt",
        "purifier.pt",
        "purified_labels.json",
        "noisy_labels.json",
        "last.pt",
        "metrics.json",
        "retrain_dmlp_naive.pt",
        "retrain_ce_noisy.pt",
        "retrain_meta_only.pt",
    ):
        assert (out / name).is_file(), name
    written = json.loads((out / "metrics.json").read_text())
    for key in (
        "label_acc_noisy",
        "label_acc_purified",
        "test_acc_ce_noisy",
        "test_acc_meta_only",
        "test_acc_dmlp_naive",
    ):
        assert 0 <= written[key] <= 100, key
    assert 10 <= written["label_acc_noisy"] <= 35  # 80 % symmetric over 10 classes: about 28 % correct
    # purified labels: noise-file format, meta rows carry their true labels, soft rows sum to one
    record = load_label_file(out / "purified_labels.json", expected_length=600)
    legacy = load_noisy_labels(out / "purified_labels.json", expected_length=600)
    assert (record.labels == legacy.noisy).all()
    meta = load_checkpoint(out / "last.pt")["meta_indices"].numpy()
    assert (record.labels[meta] == record.clean[meta]).all()
    assert abs(record.soft.sum(1) - 1).max() < 1e-4


def test_eval_recomputes_the_test_accuracies(chain_run, tmp_path):
    out, metrics = chain_run
    evaluated = run_eval(["--checkpoint", str(out / "last.pt"), "--output_dir", str(tmp_path), "--device", "cpu"])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == pytest.approx(evaluated)
    for key in (
        "test_acc_ce_noisy",
        "test_acc_meta_only",
        "test_acc_dmlp_naive",
        "label_acc_noisy",
        "label_acc_purified",
    ):
        assert evaluated[key] == pytest.approx(metrics[key], abs=1e-6), key


def test_eval_reads_the_config_of_an_older_last_pt(chain_run, tmp_path):
    """A last.pt written before the run-level names were unified (device null, amp 'none', no *_interval keys)."""
    out, metrics = chain_run
    state = load_checkpoint(out / "last.pt")
    state["config"] = {
        k: v for k, v in state["config"].items() if k not in ("log_interval", "eval_interval", "checkpoint_interval")
    }
    state["config"].update(device=None, amp="none")
    save_checkpoint(state, tmp_path / "last.pt")
    shutil.copy(out / "noisy_labels.json", tmp_path / "noisy_labels.json")
    evaluated = run_eval(["--checkpoint", str(tmp_path / "last.pt"), "--device", "cpu"])
    assert evaluated["test_acc_dmlp_naive"] == pytest.approx(metrics["test_acc_dmlp_naive"], abs=1e-6)


class Killed(Exception):
    pass


def _copy_stage_outputs(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("ssl.pt", "features.pt", "purifier.pt", "purified_labels.json", "noisy_labels.json"):
        shutil.copy(src / name, dst / name)


def test_retraining_resumes_where_an_uninterrupted_run_ends(chain_run, tmp_path, monkeypatch):
    out, _ = chain_run
    args = [*TINY, "--stages", "retrain", "--retrain.supervised.epochs", "3"]
    _copy_stage_outputs(out, tmp_path / "full")
    full = run_train([*args, "--output_dir", str(tmp_path / "full")])
    _copy_stage_outputs(out, tmp_path / "cut")
    original = dmlp_stages.train_supervised

    def killed_after_first_epoch(*a, **kw):
        def hook(epoch, row):
            if epoch == 0:
                raise Killed

        if kw["tag"] != "dmlp_naive":  # the baselines of default.yaml run first, uninterrupted
            return original(*a, **kw)
        return original(*a, **{**kw, "on_epoch_end": hook})

    monkeypatch.setattr(dmlp_stages, "train_supervised", killed_after_first_epoch)
    with pytest.raises(Killed):
        run_train([*args, "--output_dir", str(tmp_path / "cut")])
    monkeypatch.setattr(dmlp_stages, "train_supervised", original)
    assert load_checkpoint(tmp_path / "cut" / "retrain_dmlp_naive.pt")["epoch"] == 0
    # the interrupted run has no last.pt yet: --resume names its interrupted stage file (read and verified)
    resumed = run_train([*args, "--resume", str(tmp_path / "cut" / "retrain_dmlp_naive.pt")])
    assert resumed["test_acc_dmlp_naive"] == full["test_acc_dmlp_naive"]
    a = load_checkpoint(tmp_path / "full" / "retrain_dmlp_naive.pt")
    b = load_checkpoint(tmp_path / "cut" / "retrain_dmlp_naive.pt")
    assert_same_tensors(a["model"], b["model"], "model")
    assert a["tracker"] == b["tracker"]


@pytest.mark.parametrize("include_meta", [True, False])
def test_ce_noisy_trains_on_the_noisy_labels_plus_the_true_meta_labels(include_meta, tmp_path, monkeypatch):
    """The ce_noisy baseline gets what DMLP-Naive gets besides the purified labels: the meta rows' true labels and
    the same rows (evidence.py's ce_noisy: noisy labels + the clean meta labels)."""
    from types import SimpleNamespace

    import numpy as np

    from dmlp.config import Config

    clean = torch.arange(20) % 5
    noisy = (clean + 1) % 5  # every label wrong
    meta = torch.tensor([3, 7, 11])
    task = SimpleNamespace(noisy_labels=noisy, clean_labels=clean, meta_indices=meta, meta_labels=clean[meta])
    cfg = Config()
    cfg.retrain.baselines, cfg.retrain.include_meta = ["ce_noisy"], include_meta
    purified = clean.numpy().copy()
    monkeypatch.setattr(dmlp_stages, "_retrain_labels", lambda cfg, task, out_dir: (purified, None))
    seen = {}

    def fake_run_one(tag, cfg, task, labels, indices, out_dir, ctx, logger):
        seen[tag] = (np.asarray(labels).copy(), np.asarray(indices).copy())
        return {"last": 0.0, "best": 0.0}, torch.nn.Linear(1, 1)

    monkeypatch.setattr(dmlp_stages, "run_one", fake_run_one)
    dmlp_stages.run_retrain(cfg, task, tmp_path, None, None)
    labels, rows = seen["ce_noisy"]
    expected = noisy.numpy().copy()
    expected[meta.numpy()] = clean[meta].numpy()
    assert np.array_equal(labels, expected)
    assert np.array_equal(rows, seen["dmlp_naive"][1])  # the rows DMLP-Naive trains on
    assert set(meta.tolist()) <= set(rows.tolist()) if include_meta else not set(meta.tolist()) & set(rows.tolist())
    assert np.array_equal(noisy.numpy(), ((clean + 1) % 5).numpy())  # the task's noisy labels are not modified


def test_simclr_resumes_where_an_uninterrupted_run_ends(tmp_path, monkeypatch):
    args = [*TINY, "--stages", "ssl", "--ssl.epochs", "2"]
    run_train([*args, "--output_dir", str(tmp_path / "full")])
    original = dmlp_stages.train_simclr_epoch
    epochs_run = []

    def killed_in_second_epoch(*a, **kw):
        if epochs_run:
            raise Killed
        epochs_run.append(1)
        return original(*a, **kw)

    monkeypatch.setattr(dmlp_stages, "train_simclr_epoch", killed_in_second_epoch)
    with pytest.raises(Killed):
        run_train([*args, "--output_dir", str(tmp_path / "cut")])
    monkeypatch.setattr(dmlp_stages, "train_simclr_epoch", original)
    assert load_checkpoint(tmp_path / "cut" / "ssl_state.pt")["epoch"] == 0
    run_train([*args, "--resume", str(tmp_path / "cut" / "ssl_state.pt")])
    assert "ssl: resumed SimCLR at epoch 1" in (tmp_path / "cut" / "train.log").read_text()
    for name in ("ssl.pt", "ssl_state.pt"):
        assert_same_tensors(load_checkpoint(tmp_path / "full" / name), load_checkpoint(tmp_path / "cut" / name), name)


def test_the_same_config_run_again_into_its_folder_reuses_every_stage(chain_run, tmp_path):
    """A new dmlp run (not --resume) into a folder holding this config's stages reuses them (claim_run_dir's
    ``reuse_results``), where other packages refuse to write over a run's results."""
    out, metrics = chain_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    stage_files = ("ssl.pt", "features.pt", "purifier.pt", "retrain_dmlp_naive.pt")
    before = {name: (run / name).read_bytes() for name in stage_files}
    again = run_train([*TINY, "--retrain.baselines", "ce_noisy", "meta_only", "--output_dir", str(run)])
    assert {name: (run / name).read_bytes() for name in stage_files} == before
    assert again["test_acc_dmlp_naive"] == pytest.approx(metrics["test_acc_dmlp_naive"], abs=1e-6)
    assert "reused" in (run / "train.log").read_text()


def test_bad_input_is_a_clear_error(chain_run, tmp_path):
    out, _ = chain_run
    (tmp_path / "run").mkdir()
    shutil.copy(out / "noisy_labels.json", tmp_path / "short.json")
    content = json.loads((tmp_path / "short.json").read_text())
    content["noisy"], content["clean"] = content["noisy"][:-1], content["clean"][:-1]
    content.pop("realised_rate")
    (tmp_path / "short.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match="holds 599 labels, the dataset has 600"):
        run_train([*TINY, "--data.noise_file", str(tmp_path / "short.json"), "--output_dir", str(tmp_path / "run")])
    with pytest.raises(ValueError, match="amp='bf16' is not supported by dmlp"):
        run_train([*TINY, "--amp", "bf16", "--output_dir", str(tmp_path / "run")])
    with pytest.raises(ValueError, match="checkpoint_interval=2 is not supported by dmlp"):
        run_train([*TINY, "--checkpoint_interval", "2", "--output_dir", str(tmp_path / "run")])
    with pytest.raises(ValueError, match="retrain.include_meta false is not supported with retrain.mode dividemix"):
        dividemix = ["--retrain.mode", "dividemix", "--retrain.include_meta", "false"]
        run_train([*TINY, *dividemix, "--output_dir", str(tmp_path / "d")])
    assert not (tmp_path / "d").exists()  # refused at the config check, before the run folder
    with pytest.raises(ValueError, match="unknown stage"):
        run_train([*TINY, "--stages", "features", "--output_dir", str(tmp_path / "run")])
    with pytest.raises(FileNotFoundError, match="(?s)CIFAR-10.*shared.datasets info cifar10"):
        run_train([*TINY, "--data.root", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "run")])


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_two_processes_gloo_retraining(chain_run, tmp_path):
    out, _ = chain_run
    run = tmp_path / "ddp"
    _copy_stage_outputs(out, run)
    run_torchrun(
        "dmlp.train",
        [
            *TINY,
            "--stages",
            "retrain",
            "--retrain.supervised.batch_size",
            "25",
            "--output_dir",
            str(run),
        ],
    )
    assert "2 process(es) on cpu" in (run / "train.log").read_text()
    state = load_checkpoint(run / "retrain_dmlp_naive.pt")
    assert state["step"] == 2 * (600 // (2 * 25))  # 2 epochs, global batch 50 split over two processes
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["test_acc_dmlp_naive"] <= 100


@pytest.mark.slow
def test_embedded_default_meets_the_acceptance_margins(tmp_path):
    """`python -m dmlp.train` (configs/default.yaml) at 80 % symmetric noise, then `python -m dmlp.eval`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "default"
    proc = subprocess.run(
        [sys.executable, "-m", "dmlp.train", "--output_dir", str(out), "--no-tensorboard"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "label accuracy, purified" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "dmlp.eval", "--checkpoint", str(out / "last.pt"), "--output_dir", str(out / "eval")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "eval" / "metrics.json").read_text())
    # measured with the issue-16 defaults (2 % meta, no EMA feedback): 27.57 -> 38.14 % labels; test accuracy
    # CE-on-noisy (+ the meta rows' true labels) 49.90, meta-only 22.20, DMLP-Naive 52.00 (the margins were +30 / +10
    # with 20 % meta and feedback; CE-on-noisy was 48.90 while it trained on the meta rows' noisy labels)
    assert m["label_acc_purified"] >= m["label_acc_noisy"] + 8
    assert m["test_acc_dmlp_naive"] >= m["test_acc_ce_noisy"] + 1
    assert m["test_acc_dmlp_naive"] >= m["test_acc_meta_only"] + 15
