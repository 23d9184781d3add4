"""The MixTeacher step with pseudo labels present: three-scale losses, thresholds, mining, teacher weighting."""

import pytest
import torch

from mixteacher.mix_teacher import MixTeacher, MixTeacherSettings
from mixteacher.model import MixedScaleFasterRCNN
from mixteacher.tests.helpers import mining_settings


def _batch():
    g = torch.Generator().manual_seed(0)
    shift = torch.tensor([[1.0, 0.0, 4.0], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return {
        "labeled_images": [torch.rand(3, 96, 128, generator=g)],
        "labeled_targets": [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([2])}],
        "weak_images": [torch.rand(3, 96, 128, generator=g), torch.rand(3, 128, 96, generator=g)],
        "strong_images": [torch.rand(3, 96, 128, generator=g), torch.rand(3, 128, 96, generator=g)],
        "weak_to_strong": torch.stack([shift, torch.eye(3, dtype=torch.float64)]),
    }


def _fake_detect(images, features, proposal_mode="training"):
    """Teacher detections: one confident (0.95), two low-confidence (0.7, 0.6) boxes per image."""
    boxes = torch.tensor([[10.0, 10.0, 60.0, 50.0], [30.0, 40.0, 80.0, 90.0], [5.0, 50.0, 40.0, 90.0]])
    return [
        {"boxes": boxes.clone(), "scores": torch.tensor([0.95, 0.7, 0.6]), "labels": torch.tensor([1, 2, 3])}
        for _ in images.image_sizes
    ]


@pytest.mark.parametrize("mining_features", ["student", "teacher"])
def test_unsupervised_step_with_pseudo_labels(tiny_detector_cfg, monkeypatch, mining_features):
    torch.manual_seed(0)
    settings = mining_settings(mining_features, mine_score_thr=0.5, mining_candidate_iou=0.0)
    method = MixTeacher(MixedScaleFasterRCNN(3, tiny_detector_cfg), settings).train()
    monkeypatch.setattr(method.teacher, "detect", _fake_detect)
    loss, logs = method(_batch(), step=10)
    assert torch.isfinite(loss)
    assert logs["pseudo_boxes"] == 1.0  # only the 0.95 box passes the 0.9 classification threshold
    assert logs["reg_boxes"] == 3.0
    assert logs["mined"] > 0  # diff threshold -1 and IoU 0: every negative proposal near a low box is mined
    assert logs["unsup_weight"] == 4.0
    for key in ("rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box"):
        assert f"unsup_{key}" in logs and f"sup_{key}" in logs
    loss.backward()
    assert method.student.gate.fc1.weight.grad is not None and method.student.gate.fc1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher.parameters())


def test_burn_in_skips_the_unlabeled_branch(tiny_detector_cfg, monkeypatch):
    """Unsupervised weight 0: no teacher detection, no student pass on unlabeled images (released code)."""
    method = MixTeacher(MixedScaleFasterRCNN(3, tiny_detector_cfg), MixTeacherSettings(unsup_start=100)).train()

    def refuse(*args, **kwargs):
        raise AssertionError("the unlabeled branch ran during the burn-in")

    monkeypatch.setattr(method, "unsupervised_loss", refuse)
    loss, logs = method(_batch(), step=50)
    assert not any(k.startswith("unsup_") or k in ("pseudo_boxes", "mined") for k in logs)
    torch.testing.assert_close(
        loss.detach(), torch.tensor(sum(v for k, v in logs.items() if k.startswith("sup_"))), rtol=1e-5, atol=1e-5
    )
    monkeypatch.undo()
    monkeypatch.setattr(method.teacher, "detect", _fake_detect)
    _, logs = method(_batch(), step=101)  # after the burn-in the branch runs
    assert logs["unsup_weight"] > 0 and "pseudo_boxes" in logs


def test_supervised_method_trains_the_regular_scale_only(tiny_detector_cfg):
    method = MixTeacher(MixedScaleFasterRCNN(3, tiny_detector_cfg), method="supervised").train()
    loss, logs = method(_batch(), step=0)
    loss.backward()
    assert "unsup_weight" not in logs
    assert method.student.gate.fc1.weight.grad is None  # the mixed scale is not used


def test_settings_are_validated(tiny_detector_cfg):
    with pytest.raises(ValueError, match="train_scales"):
        MixTeacher(MixedScaleFasterRCNN(3, tiny_detector_cfg), MixTeacherSettings(train_scales=["tiny"]))
    with pytest.raises(ValueError, match="mining_features"):
        MixTeacher(MixedScaleFasterRCNN(3, tiny_detector_cfg), MixTeacherSettings(mining_features="both"))
