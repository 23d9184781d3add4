"""calibrated_teacher test fixtures: one intra-op thread per test (see shared/testing.py)."""

from shared.testing import single_torch_thread  # noqa: F401  (autouse fixture)
