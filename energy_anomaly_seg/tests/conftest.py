"""Run this package's tests single-threaded: its tiny convolutions gain nothing from a second thread, and OpenMP
threads slow down by several times when the two cores are shared with other processes (the previous thread count is
restored after each test, so other packages' tests are unaffected)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
