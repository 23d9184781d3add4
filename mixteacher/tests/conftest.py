"""Run this package's tests single-threaded (tiny convolutions gain nothing from a second thread, and the two cores
are shared); the previous thread count is restored after each test."""

import pytest
import torch

from mixteacher.model import DetectorConfig


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_detector_cfg() -> DetectorConfig:
    return DetectorConfig(depth=10, base_width=8, norm="gn", caffe_style=False, pixel_style="pytorch",
                          frozen_stages=-1, fpn_channels=16, anchor_sizes=(16, 32, 64, 128, 256),
                          rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
                          rpn_post_nms_top_n_test=50, representation_size=32, roi_sampling_ratio=2,
                          box_batch_size_per_image=32, min_size=96, max_size=128)
