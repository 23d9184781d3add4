"""The shared classification loop: exact resume, the non-finite guard, and two-process DDP on CPU (gloo)."""

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from timm.models import register_model

from shared.checkpoint import load_checkpoint
from shared.classification import ClassificationConfig, DataConfig, run_classification
from shared.testing import (
    assert_resume_refused,
    assert_run_refused,
    assert_same_tensors,
    run_torchrun,
    write_tiny_imagefolder,
)
from shared.training import NonFiniteLossError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """Two colour classes, 16 train + 4 val images each, 24x24 px."""
    return write_tiny_imagefolder(tmp_path_factory.mktemp("imagefolder"))


def tiny_cfg(root: Path, out: Path, **kw) -> ClassificationConfig:
    data = DataConfig(
        root=str(root),
        img_size=16,
        crop_pct=1.0,
        batch_size=8,
        eval_batch_size=8,
        workers=0,
        auto_augment="rand-m9-mstd0.5-inc1",
    )
    base = ClassificationConfig(
        model="test_resnet",
        data=data,
        epochs=2,
        warmup_epochs=1,
        lr=0.01,
        lr_base_batch=8,
        ema_decay=0.9,
        output_dir=str(out),
        tensorboard=False,
        log_interval=1,
        device="cpu",
        drop_path=0.1,
    )
    return dataclasses.replace(base, **kw)


class Killed(Exception):
    pass


def test_resume_after_kill_is_bit_identical(tiny_folder, tmp_path):
    full = run_classification(tiny_cfg(tiny_folder, tmp_path / "full"), "test")

    def kill_after_first_epoch(epoch, row):
        if epoch == 0:
            raise Killed

    with pytest.raises(Killed):
        run_classification(tiny_cfg(tiny_folder, tmp_path / "cut"), "test", on_epoch_end=kill_after_first_epoch)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 0
    resumed = run_classification(
        tiny_cfg(tiny_folder, tmp_path / "cut", resume=str(tmp_path / "cut" / "last.pt")), "test"
    )

    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "last.pt")
    for key in ("model", "ema", "optimizer", "scheduler", "scaler", "epoch", "step", "rng"):
        assert_same_tensors(a[key], b[key], key)
    assert full["last"] == resumed["last"]
    timing = ("train_img_s", "epoch_time_s")
    rows_full, rows_cut = (
        list(csv.DictReader((tmp_path / d / "log.csv").read_text().splitlines())) for d in ("full", "cut")
    )
    assert [r["epoch"] for r in rows_cut] == ["0", "1"]  # one row per epoch, no duplicate after the resume
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows_cut] == [
        {k: v for k, v in r.items() if k not in timing} for r in rows_full
    ]
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert metrics["evaluated"] == "ema" and 0 <= metrics["best_top1"] <= 100
    assert (tmp_path / "full" / "config.yaml").is_file() and (tmp_path / "full" / "best.pt").is_file()

    # a resume with another network is refused before anything of the run is touched
    last = str(tmp_path / "cut" / "last.pt")
    assert_resume_refused(
        lambda: run_classification(tiny_cfg(tiny_folder, tmp_path / "cut", resume=last, drop_path=0.2), "test"),
        tmp_path / "cut",
        "drop_path",
    )
    # the same run started again (not resumed) would write over the finished one: refused, nothing touched
    assert_run_refused(
        lambda: run_classification(tiny_cfg(tiny_folder, tmp_path / "full"), "test"),
        tmp_path / "full",
        "already holds this test run's results",
    )


POISON = {"on": False}


class NanProbe(torch.nn.Module):
    """A tiny classifier whose output turns NaN once POISON['on'] is set."""

    def __init__(self, num_classes: int = 2, **kwargs):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, num_classes)
        )

    def forward(self, x):
        out = self.net(x)
        return out * float("nan") if POISON["on"] else out


