"""mixteacher test fixtures: one intra-op thread per test (see shared/testing.py for why), a tiny detector config."""

import pytest

from mixteacher.model import DetectorConfig
from shared.testing import single_torch_thread  # noqa: F401  (autouse fixture)


@pytest.fixture
def tiny_detector_cfg() -> DetectorConfig:
    return DetectorConfig(depth=10, base_width=8, norm="gn", caffe_style=False, pixel_style="pytorch",
                          frozen_stages=-1, fpn_channels=16, anchor_sizes=(16, 32, 64, 128, 256),
                          rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
                          rpn_post_nms_top_n_test=50, representation_size=32, roi_sampling_ratio=2,
                          box_batch_size_per_image=32, min_size=96, max_size=128)
