import random
import time

import numpy as np
import pytest
import torch

from shared.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    save_last_and_best,
)
from shared.training import (
    NonFiniteLossError,
    check_finite,
    optimizer_step,
    resolve_device,
    show_progress,
    warmup_cosine_schedule,
)


def test_rng_state_round_trip_through_safe_loader(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint({"rng": capture_rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])  # weights_only=True inside
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    assert load_checkpoint(path)["epoch"] == 1  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left behind


def test_save_last_and_best(tmp_path):
    save_last_and_best({"epoch": 0}, tmp_path, is_best=True)
    save_last_and_best({"epoch": 1}, tmp_path, is_best=False)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 0
    save_last_and_best({"epoch": 2}, tmp_path, is_best=True)
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="bad.pt"):
        load_checkpoint(bad)


def test_check_finite_names_the_step():
    check_finite(torch.tensor(1.0), step=3)
    with pytest.raises(NonFiniteLossError, match="at step 17"):
        check_finite(torch.tensor(float("nan")), step=17)
    with pytest.raises(NonFiniteLossError):
        check_finite(torch.tensor([1.0, float("inf")]), step=0)


def test_warmup_cosine_schedule_values():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = warmup_cosine_schedule(opt, total_steps=10, warmup_steps=4, min_lr=0.1, warmup_lr=0.0)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    # cosine from 1.0 at step 4 to 0.1 at step 10
    assert lrs[7] == pytest.approx(0.1 + 0.45 * (1 + np.cos(np.pi * 3 / 6)))
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1, abs=1e-9)  # lr(10) = min_lr


@pytest.mark.parametrize(("warmup_prefix", "noise"), [(True, None), (False, None), (False, (0.42, 0.9))])
def test_warmup_cosine_schedule_equals_timm(warmup_prefix, noise):
    """Per-step lrs equal timm's CosineLRScheduler (t_in_epochs=False), with and without warmup_prefix and lr noise."""
    from timm.scheduler import CosineLRScheduler

    total, warmup, base = 200, 20, 6e-3
    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    ours = warmup_cosine_schedule(
        ours_opt,
        total,
        warmup,
        min_lr=1e-6,
        warmup_lr=1e-6,
        warmup_prefix=warmup_prefix,
        noise_range=noise,
        noise_pct=0.67,
        noise_std=1.0,
        noise_seed=42,
    )
    timm_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    reference = CosineLRScheduler(
        timm_opt,
        t_initial=total - warmup if warmup_prefix else total,
        lr_min=1e-6,
        warmup_t=warmup,
        warmup_lr_init=1e-6,
        warmup_prefix=warmup_prefix,
        t_in_epochs=False,
        noise_range_t=[n * total for n in noise] if noise else None,
        noise_pct=0.67,
        noise_std=1.0,
        noise_seed=42,
    )
    for step in range(total):
        reference.step_update(step)
        assert ours_opt.param_groups[0]["lr"] == pytest.approx(timm_opt.param_groups[0]["lr"], rel=1e-9), step
        ours_opt.step()
        ours.step()


def test_optimizer_step_clips_and_guards():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    optimizer_step((w * torch.tensor([30.0, 40.0])).sum(), opt, scaler, step=0, clip_grad=5.0, parameters=[w])
    assert torch.allclose(w.detach(), torch.tensor([-3.0, -4.0]))  # gradient (30, 40) clipped to norm 5
    with pytest.raises(NonFiniteLossError, match="SLEEG loss.*step 7"):
        optimizer_step(w.sum() * float("nan"), opt, scaler, step=7, what="SLEEG loss")
    assert torch.allclose(w.detach(), torch.tensor([-3.0, -4.0]))  # no update from the bad loss
    with pytest.raises(ValueError, match="parameters"):
        optimizer_step(w.sum(), opt, scaler, step=1, clip_grad=1.0)


