"""Fixtures of the pvg tests: one intra-op thread per test (``shared.testing``) and a temporary synthetic-data root."""

from shared.testing import single_torch_thread, synthetic_root  # noqa: F401  (autouse; temporary data root)
