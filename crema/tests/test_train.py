"""CREMA end to end on scikit-learn's digits (CIFAR layout): the mechanism engages, resume is exact, eval agrees."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from crema.coarse_to_fine import CremaTrainer
from crema.config import DataConfig, check_config
from crema.data import build_task
from crema.eval import evaluate
from crema.eval import main as eval_main
from crema.eval import parse_args as eval_args
from crema.model import create_model
from crema.train import build_nets, main, parse_args
from shared.checkpoint import load_checkpoint
from shared.distributed import DistContext
from shared.testing import assert_resume_refused, assert_same_tensors

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DIGITS = str(CONFIGS / "digits_sym50.yaml")
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
    # a resume with another method setting is refused before the run folder is touched
    last = str(tmp_path / "part" / "last.pt")
    other = ("--tensorboard", "false", "--resume", last, "--method.p_threshold", "0.7")
    assert_resume_refused(lambda: _run(tmp_path / "part", *other), tmp_path / "part", "method.p_threshold")


def test_two_co_divided_networks(tmp_path):
    metrics = _run(tmp_path / "run", "--tensorboard", "false", "--model.num_nets", "2", "--optim.epochs", "6")
    assert metrics["clean_n"] > 0 and metrics["clean_precision"] > metrics["noisy_label_acc"] + 30
    result = eval_main(eval_args(["--checkpoint", str(tmp_path / "run" / "last.pt")]))
    assert {"test_acc_net1", "test_acc_net2", "test_acc"} <= set(result)
    assert result["test_acc"] == pytest.approx(metrics["test_acc_last"])


def _trainer(*argv: str) -> CremaTrainer:
    """A one-process trainer on the digits (no logger: only for the pieces that do not log)."""
    cfg = parse_args(["-c", DIGITS, *argv])
    task = build_task(cfg.data, None)
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    return CremaTrainer(build_nets(cfg, task, ctx.device), task, cfg, ctx, None)


def test_clothing1m_recipe_follows_dividemix(tmp_path):
    # Train_clothing1M.py: num_batches 1 000; warm-up on 1 000 x 64 images at batch 64 with CE + NegEntropy;
    # training divides a fresh 1 000 x 32 sample at batch 32; lr 0.002 (/10 from epoch 40), wd 1e-3
    weights = tmp_path / "resnet50.pth"
    weights.write_bytes(b"")
    cfg = parse_args(["-c", str(CONFIGS / "clothing1m.yaml"), "--model.pretrained", str(weights)])
    check_config(cfg)
    d, o, m = cfg.data, cfg.optim, cfg.method
    assert m.warmup_epochs == 1 and m.warmup_penalty
    assert d.warmup_epoch_samples // o.warmup_batch_size == 1000 and o.warmup_batch_size == 64
    assert d.epoch_samples // o.batch_size == 1000 and o.batch_size == 32
    assert (o.lr, o.weight_decay, o.milestones, o.epochs) == (0.002, 0.001, [40], 80)


def test_warmup_epochs_take_their_own_sample_and_batch(tmp_path):
    argv = ["--data.epoch_samples", "500", "--data.warmup_epoch_samples", "1000", "--method.warmup_epochs", "1"]
    trainer = _trainer(*argv)
    warm, train = trainer.epoch_indices(0), trainer.epoch_indices(1)
    assert (len(warm), len(train)) == (1000, 500)
    assert torch.equal(torch.bincount(trainer.given[train], minlength=10), torch.full((10,), 50))
    assert torch.equal(trainer.epoch_indices(1), train)  # a function of (seed, epoch): the same on every rank
    _run(tmp_path / "run", "--tensorboard", "false", *argv, "--optim.epochs", "1", "--optim.warmup_batch_size", "128")
    assert load_checkpoint(tmp_path / "run" / "last.pt", package="crema")["step"] == 1000 // 128


def test_label_updates_outside_the_epoch_sample_are_kept_and_not_counted_as_reverted():
    trainer = _trainer("--data.epoch_samples", "500", "--method.update_stable", "false")
    n = len(trainer.given)
    idx = trainer.epoch_indices(0)
    outside = torch.ones(n, dtype=torch.bool)
    outside[idx] = False
    # constructed credibility: the first half of the drawn samples is credible (clean), the second half is not
    half = len(idx) // 2
    scores = torch.cat([torch.full((half,), 0.95), torch.full((len(idx) - half,), 0.05)])
    scores += torch.linspace(0, 0.01, len(idx))
    # the network predicts class 3 with 0.999 on the noisy half's first 100 samples (updated), 0.5 elsewhere
    probs = torch.full((len(idx), 10), 0.5 / 9)
    probs[:, 0] = 0.5
    probs[half : half + 100] = 0.001 / 9
    probs[half : half + 100, 3] = 0.999
    trainer.memories[0].push(idx, scores, probs.argmax(1))
    previous = torch.full((n,), -1)
    kept = outside.nonzero().squeeze(1)[:20]  # updated in an earlier epoch, not drawn now
    previous[kept] = 7
    previous[idx[half + 100 : half + 130]] = 5  # drawn, updated earlier, no longer meet the rule -> 30 reversions
    previous[idx[half : half + 10]] = 3  # drawn, updated earlier, still meet it -> no reversion
    trainer.updates[0] = previous.clone()
    plan = trainer.plan(0, idx, [probs])
    assert int(plan["clean"].sum()) == half
    update = plan["update"]
    assert (update.updated, update.changed, update.reverted) == (
        100,
        int((trainer.given[idx[half : half + 100]] != 3).sum()),
        30,
    )
    after = trainer.updates[0]
    assert torch.equal(after[outside], previous[outside])  # the undrawn samples keep their updated labels
    expected = torch.full((len(idx),), -1)
    expected[half : half + 100] = 3
    assert torch.equal(after[idx], expected)
    assert torch.equal(plan["labels"][half : half + 100], torch.full((100,), 3))


def test_eval_needs_no_pretrained_file(tmp_path):
    # a Clothing1M-style run (ResNet-50 from an ImageNet file) is evaluated from its checkpoint alone: the recorded
    # file is never read (here it is not even a checkpoint), and --model.pretrained null is accepted
    broken = tmp_path / "imagenet.pth"
    broken.write_text("not a checkpoint")
    net = create_model("resnet50", 10)
    state = {"net1": net.state_dict(), "epoch": 0}
    for pretrained in (str(broken), "null"):
        cfg = parse_args(["-c", DIGITS, "--model.arch", "resnet50", "--model.pretrained", pretrained])
        metrics = evaluate(cfg, state, tmp_path / "run" / "last.pt")
        assert 0 <= metrics["test_acc"] <= 100
    cfg = parse_args(["-c", str(CONFIGS / "clothing1m.yaml"), "--model.pretrained", "null"])
    check_config(cfg, training=False)
    with pytest.raises(ValueError, match="model.pretrained"):
        check_config(cfg)
