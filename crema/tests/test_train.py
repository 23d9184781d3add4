"""CREMA end to end on scikit-learn's digits (CIFAR layout): the mechanism engages, resume is exact, eval agrees."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from crema.config import DataConfig
from crema.data import build_task
from crema.eval import main as eval_main
from crema.eval import parse_args as eval_args
from crema.train import main, parse_args
from shared.checkpoint import load_checkpoint
from shared.testing import assert_same_tensors

DIGITS = str(Path(__file__).resolve().parents[1] / "configs" / "digits_sym50.yaml")
TINY = [
    "--optim.epochs",
    "9",
    "--optim.milestones",
    "[7]",
    "--method.warmup_epochs",
    "4",
    "--method.memory_length",
    "2",
]


def _run(out: Path, *extra: str) -> dict:
    return main(parse_args(["-c", DIGITS, "--output_dir", str(out), *TINY, *extra]))


def test_digits_task_reads_the_real_digits_through_the_cifar_layout():
    task = build_task(DataConfig(dataset="digits", image_size=32, noise_rate=0.5, noise_seed=3), None)
    assert (len(task.noisy_labels), len(task.test_labels)) == (1197, 600)
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    expected = np.round(digits.images[order[:-600]] * (255 / 16)).astype(np.uint8)
    np.testing.assert_array_equal(task.train_source[:, 0, ::4, ::4].numpy(), expected)
    np.testing.assert_array_equal(task.clean_labels.numpy(), digits.target[order[:-600]])
    # DivideMix protocol: exactly int(0.5 N) samples redrawn uniformly over the 10 classes (about 45 % flipped)
    assert 0.40 < (task.noisy_labels != task.clean_labels).float().mean() < 0.50


def test_crema_engages_on_noisy_digits(tmp_path):
    metrics = _run(tmp_path / "run", "--tensorboard", "true")
    with open(tmp_path / "run" / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9 and rows[0]["clean_n"] == "" and float(rows[-1]["clean_n"]) > 0
    # the coarse split is purer than the noisy labels, and the selective update corrects labels
    assert metrics["clean_precision"] > metrics["noisy_label_acc"] + 30
    assert metrics["updated_n"] > 50 and metrics["updated_label_acc"] > 90
    assert float(rows[-1]["weight_mean_correct"]) > float(rows[-1]["weight_mean_wrong"])
    assert metrics["test_acc_last"] > 80
    assert list((tmp_path / "run" / "histograms").glob("events.out.tfevents*"))
    result = eval_main(eval_args(["--checkpoint", str(tmp_path / "run" / "last.pt")]))
    assert result["test_acc"] == pytest.approx(metrics["test_acc_last"])


def test_resumed_run_ends_bit_identical(tmp_path):
    _run(tmp_path / "full", "--tensorboard", "false", "--optim.epochs", "7")
    _run(tmp_path / "part", "--tensorboard", "false", "--optim.epochs", "5")
    _run(
        tmp_path / "part",
        "--tensorboard",
        "false",
        "--optim.epochs",
        "7",
        "--resume",
        str(tmp_path / "part" / "last.pt"),
    )
    full = load_checkpoint(tmp_path / "full" / "last.pt", package="crema")
    resumed = load_checkpoint(tmp_path / "part" / "last.pt", package="crema")
    assert full["epoch"] == resumed["epoch"] == 6
    for key in ("net1", "opt1", "memories", "updates", "tracker", "step"):
        assert_same_tensors(full[key], resumed[key], key)


def test_two_co_divided_networks(tmp_path):
    metrics = _run(tmp_path / "run", "--tensorboard", "false", "--model.num_nets", "2", "--optim.epochs", "6")
    assert metrics["clean_n"] > 0 and metrics["clean_precision"] > metrics["noisy_label_acc"] + 30
    result = eval_main(eval_args(["--checkpoint", str(tmp_path / "run" / "last.pt")]))
    assert {"test_acc_net1", "test_acc_net2", "test_acc"} <= set(result)
    assert result["test_acc"] == pytest.approx(metrics["test_acc_last"])
