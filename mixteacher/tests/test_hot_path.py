"""The optimised hot path computes what the plain one did: the in-place frozen BatchNorm (``model.FrozenBN``) gives
bitwise the same pseudo boxes, losses and gradients as torchvision's ``FrozenBatchNorm2d`` in a full MixTeacher step
(teacher detection, three-scale student, mining), Faster R-CNN and FCOS; the background weights without box decoding
equal the decoded path's probabilities (README, Performance)."""

import copy

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from mixteacher.mix_teacher import MixTeacher, MixTeacherSettings
from mixteacher.model import FrozenBN, create_model
from mixteacher.tests.helpers import toy_batch


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
