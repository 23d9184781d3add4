"""mixteacher test fixtures: one intra-op thread per test (see shared/testing.py for why), the tiny detector config."""

import pytest

from mixteacher.model import DetectorConfig, detector_config
from shared.testing import single_torch_thread  # noqa: F401  (autouse fixture)


@pytest.fixture
def tiny_detector_cfg() -> DetectorConfig:
    return detector_config("tiny")
