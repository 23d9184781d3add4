"""Timing helpers for the packages' bench.py scripts."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

import torch

__all__ = ["peak_memory_mb", "seconds_per_call", "synchronize"]


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work so a wall-clock reading covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: allocated CUDA memory on a GPU, this process's max resident set size on CPU (Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def seconds_per_call(fn: Callable[[], object], device: torch.device, warmup: int = 1, iters: int = 1) -> float:
    """Mean wall-clock seconds of ``fn()`` over ``iters`` calls after ``warmup`` untimed ones, CUDA work included."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iters
