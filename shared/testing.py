"""Test helpers shared by the packages' test suites (pytest is a dev dependency; nothing at run time imports this).

A package's ``tests/conftest.py`` opts in to one intra-op thread per test with::

    from shared.testing import single_torch_thread  # noqa: F401  (autouse fixture)

The packages' test models are tiny: with several OpenMP threads on a shared 2-core machine the threads spin-wait on
each other and the same test runs 5-20x slower than with one (measured: 11-14 s vs 0.6-0.8 s for a 3-step RetinaNet
run). The previous thread count is restored after each test, so other packages' tests are unaffected.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

__all__ = ["single_torch_thread", "torch_threads"]


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)``, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    """Autouse fixture: every test of the importing conftest's folder runs on one intra-op thread."""
    with torch_threads(1):
        yield
