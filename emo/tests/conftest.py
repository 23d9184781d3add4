"""Fixtures of the emo tests."""
import pytest
import torch


@pytest.fixture(scope='module')
def one_cpu_thread():
    """Run a module's tiny training runs on one intra-op thread, then restore the setting.

    Tiny models gain nothing from intra-op parallelism, and on a 2-core machine shared with other jobs two OpenMP
    threads made these runs 10-20x slower than one (measured: 11-14 s vs 0.6-0.8 s for a 3-step RetinaNet run).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
