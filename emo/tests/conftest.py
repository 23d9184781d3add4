"""Fixtures of the emo tests."""
import pytest

from shared.testing import torch_threads


@pytest.fixture(scope='module')
def one_cpu_thread():
    """Run a module's tiny training runs on one intra-op thread, then restore the setting (see shared/testing.py)."""
    with torch_threads(1):
        yield