def test_show_progress_writes_loss_lr_and_the_rate_of_all_processes():
    class Bar:
        postfix = None

        def set_postfix(self, **kw):
            self.postfix = kw

    bar = Bar()
    show_progress(bar, 0.123456, 1e-3, images=100, world_size=2, start=time.perf_counter() - 10.0, digits=(3, 1))
    assert bar.postfix["loss"] == "0.123" and bar.postfix["lr"] == "1.00e-03"
    assert 19.0 < float(bar.postfix["img_s"]) <= 20.0  # 200 images over a little more than 10 s
    show_progress(range(3), 1.0, 1e-3, 1, 1, time.perf_counter())  # a plain iterable (non-main rank): nothing


def test_resolve_device_auto_cpu_cuda(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")  # not a silent CPU run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda") == resolve_device("cuda")
    with pytest.raises(ValueError, match="'auto', 'cpu' or 'cuda'"):
        resolve_device("tpu")


def test_log_csv_widens_its_header_for_keys_that_appear_later(tmp_path):
    """A key first seen after the first row (evaluation epochs, a method's losses after its warm-up) gets a column;
    a resumed run keeps the rows before its epoch under the widened header."""
    import csv

    from shared.logger import RunLogger

    logger = RunLogger(tmp_path, tensorboard=False)
    logger.log_epoch(0, {"loss": 1.0})
    logger.log_epoch(1, {"loss": 0.5, "top1": 40.0})
    logger.log_epoch(2, {"loss": 0.25})
    logger.close()
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["top1"] for r in rows] == ["", "40.0", ""] and [r["epoch"] for r in rows] == ["0", "1", "2"]
    resumed = RunLogger(tmp_path, tensorboard=False)
    resumed.log_epoch(2, {"loss": 0.3, "val": 7})
    resumed.close()
    with open(tmp_path / "log.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["epoch", "loss", "top1", "val"]
        rows = list(reader)
    assert [(r["epoch"], r["loss"], r["top1"], r["val"]) for r in rows] == [
        ("0", "1.0", "", ""),
        ("1", "0.5", "40.0", ""),
        ("2", "0.3", "", "7"),
    ]
    assert not list(tmp_path.glob(".log.csv*"))  # the rewrite's temp file is gone


def test_after_a_resume_other_ranks_draw_their_own_random_numbers(monkeypatch):
    """A checkpoint holds rank 0's generators; rank 0 continues them exactly, another rank re-seeds from them
    (deterministically), so the ranks' draws do not coincide after a resume."""
    import shared.distributed as distributed
    from shared.checkpoint import restore_training_state, training_state

    torch.manual_seed(5)
    state = training_state("pkg", None, epoch=0)
    expected = torch.rand(3)

    def draws(rank: int) -> torch.Tensor:
        monkeypatch.setattr(distributed, "get_rank", lambda: rank)
        restore_training_state(state)
        return torch.rand(3)

    assert torch.equal(draws(0), expected)
    other = draws(1)
    assert not torch.equal(other, expected) and torch.equal(draws(1), other)
    # a run's own generator (a component), restored from rank 0's state: the same rule
    own = torch.Generator().manual_seed(11)
    state = training_state("pkg", None, gen=own)
    expected = torch.rand(3, generator=own)

    def own_draws(rank: int) -> torch.Tensor:
        monkeypatch.setattr(distributed, "get_rank", lambda: rank)
        g = torch.Generator()
        restore_training_state(state, gen=g)
        return torch.rand(3, generator=g)

    assert torch.equal(own_draws(0), expected)
    other = own_draws(1)
    assert not torch.equal(other, expected) and torch.equal(own_draws(1), other)


def test_loader_seeds_are_the_base_on_rank_0_and_distinct_elsewhere():
    from shared.distributed import loader_seed

    base = 3 * 100_003 + 7
    assert loader_seed(base, 0) == base
    assert len({loader_seed(base, r) for r in range(8)}) == 8
    assert loader_seed(base, 1) != loader_seed(base + 1, 0)


def test_a_config_may_lengthen_the_collective_timeout(monkeypatch):
    """start_run passes cfg.collective_timeout_min (where a config has it) to init_process_group as a timedelta."""
    import datetime
    import types

    import torch.distributed as dist

    from shared.entrypoints import start_run

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.update(kw))
    cfg = types.SimpleNamespace(threads=None, device="cpu", collective_timeout_min=90)
    ctx, prepared = start_run(cfg, lambda ctx: "ready")
    assert prepared == "ready" and ctx.world_size == 2 and seen["timeout"] == datetime.timedelta(minutes=90)
    seen.clear()
    start_run(types.SimpleNamespace(threads=None, device="cpu"), lambda ctx: None)
    assert "timeout" not in seen  # torch's default otherwise


