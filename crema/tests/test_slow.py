"""Slow and device tests: the embedded default's claim, torchrun (gloo), and the CUDA path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from crema.coarse_to_fine import CremaTrainer
from crema.credibility import CredibilityMemory, credibility, modulation_weights, selective_label_update
from crema.data import build_task
from crema.train import main, parse_args
from shared.distributed import DistContext
from shared.testing import on_gloo_ranks, run_torchrun

DIGITS = str(Path(__file__).resolve().parents[1] / "configs" / "digits_sym50.yaml")


@pytest.mark.slow
def test_embedded_default_engages_and_beats_the_noise(tmp_path):
    metrics = main(parse_args(["--output_dir", str(tmp_path / "run")]))
    assert metrics["clean_precision"] > metrics["noisy_label_acc"] + 25  # the coarse split purifies
    assert metrics["updated_n"] > 0 and metrics["updated_label_acc"] > metrics["noisy_label_acc"]
    assert metrics["test_acc_last"] > 40  # 10 classes: chance 10 %


@pytest.mark.slow
@pytest.mark.ddp
def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    args = ["-c", DIGITS, "--output_dir", str(out), "--optim.epochs", "7", "--method.warmup_epochs", "3"]
    run_torchrun("crema.train", [*args, "--method.memory_length", "2", "--tensorboard", "false", "--device", "cpu"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["clean_n"] > 0 and metrics["clean_precision"] > metrics["noisy_label_acc"] + 30
    assert metrics["test_acc_last"] > 80


def _bn_rank(ctx: DistContext) -> tuple:
    """One gloo rank: a network with BatchNorm whose running statistics differ per rank, as after a DDP epoch
    (DDP broadcasts buffers only when a training forward starts), then the credibility pass and the test."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    cfg = parse_args(["-c", DIGITS, "--method.credibility", "agreement"])
    task = build_task(cfg.data, None)
    trainer = CremaTrainer([net], task, cfg, ctx, None)
    with torch.no_grad():  # after trainer construction (DDP's constructor broadcasts once)
        net[2].running_mean.add_(ctx.rank)
        net[2].running_var.mul_(1 + 3 * ctx.rank)
    indices = torch.arange(len(task.noisy_labels))
    probs = trainer.credibility_pass(0, indices)
    memory = trainer.memories[0]
    return probs, memory.last().clone(), memory.predictions.clone(), trainer.test()


@pytest.mark.slow
@pytest.mark.ddp
def test_ranks_with_diverged_batchnorm_buffers_make_the_same_credibility_pass():
    (p0, c0, a0, t0), (p1, c1, a1, t1) = on_gloo_ranks(_bn_rank)
    assert torch.equal(p0, p1) and torch.equal(c0, c1) and torch.equal(a0, a1) and t0 == t1
    # and they are rank 0's: the unperturbed network's predictions
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)).eval()
    task = build_task(parse_args(["-c", DIGITS]).data, None)
    with torch.no_grad():
        expected = torch.softmax(net(task.eval_transform(task.train_source)), 1)
    assert torch.allclose(p0, expected, atol=1e-6)


@pytest.mark.gpu
def test_cuda_mechanisms_match_cpu():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(1000, 10, generator=gen) * 3, 1)
    labels = torch.randint(0, 10, (1000,), generator=gen)
    results = []
    for device in ("cpu", "cuda"):
        memory = CredibilityMemory(1000, 3, device)
        p, y = probs.to(device), labels.to(device)
        for _ in range(4):
            memory.push(torch.arange(1000), credibility(p, y), p.argmax(1))
        weights = modulation_weights(memory)
        update = selective_label_update(p, y, weights < 0.5, torch.full_like(y, -1), 0.5, memory.stable())
        results.append((weights.cpu(), update.labels.cpu()))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.gpu
def test_cuda_run(tmp_path):
    args = ["-c", DIGITS, "--output_dir", str(tmp_path / "gpu"), "--device", "cuda", "--optim.epochs", "8"]
    metrics = main(parse_args([*args, "--method.warmup_epochs", "4", "--method.memory_length", "2"]))
    assert metrics["clean_precision"] > metrics["noisy_label_acc"] + 30
