"""CUDA path: one MixTeacher training step with bf16 autocast and teacher inference at both scales."""

import pytest
import torch

from mixteacher.bench import run


@pytest.mark.gpu
def test_cuda_mixteacher_step_and_inference():
    rows = run(torch.device("cuda"), "tiny", 128, 160, 1, 2, iters=1, warmup=1, amp="bf16", num_classes=3)
    assert [r[1] for r in rows] == ["s/iter", "s/iter", "images/s", "images/s"]
    assert all(r[2] > 0 and r[3] > 0 for r in rows)


def test_bench_cpu_rows():
    rows = run(torch.device("cpu"), "tiny", 96, 128, 1, 1, iters=1, warmup=0, amp="off", num_classes=3)
    labels = [r[0] for r in rows]
    assert labels[0].startswith("train step supervised") and labels[1].startswith("train step mixteacher")
    assert labels[2:] == ["teacher inference, regular scale", "teacher inference, mixed scale"]
