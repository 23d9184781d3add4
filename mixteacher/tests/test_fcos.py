"""MixTeacher-FCOS: the fused P3-P7 pyramid (shapes, strides, the sheet's level pairing), torchvision FCOS key
compatibility, the FCOS assignment and losses against torchvision's own, the losses on a hand-built example, pseudo
boxes from a constructed confident head, box-level score promotion, the embedded run and exact resume (README,
MixTeacher-FCOS)."""

import pytest
import torch
from torchvision.models.detection import fcos_resnet50_fpn
from torchvision.models.detection.image_list import ImageList

from mixteacher import eval as mt_eval
from mixteacher import train as mt_train
from mixteacher import visualize as mt_visualize
from mixteacher.fcos import DenseOutputs, fcos_losses, fcos_match
from mixteacher.mining import dense_score_promotion
from mixteacher.mix_teacher import MixTeacher, MixTeacherSettings
from mixteacher.model import MixedScaleFasterRCNN, MixedScaleFCOS, create_model, detector_config
from mixteacher.tests.helpers import toy_batch
from shared.checkpoint import load_checkpoint
from shared.testing import assert_same_tensors


@pytest.fixture
def fcos() -> MixedScaleFCOS:
    torch.manual_seed(0)
    return create_model("fcos_tiny", num_classes=3)


