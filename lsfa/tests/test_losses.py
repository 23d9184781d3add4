"""LSFA loss terms on tiny tensors with known values, the queues, and one full loss evaluation."""

import math

import numpy as np
import pytest
import torch

from lsfa.adaptation import AdaptationQueues, AdaptationSettings, lsfa_loss, released_rgb_token_layout, tokens
from lsfa.losses import (
    FeatureQueue,
    capped_distance,
    compactness_loss,
    cross_modal_global_loss,
    cross_modal_patch_loss,
    info_nce,
    rotation_consistency_loss,
)
from lsfa.model import LSFAAdaptors


def test_info_nce_known_values():
    n = 5
    eye = torch.eye(n)
    # orthonormal rows paired with themselves: logits = I, CE = -log(e / (e + n - 1)), times 2T
    expected = 2 * -math.log(math.e / (math.e + n - 1))
    assert float(info_nce(eye, eye)) == pytest.approx(expected, rel=1e-6)
    # identical normalised rows everywhere: uniform softmax, CE = log n
    same = torch.ones(n, 3)
    assert float(info_nce(same, 3 * same)) == pytest.approx(2 * math.log(n), rel=1e-6)
    # temperature enters as 2T * CE(logits / T)
    t = 0.5
    assert float(info_nce(eye, eye, t)) == pytest.approx(2 * t * -math.log(math.e**2 / (math.e**2 + n - 1)), rel=1e-6)
    assert float(cross_modal_patch_loss(eye, eye)) == pytest.approx(expected, rel=1e-6)
    assert float(cross_modal_global_loss(eye, eye)) == pytest.approx(expected, rel=1e-6)


def test_rotation_term_uses_the_selected_positions():
    q = torch.eye(12)
    positions = torch.tensor([0, 2, 4, 6, 8, 10])
    value = rotation_consistency_loss(q, q.clone(), positions, fraction=0.5, generator=torch.Generator())
    assert float(value) == pytest.approx(2 * -math.log(math.e / (math.e + 2)), rel=1e-6)  # 3 rows, orthonormal


def test_compactness_of_a_queued_point_is_zero_and_far_points_are_capped():
    queue = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert float(compactness_loss(torch.tensor([[3.0, 4.0]]), queue)) == pytest.approx(1e-6, abs=1e-6)
    assert float(capped_distance(torch.tensor([[3.0, 5.0]]), queue)) == pytest.approx(1.0)
    assert float(capped_distance(torch.tensor([[100.0, 0.0]]), queue)) == pytest.approx(math.sqrt(50.0))
    assert float(compactness_loss(torch.tensor([[3.0, 4.0], [3.0, 5.0]]), queue)) == pytest.approx(0.5, abs=1e-5)


def test_feature_queue_is_a_per_class_ring_buffer():
    q = FeatureQueue(num_classes=2, capacity=4, dim=1)
    q.push(0, torch.arange(3.0)[:, None])
    q.push(0, torch.arange(10.0, 13.0)[:, None])
    assert q.size(0) == 4 and q.size(1) == 0
    assert sorted(q.entries(0)[:, 0].tolist()) == [2.0, 10.0, 11.0, 12.0]  # the oldest two were overwritten
    state = {k: v.clone() for k, v in q.state_dict().items()}
    q2 = FeatureQueue(2, 4, 1)
    q2.load_state_dict(state)
    assert torch.equal(q2.entries(0), q.entries(0))


def test_released_rgb_layout_matches_numpy_reshapes():
    fmap = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    got = released_rgb_token_layout(fmap)
    for b in range(2):
        rows = fmap[b].numpy().reshape(-1, 3)
        ref = np.concatenate([np.zeros((1, 3)), rows]).reshape(3, -1).T[1:]
        np.testing.assert_array_equal(got[b].numpy(), ref)
    assert not torch.equal(got, tokens(fmap))


def test_lsfa_loss_trains_and_fills_queues():
    torch.manual_seed(0)
    adaptors = LSFAAdaptors(xyz_dim=24, rgb_dim=12, num_heads=4, proj_dim=8)
    b, g = 3, 4
    xyz, rgb, rot = torch.randn(b, 24, g, g), torch.randn(b, 12, g, g), torch.randn(b, 12, g, g)
    valid = torch.ones(b, g, g, dtype=torch.bool)
    valid[:, 0] = False
    queues = AdaptationQueues(2, 24, 12, patch_capacity=40, global_capacity=5)
    settings = AdaptationSettings(compactness_start_iteration=1, compactness_min_fill=16)
    classes = torch.tensor([0, 1, 0])
    _loss0, logs0 = lsfa_loss(adaptors, xyz, rgb, rot, valid, classes, queues, 0, settings)
    assert logs0["ifc_active"] == 0 and logs0["loss_ifc"] == 0.0
    assert queues.rgb.size(0) == 32 and queues.xyz.size(0) == 24 and queues.rgb_global.size(1) == 1
    loss1, logs1 = lsfa_loss(adaptors, xyz, rgb, rot, valid, classes, queues, 1, settings)
    assert logs1["ifc_active"] == 3 and logs1["loss_ifc"] > 0
    loss1.backward()
    assert all(p.grad is not None for p in adaptors.parameters())
    manual = logs1["loss_cm_patch"] + 0.05 * logs1["loss_rot"] + 0.9 * logs1["loss_ifc"] + 0.1 * logs1["loss_cm_global"]
    assert loss1.item() == pytest.approx(manual, rel=1e-5)