@register_model
def nan_probe_test(pretrained=False, **kwargs):
    kwargs.pop("drop_path_rate", None)
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    return NanProbe(**kwargs)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_folder, tmp_path):
    def poison_after_first_epoch(epoch, row):
        POISON["on"] = True

    cfg = tiny_cfg(tiny_folder, tmp_path, model="nan_probe_test")
    try:
        with pytest.raises(NonFiniteLossError, match="at step 4"):  # first step of epoch 1 (4 steps per epoch)
            run_classification(cfg, "test", on_epoch_end=poison_after_first_epoch)
    finally:
        POISON["on"] = False
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found.*shared.datasets info imagenet1k"):
        run_classification(tiny_cfg(tmp_path / "nowhere", tmp_path / "out"), "test")


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_two_processes_gloo(tiny_folder, tmp_path):
    """torchrun with two CPU processes: the global batch doubles, so each epoch has half the steps."""
    out = tmp_path / "ddp"
    run_torchrun(
        "shared.classification",
        [
            "--model",
            "test_resnet",
            "--data.root",
            str(tiny_folder),
            "--data.img_size",
            "16",
            "--data.crop_pct",
            "1.0",
            "--data.batch_size",
            "4",
            "--data.eval_batch_size",
            "4",
            "--data.workers",
            "0",
            "--epochs",
            "2",
            "--warmup_epochs",
            "0",
            "--lr_base_batch",
            "8",
            "--output_dir",
            str(out),
            "--no-tensorboard",
            "--device",
            "cpu",
        ],
    )
    assert "2 process(es) on cpu" in (out / "train.log").read_text()
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 2 * (32 // (2 * 4))  # 2 epochs x 4 steps with the global batch of 8
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["last"]["top1"] <= 100
    assert len((out / "log.csv").read_text().splitlines()) == 3  # written once (rank 0), header + 2 epochs


def test_cooldown_epochs_run_at_min_lr_after_the_cosine(tiny_folder, tmp_path):
    cfg = tiny_cfg(tiny_folder, tmp_path, epochs=2, cooldown_epochs=1, min_lr=1e-5)
    metrics = run_classification(cfg, package="shared")
    assert metrics["epochs"] == 3
    with open(Path(metrics["run_dir"]) / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert float(rows[2]["lr"]) == pytest.approx(1e-5)  # the whole third epoch at min_lr
    assert float(rows[0]["lr"]) > 1e-5


def test_repeated_augmentation_sampler_repeats_each_image_and_follows_seed_and_epoch():
    from shared.classification import _SeededRepeatAugSampler

    data = list(range(12))
    orders = {}
    for seed in (0, 1):
        for epoch in (0, 1):
            sampler = _SeededRepeatAugSampler(data, seed, num_replicas=1, rank=0)
            sampler.set_epoch(epoch)
            orders[seed, epoch] = list(sampler)
    first = orders[0, 0]
    assert len(first) == len(data)  # one process draws len(train) samples per epoch
    assert all(first[i] == first[i + 1] == first[i + 2] for i in range(0, 12, 3))  # each image thrice in a row
    assert orders[0, 1] != first and orders[1, 0] != first
    # two ranks see different copies of the same images
    ranks = [list(_SeededRepeatAugSampler(data, 0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert set(ranks[0]) & set(ranks[1])


def test_random_erasing_fills_with_the_configured_mode(tiny_folder):
    """``re_mode`` reaches timm's RandomErasing; the default is the timm/DeiT recipes' per-pixel fill."""
    from timm.data.random_erasing import RandomErasing

    from shared.classification import build_loaders
    from shared.distributed import DistContext

    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    for mode in ("pixel", "const"):
        cfg = dataclasses.replace(tiny_cfg(tiny_folder, tiny_folder).data, re_prob=0.25, re_mode=mode)
        train, _, _ = build_loaders(cfg, ctx, seed=0)
        erasing = [t for t in train.dataset.transform.transforms if isinstance(t, RandomErasing)]
        assert len(erasing) == 1 and erasing[0].mode == mode and erasing[0].probability == 0.25
    assert DataConfig().re_mode == "pixel"