def test_fused_pyramid_levels_strides_and_pairing(fcos, monkeypatch):
    images, _ = fcos.preprocess([torch.rand(3, 200, 260), torch.rand(3, 190, 250)])
    feats = fcos.extract_features(images, ["regular", "down", "mixed"])
    (_, regular), (small, down), (_, mixed) = feats["regular"], feats["down"], feats["mixed"]
    assert list(regular) == list(mixed) == ["0", "1", "2", "p6", "p7"]  # P3..P7
    assert images.tensors.shape[-2:] == (224, 288) and small.tensors.shape[-2:] == (128, 160)
    assert [tuple(f.shape[-2:]) for f in regular.values()] == [
        (-(-224 // s), -(-288 // s)) for s in (8, 16, 32, 64, 128)
    ]
    assert [tuple(f.shape[-2:]) for f in mixed.values()] == [tuple(f.shape[-2:]) for f in regular.values()]
    assert torch.equal(mixed["0"], regular["0"])  # P3x = P3+
    # Pix = w+ Pi+ + w- crop(P(i-1)-): P3- pairs with P4+, ..., P6- with P7+ (P7- unused)
    pairs = []
    gate = fcos.gate.forward
    monkeypatch.setattr(fcos.gate, "forward", lambda r, d: pairs.append((r.shape, d.shape)) or gate(r, d))
    fcos.extract_features(images, ["mixed"])
    assert len(pairs) == 4 and all(r == d for r, d in pairs)
    weights = gate(regular["1"], down["0"][..., :14, :18])
    expected = (
        weights[:, 0, None, None, None] * regular["1"] + weights[:, 1, None, None, None] * down["0"][..., :14, :18]
    )
    assert torch.allclose(mixed["1"], expected, atol=1e-6)
    # head outputs: one point per location of the five levels, K sigmoid classes, points at the level strides
    out = fcos.head_outputs(images, mixed)
    assert out.points_per_level == [28 * 36, 14 * 18, 7 * 9, 4 * 5, 2 * 3]
    assert out.cls_logits.shape == (2, sum(out.points_per_level), 3) and out.bbox_regression.shape[-1] == 4
    sizes = (out.anchors[:, 2] - out.anchors[:, 0]).split(out.points_per_level)
    assert [float(s.unique()) for s in sizes] == [8, 16, 32, 64, 128]


def test_fcos_r50_is_key_compatible_with_torchvision_fcos():
    ours = create_model("fcos_r50", num_classes=80).state_dict()
    theirs = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=80).state_dict()
    theirs = {k: v for k, v in theirs.items() if not k.endswith(("num_batches_tracked",))}
    missing = [k for k in theirs if k not in ours]
    assert missing == []  # torchvision's COCO FCOS checkpoint loads into the student (frozen BN: same buffers)
    assert all(ours[k].shape == v.shape for k, v in theirs.items())
    assert sorted(set(ours) - set(theirs)) == ["gate.fc1.weight", "gate.fc2.weight"]


def test_architecture_is_checked():
    with pytest.raises(ValueError, match="architecture 'fcos'"):
        MixedScaleFCOS(3, detector_config("tiny"))
    with pytest.raises(ValueError, match="architecture 'faster_rcnn'"):
        MixedScaleFasterRCNN(3, detector_config("fcos_tiny"))
    with pytest.raises(ValueError, match="five strides"):
        MixedScaleFCOS(3, detector_config("fcos_tiny", anchor_sizes=(8, 16, 32)))


def _random_outputs(fcos, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = ImageList(torch.zeros(n, 3, 128, 160), [(128, 160)] * n)
    levels = [torch.zeros(n, 64, 128 // s, 160 // s) for s in (8, 16, 32, 64, 128)]
    anchors = fcos.anchor_generator(images, levels)[0]
    p = anchors.shape[0]
    outputs = DenseOutputs(
        torch.randn(n, p, 3, generator=g),
        torch.randn(n, p, 4, generator=g) * 0.3,
        torch.randn(n, p, generator=g),
        anchors,
        [f.shape[-2] * f.shape[-1] for f in levels],
    )
    return images, anchors, outputs


def test_fcos_losses_equal_torchvision_fcos(fcos):
    """Assignment and the three losses against torchvision's own FCOS.compute_loss (labels shifted by one)."""
    from torchvision.models.detection.fcos import FCOS

    _, anchors, outputs = _random_outputs(fcos)
    boxes = [torch.tensor([[10.0, 12.0, 70.0, 60.0], [60.0, 40.0, 150.0, 120.0], [5.0, 90.0, 25.0, 110.0]]),
             torch.tensor([[30.0, 20.0, 90.0, 100.0]])]  # fmt: skip
    labels = [torch.tensor([1, 3, 2]), torch.tensor([2])]
    ours = fcos_losses(outputs, boxes, labels)
    reference = FCOS(fcos.backbone, num_classes=3, anchor_generator=fcos.anchor_generator, head=fcos.head)
    theirs = reference.compute_loss(
        [{"boxes": b, "labels": lab - 1} for b, lab in zip(boxes, labels)],
        {"cls_logits": outputs.cls_logits, "bbox_regression": outputs.bbox_regression,
         "bbox_ctrness": outputs.ctrness[..., None]},
        [anchors, anchors],
        outputs.points_per_level,
    )  # fmt: skip
    for a, b in (("fcos_cls", "classification"), ("fcos_box", "bbox_regression"), ("fcos_ctr", "bbox_ctrness")):
        assert torch.allclose(ours[a], theirs[b], rtol=1e-5), (a, ours[a], theirs[b])
    assert (fcos_match(anchors, outputs.points_per_level, boxes) >= 0).sum() > 10


def test_fcos_losses_on_a_hand_built_example(fcos):
    """One box, perfect regression and centerness logits at +-inf-like values: the box loss is 0, the
    classification loss is the focal loss of the class logits alone, computed here by hand."""
    _, anchors, outputs = _random_outputs(fcos, n=1)
    box = torch.tensor([[40.0, 40.0, 88.0, 72.0]])
    matched = fcos_match(anchors, outputs.points_per_level, [box])[0]
    pos = torch.where(matched >= 0)[0]
    # by hand: P3 points (stride 8) inside the box, within 12 px of its centre (64, 56), max side distance <= 64
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    expected = torch.where(
        (anchors[:, 2] - anchors[:, 0] == 8)
        & ((centres - torch.tensor([64.0, 56.0])).abs().amax(1) < 12)
        & (centres > box[0, :2]).all(1)
        & (centres < box[0, 2:]).all(1)
    )[0]
    assert torch.equal(pos, expected) and len(pos) == 9
    ltrb = torch.cat([centres[pos] - box[0, :2], box[0, 2:] - centres[pos]], 1) / 8  # stride-normalised
    outputs.bbox_regression[0, pos] = ltrb
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ctr = torch.sqrt((lr.min(1).values / lr.max(1).values) * (tb.min(1).values / tb.max(1).values))
    outputs.ctrness[0, pos] = torch.logit(ctr.clamp(1e-6, 1 - 1e-6))
    losses = fcos_losses(outputs, [box], [torch.tensor([2])])
    assert losses["fcos_box"].abs() < 1e-5
    bce_ctr = torch.nn.functional.binary_cross_entropy(ctr, ctr, reduction="sum") / len(pos)
    assert torch.allclose(losses["fcos_ctr"], bce_ctr, atol=1e-4)
    p = outputs.cls_logits.sigmoid()
    target = torch.zeros_like(p)
    target[0, pos, 1] = 1.0
    p_t = p * target + (1 - p) * (1 - target)
    alpha = 0.25 * target + 0.75 * (1 - target)
    focal = -(alpha * (1 - p_t) ** 2 * torch.log(p_t)).sum() / len(pos)
    assert torch.allclose(losses["fcos_cls"], focal, rtol=1e-5)
    # a classification-only box adds positives to the classification loss only (all divided by all positives)
    other = torch.tensor([[100.0, 90.0, 140.0, 120.0]])
    extra = fcos_losses(outputs, [box], [torch.tensor([2])], 1.5, [other], [torch.tensor([1])])
    n_all = int((fcos_match(anchors, outputs.points_per_level, [torch.cat([box, other])])[0] >= 0).sum())
    assert n_all > len(pos)
    assert torch.allclose(extra["fcos_ctr"] * n_all, losses["fcos_ctr"] * len(pos), rtol=1e-5)
    target[0, (fcos_match(anchors, outputs.points_per_level, [other])[0] >= 0), 0] = 1.0
    p_t = p * target + (1 - p) * (1 - target)
    alpha = 0.25 * target + 0.75 * (1 - target)
    assert torch.allclose(extra["fcos_cls"], -(alpha * (1 - p_t) ** 2 * torch.log(p_t)).sum() / n_all, rtol=1e-5)


def _confident_fcos(model: MixedScaleFCOS, label: int = 1) -> MixedScaleFCOS:
    """Every point says class ``label`` with score ~0.99 and a box of twice its stride centred on it."""
    with torch.no_grad():
        cls = model.head.classification_head.cls_logits
        cls.weight.zero_()
        cls.bias.fill_(-8.0)
        cls.bias[label - 1] = 8.0
        reg = model.head.regression_head
        for layer in (reg.bbox_reg, reg.bbox_ctrness):
            layer.weight.zero_()
        reg.bbox_reg.bias.fill_(1.0)
        reg.bbox_ctrness.bias.fill_(8.0)
    return model


def test_a_confident_fcos_teacher_keeps_pseudo_boxes_and_trains_the_student(fcos, monkeypatch):
    settings = MixTeacherSettings(unsup_start=5, unsup_warmup=0, unsup_weight=2.0, cls_score_thr=0.9)
    method = MixTeacher(_confident_fcos(fcos), settings).train()
    assert method.dense
    calls = []
    detect = method.teacher.detect
    monkeypatch.setattr(method.teacher, "detect", lambda *a: calls.append(1) or detect(*a))
    _, logs = method(toy_batch(), step=4)  # burn-in: the unlabeled branch is skipped
    assert calls == [] and "pseudo_boxes" not in logs and logs["sup_fcos_cls"] > 0
    loss, logs = method(toy_batch(), step=5)
    assert calls == [1]  # one teacher detection (mixed scale) per step
    assert logs["pseudo_boxes"] > 0 and logs["unsup_fcos_box"] > 0 and logs["unsup_fcos_ctr"] > 0
    assert torch.isfinite(loss)
    loss.backward()
    assert method.student.head.regression_head.bbox_reg.weight.grad.abs().sum() > 0
    assert method.student.head.classification_head.cls_logits.weight.grad.abs().sum() > 0


def test_fcos_pseudo_labels_come_from_the_mixed_teacher(fcos):
    method = MixTeacher(_confident_fcos(fcos), MixTeacherSettings(initial_score_thr=0.5))
    pseudo, _, feats = method.pseudo_label(toy_batch()["weak_images"])
    assert set(feats) == {"mixed"} and all(len(p) > 0 for p in pseudo)
    assert all(bool((p.scores >= 0.5).all()) and bool((p.labels == 1).all()) for p in pseudo)
    assert all(bool((p.uncertainty == 0).all()) for p in pseudo)  # no box-jitter filter without an R-CNN head


def test_dense_score_promotion_on_hand_built_scores(fcos):
    _, anchors, ref = _random_outputs(fcos, n=2)
    tgt = DenseOutputs(ref.cls_logits.clone(), ref.bbox_regression, ref.ctrness, anchors, ref.points_per_level)
    boxes = [
        torch.tensor([[8.0, 8.0, 56.0, 48.0], [90.0, 60.0, 150.0, 120.0]]),
        torch.tensor([[30.0, 30.0, 80.0, 90.0]]),
    ]
    labels = [torch.tensor([2, 3]), torch.tensor([1])]
    matched = fcos_match(anchors, ref.points_per_level, boxes)
    ref.cls_logits.zero_()
    tgt.cls_logits.zero_()
    tgt.cls_logits[0, matched[0] == 0, 1] = 1.0  # box 0 of image 0: p 0.5 -> 0.73 on its class
    tgt.cls_logits[0, matched[0] == 1, 0] = 3.0  # box 1: another class rises, its own (3) does not
    tgt.cls_logits[1, matched[1] == 0, 0] = 0.2  # image 1: +0.05, below the threshold
    promoted = dense_score_promotion(ref, tgt, boxes, labels, diff_thr=0.1)
    assert [p.tolist() for p in promoted] == [[True, False], [False]]
    assert [p.tolist() for p in dense_score_promotion(ref, tgt, boxes, labels, diff_thr=0.04)] == [
        [True, False],
        [True],
    ]
    none = dense_score_promotion(
        ref, tgt, [torch.zeros(0, 4), torch.zeros(0, 4)], [torch.zeros(0), torch.zeros(0)], 0.1
    )
    assert [len(p) for p in none] == [0, 0]


def test_fcos_mining_promotes_low_confidence_boxes_into_the_classification_loss(fcos, monkeypatch):
    settings = MixTeacherSettings(
        unsup_start=0, unsup_warmup=0, cls_score_thr=0.9999, mine_score_thr=0.5, mining_diff_thr=-1.0,
        mining_features="teacher",
    )  # fmt: skip
    method = MixTeacher(_confident_fcos(fcos), settings).train()
    seen = []
    losses = method.student.supervised_losses
    monkeypatch.setattr(
        method.student, "supervised_losses", lambda *a: seen.append(a[4] if len(a) > 4 else None) or losses(*a)
    )
    _, logs = method(toy_batch(), step=1)
    assert logs["mined"] > 0 and logs["pseudo_boxes"] == 0  # every box is low-confidence, all promoted (thr -1)
    # labeled: 3 scales without extra targets; unlabeled: regular with the mined boxes, down and mixed without
    assert [s is None for s in seen] == [True, True, True, False, True, True]
    assert sum(len(b) for b in seen[3]) == logs["mined"] * 2


FCOS_TINY = [
    "-c", "mixteacher/configs/fcos_default.yaml", "--data.synthetic_train", "20", "--data.synthetic_val", "4",
    "--data.percent", "20", "--data.workers", "0", "--detector.fpn_channels", "64", "--detector.fcos_num_convs", "1",
    "--data.train_short_range", "96", "128", "--data.weak_short_range", "96", "128", "--data.max_size", "160",
    "--detector.min_size", "128", "--detector.max_size", "160", "--no-tensorboard", "--log_interval", "1",
    "--mixteacher.unsup_start", "1", "--mixteacher.unsup_warmup", "0", "--mixteacher.cls_score_thr", "0.1",
    "--mixteacher.initial_score_thr", "0.05", "--mixteacher.mine_score_thr", "0.05", "--no-compare_supervised",
]  # fmt: skip


def test_fcos_embedded_run_trains_evaluates_and_draws(tmp_path):
    out = tmp_path / "run"
    metrics = mt_train.main(mt_train.parse_args(["--output_dir", str(out), "--max_iters", "2", *FCOS_TINY]))
    state = load_checkpoint(out / "last.pt")
    assert state["config"]["detector"]["architecture"] == "fcos" and state["step"] == 2
    assert "head.classification_head.cls_logits.weight" in state["student"]
    log = (out / "train.log").read_text()
    assert "unsup_fcos_cls" in log and "pseudo_boxes" in log  # the unlabeled branch ran after the 1-step burn-in
    assert {"teacher_regular", "teacher_mixed", "student_regular"} <= set(metrics) and 0 <= metrics["AP"] <= 1
    drawn = mt_visualize.main(mt_visualize.parse_args(["--checkpoint", str(out / "last.pt"), "--num_images", "1"]))
    assert [p.name for p in drawn] == ["predictions_0.png", "pseudo_labels_0.png"]
    evaluated = mt_eval.main(mt_eval.parse_args(["--checkpoint", str(out / "last.pt")]))
    assert evaluated["teacher_regular"]["AP"] == pytest.approx(metrics["teacher_regular"]["AP"], abs=1e-9)


@pytest.mark.slow
def test_fcos_resumed_run_equals_uninterrupted(tmp_path):
    common = ["--eval_interval", "4", *FCOS_TINY]
    mt_train.main(mt_train.parse_args(["--output_dir", str(tmp_path / "full"), "--checkpoint_interval", "4",
                                       "--max_iters", "4", *common]))  # fmt: skip
    part = ["--output_dir", str(tmp_path / "part"), "--checkpoint_interval", "2", *common]
    mt_train.main(mt_train.parse_args([*part, "--max_iters", "2"]))
    mt_train.main(mt_train.parse_args([*part, "--max_iters", "4", "--resume", str(tmp_path / "part" / "last.pt")]))
    full, resumed = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    for key in ("student", "teacher", "optimizer", "scheduler", "step", "rng"):  # bit for bit
        assert_same_tensors(full[key], resumed[key], key)


def test_regress_ranges_move_boxes_between_levels(fcos):
    _, anchors, outputs = _random_outputs(fcos, n=1)
    box = [torch.tensor([[40.0, 40.0, 88.0, 72.0]])]  # 48 x 32: max(l, t, r, b) of its points <= 36
    sizes = anchors[:, 2] - anchors[:, 0]
    default = fcos_match(anchors, outputs.points_per_level, box)[0] >= 0
    quarter = fcos_match(anchors, outputs.points_per_level, box, 1.5, (16.0, 32.0, 64.0, 128.0))[0] >= 0
    assert set(sizes[default].tolist()) == {8.0}  # torchvision's ranges: below 64, P3
    assert set(sizes[quarter].tolist()) == {16.0}  # boundaries / 4: its P4 points (within 24 px of the centre) fit
    with pytest.raises(ValueError, match="regress_ranges"):
        fcos_match(anchors, outputs.points_per_level, box, 1.5, (16.0, 32.0))