def test_weights_files_from_elsewhere_are_read_safely_and_named(tmp_path):
    """load_weights_file: SupContrast's {'opt': Namespace, 'model': ...} loads; text, a list or another pickled
    object is an error naming the file (also for the SSL loader built on it)."""
    import argparse
    import datetime

    from shared.checkpoint import WeightsFileError, load_weights_file
    from shared.noisy.models import PreActResNet18
    from shared.noisy.simclr import load_ssl_checkpoint

    good = tmp_path / "ckpt.pth"
    torch.save({"opt": argparse.Namespace(lr=0.5, model="resnet18"), "model": {"w": torch.ones(2)}}, good)
    assert torch.equal(load_weights_file(good)["model"]["w"], torch.ones(2))
    cases = {"text.pth": None, "list.pth": [1, 2], "foreign.pth": {"when": datetime.timedelta(days=1)}}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_text("not weights") if content is None else torch.save(content, path)
        with pytest.raises(WeightsFileError, match=f"{name}: not a"):
            load_weights_file(path, "SSL checkpoint")
        with pytest.raises(ValueError, match=f"{name}: not a"):
            load_ssl_checkpoint(PreActResNet18(10), path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_weights_file(tmp_path / "missing.pth")


def test_a_resume_with_another_model_is_refused_naming_the_keys(tmp_path):
    from shared.logger import RunDirError, check_resume_config

    stored = {"model": {"arch": "issam", "depth": 4}, "data": {"root": "a"}, "epochs": 10, "threads": 2}
    check_resume_config("last.pt", stored, {**stored, "epochs": 20, "threads": 4}, ["model", "data"])
    with pytest.raises(RunDirError, match=r"--resume last.pt was trained with other settings \(model.arch\)"):
        check_resume_config("last.pt", stored, {**stored, "model": {"arch": "frih", "depth": 4}}, ["model", "data"])
    with pytest.raises(RunDirError, match="data.root"):
        check_resume_config("last.pt", stored, {**stored, "data": {"root": "b"}}, ["model", "data"])


def test_load_resume_state_compares_the_sections_the_config_names(tmp_path):
    import dataclasses
    from typing import ClassVar

    from shared.checkpoint import CheckpointError, load_resume_state, save_checkpoint, training_state
    from shared.config import RunConfig
    from shared.logger import RunDirError

    @dataclasses.dataclass
    class Cfg(RunConfig):
        RESUME_SECTIONS: ClassVar[tuple[str, ...]] = ("model",)
        RESUME_FREE_KEYS: ClassVar[frozenset[str]] = frozenset({"model.weights"})
        model: dict = dataclasses.field(default_factory=lambda: {"arch": "a", "weights": "w.pt"})
        epochs: int = 1

    path = tmp_path / "last.pt"
    save_checkpoint(training_state("pkg", Cfg(), step=3), path)
    assert load_resume_state(Cfg(), "pkg") is None  # no --resume
    state = load_resume_state(Cfg(resume=str(path), epochs=5, threads=2, seed=1), "pkg", required=("step",))
    assert state["step"] == 3  # more epochs and run-level keys may change
    moved = Cfg(resume=str(path), model={"arch": "a", "weights": "/elsewhere/w.pt"})
    assert load_resume_state(moved, "pkg")["step"] == 3  # and so may a free key
    with pytest.raises(RunDirError, match=r"last.pt was trained with other settings \(model.arch\)"):
        load_resume_state(Cfg(resume=str(path), model={"arch": "b", "weights": "w.pt"}), "pkg")
    with pytest.raises(CheckpointError, match="not a other checkpoint"):
        load_resume_state(Cfg(resume=str(path)), "other")
