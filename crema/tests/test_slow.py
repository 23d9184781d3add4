"""Slow and device tests: the embedded default's claim, torchrun (gloo), and the CUDA path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from crema.credibility import CredibilityMemory, credibility, modulation_weights, selective_label_update
from crema.train import main, parse_args
from shared.testing import run_torchrun

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
