"""lsfa test fixtures: one intra-op thread per test (restored afterwards).

The models in these tests are tiny; with several OpenMP threads on a shared 2-core machine the threads spin-wait on
each other and the same test runs 5-20x slower than with one.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
