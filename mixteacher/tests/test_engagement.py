"""The mechanism engages and the hot path wastes nothing: a confident teacher keeps pseudo boxes through real
detection (RPN, R-CNN, NMS), the teacher uses the training proposal numbers, batched mining, mined boxes as
proposals, the supervised comparison's learning rate, the ImageNet MobileNetV2 backbone (README, Evidence)."""

from pathlib import Path

import pytest
import torch
from torch import nn

from mixteacher import train as mt_train
from mixteacher.mining import score_promotion
from mixteacher.mix_teacher import MiningInputs, MixTeacher, MixTeacherSettings
from mixteacher.model import MixedScaleFasterRCNN, create_model
from mixteacher.teacher import PseudoLabels
from mixteacher.tests.helpers import toy_batch
from shared.distributed import DistContext


def _confident(model: MixedScaleFasterRCNN, label: int = 1, logit: float = 8.0) -> MixedScaleFasterRCNN:
    """Every anchor is an object and every RoI is class ``label`` with probability ~0.999 (boxes unrefined)."""
    with torch.no_grad():
        for layer in (model.rpn.head.cls_logits, model.roi_heads.box_predictor.cls_score):
            layer.weight.zero_()
        model.rpn.head.cls_logits.bias.fill_(5.0)
        model.roi_heads.box_predictor.cls_score.bias.zero_()
        model.roi_heads.box_predictor.cls_score.bias[label] = logit
        model.roi_heads.box_predictor.bbox_pred.weight.zero_()
        model.roi_heads.box_predictor.bbox_pred.bias.zero_()
    return model


def test_a_confident_teacher_keeps_pseudo_boxes_after_the_burn_in(tiny_detector_cfg, monkeypatch):
    torch.manual_seed(0)
    settings = MixTeacherSettings(unsup_start=5, unsup_warmup=0, unsup_weight=2.0)
    method = MixTeacher(_confident(MixedScaleFasterRCNN(3, tiny_detector_cfg)), settings).train()
    calls = []
    detect = method.teacher.detect
    monkeypatch.setattr(method.teacher, "detect", lambda *a: calls.append(a[2]) or detect(*a))
    _, logs = method(toy_batch(), step=4)  # burn-in: nothing computed on the unlabeled images
    assert calls == [] and "pseudo_boxes" not in logs
    loss, logs = method(toy_batch(), step=5)
    assert calls == ["training"]  # the released teacher's RPN numbers (2000/1000 in the paper detector)
    assert logs["pseudo_boxes"] > 0  # real RPN + R-CNN + NMS detections above 0.9 kept per unlabeled image
    assert logs["unsup_weight"] == 2.0 and torch.isfinite(loss)
    loss.backward()
    assert method.student.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0


def test_msi_train_off_trains_the_labeled_images_at_the_regular_scale_only(tiny_detector_cfg, monkeypatch):
    torch.manual_seed(0)
    model = MixedScaleFasterRCNN(3, tiny_detector_cfg)
    batch = toy_batch()
    seen = []
    for msi_train, method in ((True, "mixteacher"), (False, "mixteacher"), (True, "supervised")):
        teacher = MixTeacher(model, MixTeacherSettings(unsup_start=5, msi_train=msi_train), method).train()
        monkeypatch.setattr(
            model,
            "extract_features",
            lambda images, scales, extract=model.extract_features: seen.append(list(scales)) or extract(images, scales),
        )
        torch.manual_seed(1)  # the RPN and R-CNN samplers draw the same positives and negatives in each run
        loss, _ = teacher(batch, step=0)
        monkeypatch.undo()
        seen[-1].append(float(loss.detach()))
    assert [s[:-1] for s in seen] == [["regular", "down", "mixed"], ["regular"], ["regular"]]
    assert seen[1][-1] == seen[2][-1]  # the burn-in step without msi_train is the supervised step
    assert seen[0][-1] != seen[1][-1]


def test_the_teacher_proposal_mode_switches_the_rpn_numbers(tiny_detector_cfg):
    model = MixedScaleFasterRCNN(3, tiny_detector_cfg).eval()
    cfg = tiny_detector_cfg
    assert (model.rpn.pre_nms_top_n(), model.rpn.post_nms_top_n()) == (
        cfg.rpn_pre_nms_top_n_test,
        cfg.rpn_post_nms_top_n_test,
    )
    model.rpn.proposal_mode = "training"
    assert (model.rpn.pre_nms_top_n(), model.rpn.post_nms_top_n()) == (
        cfg.rpn_pre_nms_top_n_train,
        cfg.rpn_post_nms_top_n_train,
    )
    images = model.preprocess([torch.rand(3, 96, 128)])[0]
    with pytest.raises(ValueError, match="proposal_mode"):
        model.detect(images, model.extract_features(images)["regular"][1], "both")


