"""Fixtures of the pvg tests: one intra-op thread per test (``shared.testing``) and a temporary synthetic-data root."""

import pytest

from shared.testing import single_torch_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope='module')
def synthetic_root(tmp_path_factory):
    """Synthetic sets of a test module go to a temporary folder, not the repository's data/."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp('synthetic')
        mp.setenv('SYNTHETIC_DATA_ROOT', str(root))
        yield root
