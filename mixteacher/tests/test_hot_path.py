"""The optimised hot path computes what the plain one did: the in-place frozen BatchNorm
(``shared.detection.FrozenBN``) gives bitwise the same pseudo boxes, losses and gradients as torchvision's
``FrozenBatchNorm2d`` in a full MixTeacher step (teacher detection, three-scale student, mining), Faster R-CNN and
FCOS; the regular and mixed scale reuse one RPN anchor assignment without changing the step; the background weights
without box decoding equal the decoded path's probabilities (README, Performance)."""

import copy
from contextlib import nullcontext

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from mixteacher.mix_teacher import MixTeacher, MixTeacherSettings
from mixteacher.model import RPN, create_model
from mixteacher.tests.helpers import toy_batch
from shared.detection import FrozenBN


def _plain_frozen_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every FrozenBN replaced by torchvision's FrozenBatchNorm2d (same buffers)."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, FrozenBN):
            plain = FrozenBatchNorm2d(module.weight.numel(), module.eps)
            plain.load_state_dict(module.state_dict())
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], plain)
    assert not any(isinstance(m, FrozenBN) for m in model.modules())
    return model


@pytest.mark.parametrize("variant", ["mnv2_fpn", "fcos_mobilenet_v2"])
def test_in_place_frozen_bn_gives_bitwise_the_same_step(variant):
    torch.manual_seed(0)
    model = create_model(variant, num_classes=3, min_size=96, max_size=128)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial statistics
        if isinstance(m, FrozenBN):
            for buf in (m.weight, m.bias, m.running_mean):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1 + (buf == 1).float())
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    plain = _plain_frozen_bn(model)
    settings = MixTeacherSettings(
        unsup_start=0, unsup_warmup=0, initial_score_thr=0.0, cls_score_thr=0.05, rpn_score_thr=0.05
    )
    results = []
    for detector in (model, plain):
        torch.manual_seed(0)
        method = MixTeacher(detector, settings).train()
        loss, logs = method(toy_batch(), step=1)
        loss.backward()
        grads = [p.grad.clone() for p in method.student.parameters() if p.grad is not None]
        results.append((loss.detach(), logs, grads))
    (loss_a, logs_a, grads_a), (loss_b, logs_b, grads_b) = results
    assert logs_a["pseudo_boxes"] > 0  # the teacher's detections reach the losses
    assert torch.equal(loss_a, loss_b) and logs_a == logs_b
    assert len(grads_a) == len(grads_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_background_weights_skip_the_box_decoding_and_equal_roi_predict():
    torch.manual_seed(0)
    model = create_model("tiny", num_classes=3)
    images, _ = model.preprocess([torch.rand(3, 96, 128), torch.rand(3, 96, 128)])
    features = model.extract_features(images, ["mixed"])["mixed"][1]
    boxes = [torch.tensor([[4.0, 4.0, 50.0, 40.0], [30.0, 20.0, 90.0, 80.0]]), torch.zeros(0, 4)]
    probs, decoded = model.roi_predict(features, boxes, images.image_sizes)
    assert decoded.shape == (2, 4, 4)
    assert torch.equal(model.roi_class_probs(features, boxes, images.image_sizes), probs)


def test_regular_and_mixed_scale_share_the_rpn_assignment_bitwise(monkeypatch):
    torch.manual_seed(0)
    model = create_model("tiny", num_classes=3)
    settings = MixTeacherSettings(
        unsup_start=0, unsup_warmup=0, initial_score_thr=0.0, cls_score_thr=0.05, rpn_score_thr=0.05
    )
    calls = []
    similarity = model.rpn.box_similarity

    def counted(boxes, anchors):
        calls.append(len(boxes))
        return similarity(boxes, anchors)

    monkeypatch.setattr(model.rpn, "box_similarity", counted)
    results = []
    for reuse in (True, False):
        if not reuse:  # the plain path: every call assigns anew
            monkeypatch.setattr(RPN, "reuse_assignments", lambda self: nullcontext())
        calls.clear()
        torch.manual_seed(0)
        method = MixTeacher(copy.deepcopy(model), settings).train()
        loss, logs = method(toy_batch(), step=1)
        loss.backward()
        grads = [p.grad.clone() for p in method.student.parameters() if p.grad is not None]
        assert method.student.rpn._assignments is None  # nothing is kept after the step
        results.append((loss.detach(), logs, grads, len(calls)))
    (loss_a, logs_a, grads_a, calls_a), (loss_b, logs_b, grads_b, calls_b) = results
    assert logs_a["pseudo_boxes"] > 0
    assert torch.equal(loss_a, loss_b) and logs_a == logs_b
    assert len(grads_a) == len(grads_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    # three training scales, labeled and unlabeled images: the mixed scale's assignment is the regular one's
    assert calls_b == 3 * calls_a // 2 and calls_a > 0