def test_mined_boxes_are_added_as_proposals(tiny_detector_cfg):
    torch.manual_seed(0)
    model = MixedScaleFasterRCNN(3, tiny_detector_cfg)
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 70.0, 70.0], [52.0, 50.0, 72.0, 70.0]])]
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    mined_box = torch.tensor([51.0, 50.0, 71.0, 70.0])
    mined = [(torch.tensor([1, 2]), torch.tensor([3, 3]), mined_box.expand(2, 4))]
    flipped = model.sample_rois(proposals, gt, [torch.tensor([1])], mined, mined_as_proposals=False)
    added = model.sample_rois(proposals, gt, [torch.tensor([1])], mined, mined_as_proposals=True)
    assert int(flipped.mined.sum()) == 2 and int(added.mined.sum()) == 3  # the mined box once, as a proposal
    boxes = torch.cat(added.boxes)
    assert any(torch.equal(b, mined_box) for b in boxes)
    assert (added.labels[added.mined] == 3).all()


def test_batched_mining_equals_the_per_image_rule(tiny_detector_cfg):
    """One batched head pass on the candidates that overlap a low-confidence box gives the released per-image
    rule's result (every negative through the head, then the IoU match) when the candidates' IoU filter is 0."""
    torch.manual_seed(0)
    settings = MixTeacherSettings(mining_diff_thr=-0.01, mining_iou_thr=0.3, mining_candidate_iou=0.0)
    method = MixTeacher(MixedScaleFasterRCNN(3, tiny_detector_cfg), settings)
    batch = toy_batch(2)
    strong = method.student.preprocess(batch["strong_images"])[0]
    feats = method.student.extract_features(strong, ["regular", "mixed"])
    g = torch.Generator().manual_seed(1)
    proposals = [torch.rand(40, 2, generator=g) * 60 for _ in range(2)]
    proposals = [torch.cat([p, p + 10 + torch.rand(40, 2, generator=g) * 30], dim=1) for p in proposals]
    low = [
        PseudoLabels(torch.tensor([[20.0, 20.0, 50.0, 55.0]]), torch.tensor([2]), torch.tensor([0.7]), torch.zeros(1)),
        PseudoLabels(torch.tensor([[5.0, 30.0, 40.0, 70.0]]), torch.tensor([1]), torch.tensor([0.6]), torch.zeros(1)),
    ]
    cls_boxes = [torch.tensor([[60.0, 60.0, 90.0, 90.0]]), torch.zeros(0, 4)]
    cls_labels = [torch.tensor([1]), torch.zeros(0, dtype=torch.int64)]
    inputs = MiningInputs(low, [p.boxes for p in low], strong, strong, feats, {})
    mined, count = method._mine(proposals, cls_boxes, cls_labels, inputs, torch.eye(3)[None])
    expected = 0
    for i, props in enumerate(proposals):
        assigned, _ = method.student.assign(props, cls_boxes[i], cls_labels[i])
        cand = torch.where(assigned == 0)[0]
        one = {k: v[i : i + 1] for k, v in feats["regular"][1].items()}
        ref_probs, ref_dec = method.teacher.roi_predict(one, [props[cand]], [strong.image_sizes[i]])
        tgt_probs, _ = method.teacher.roi_predict(
            {k: v[i : i + 1] for k, v in feats["mixed"][1].items()}, [props[cand]], [strong.image_sizes[i]]
        )
        ref_boxes = ref_dec[torch.arange(len(cand)), ref_probs[:, 1:].argmax(1) + 1]
        promoted, _ = score_promotion(ref_probs, tgt_probs, ref_boxes, low[i].boxes, low[i].labels, -0.01, 0.3)
        assert torch.equal(mined[i][0], cand[promoted])
        expected += int(promoted.sum())
    assert count == expected > 0


def test_the_supervised_comparison_trains_at_the_same_lr(tmp_path):
    cfg = mt_train.parse_args(["--output_dir", str(tmp_path)])
    sup = mt_train._supervised_config(cfg, tmp_path)
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    model = nn.Linear(1, 1)

    def lr(c):
        method = type("M", (), {"student": model})()
        return mt_train.build_optimizer(c, method, ctx)[0].param_groups[0]["initial_lr"]

    assert sup.data.batch_size < cfg.data.batch_size
    assert lr(sup) == pytest.approx(lr(cfg))


def test_the_mobilenet_backbone_is_torchvisions_imagenet_model():
    from shared.pretrained import imagenet_mobilenet_v2

    model = create_model(
        "tiny", num_classes=3, pretrained_backbone="imagenet", backbone="mobilenet_v2", frozen_stages=1
    )
    reference = imagenet_mobilenet_v2().features
    body = model.backbone.body
    for name, tensor in body.state_dict().items():
        assert torch.equal(tensor, reference.state_dict()[name]), name
    assert not any(p.requires_grad for p in body["0"].parameters())  # frozen_stages 1: stem .. first level
    assert all(p.requires_grad for p in body["17"].parameters())
    with pytest.raises(FileNotFoundError):
        create_model("tiny", num_classes=3, pretrained_backbone=str(Path("missing.pth")), backbone="mobilenet_v2")
