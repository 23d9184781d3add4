"""Focal IoU Weight: the released constants' table, negatives only, the gradient to the regression branch."""

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from calibrated_teacher.losses import FIoUParams, focal_iou_weight, retinanet_fiou_losses


def test_fiou_weight_table():
    w = focal_iou_weight(torch.tensor([0.0, 0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
    hand = [0.5 + 1.5 * 0.25 * u * u * -math.log(1.00001 - u) for u in (0.0, 0.5, 0.9, 0.99)]
    assert w == pytest.approx(hand, rel=1e-12)
    assert w == pytest.approx([0.5, 0.565, 1.20, 2.19], abs=0.006)  # the fact sheet's table
    grid = focal_iou_weight(torch.linspace(0, 0.999, 200))
    assert bool((grid[1:] >= grid[:-1]).all())


def _setup(regression_requires_grad=True):
    anchors = [
        torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [0.0, 0.0, 9.0, 9.0], [90.0, 90.0, 95.0, 95.0]])
    ]
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}]
    logits = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    regression = torch.zeros(1, 4, 4, requires_grad=regression_requires_grad)
    matched = [torch.tensor([0, -1, -2, -1])]  # positive, negative, ignored, negative
    return targets, {"cls_logits": logits, "bbox_regression": regression}, anchors, matched


def test_without_fiou_equals_torchvision_focal_loss():
    from torchvision.models.detection.retinanet import RetinaNetClassificationHead

    targets, outputs, anchors, matched = _setup()
    ours = retinanet_fiou_losses(targets, outputs, anchors, matched, BoxCoder((1.0, 1.0, 1.0, 1.0)), None)
    head = RetinaNetClassificationHead(8, 1, 3)
    ref = head.compute_loss(targets, outputs, matched)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)


def test_fiou_weights_only_negatives_by_their_predicted_iou():
    from torchvision.ops import sigmoid_focal_loss

    targets, outputs, anchors, matched = _setup()
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    loss = retinanet_fiou_losses(targets, outputs, anchors, matched, coder, FIoUParams())
    gt = torch.zeros(4, 3)
    gt[0, 1] = 1
    per = sigmoid_focal_loss(outputs["cls_logits"][0], gt, reduction="none").sum(-1)
    # zero deltas: predicted boxes are the anchors; IoU with the target: anchor 1 -> 0, anchor 3 -> 0
    expected = per[0] + 0.5 * per[1] + 0.5 * per[3]  # anchor 2 ignored
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


def test_fiou_gradient_reaches_the_regression_branch_unless_detached():
    targets, outputs, anchors, matched = _setup()
    anchors = [
        torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 12.0, 12.0], [0.0, 0.0, 9.0, 9.0], [2.0, 2.0, 12.0, 12.0]])
    ]
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    retinanet_fiou_losses(targets, outputs, anchors, matched, coder, FIoUParams()).backward()
    grad = outputs["bbox_regression"].grad[0]
    assert grad[1].abs().sum() > 0 and grad[3].abs().sum() > 0  # overlapping negatives
    assert grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0  # positive (no reg loss here), ignored
    targets, outputs, _, matched = _setup()
    retinanet_fiou_losses(targets, outputs, anchors, matched, coder, FIoUParams(detach=True)).backward()
    assert outputs["bbox_regression"].grad is None or outputs["bbox_regression"].grad.abs().sum() == 0


def test_image_without_targets_halves_every_negative():
    targets, outputs, anchors, _ = _setup()
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    matched = [torch.full((4,), -1)]
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    plain = retinanet_fiou_losses(targets, outputs, anchors, matched, coder, None)
    weighted = retinanet_fiou_losses(targets, outputs, anchors, matched, coder, FIoUParams())
    assert weighted.item() == pytest.approx(0.5 * plain.item(), rel=1e-6)
