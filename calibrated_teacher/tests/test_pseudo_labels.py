"""The merge rules on constructed boxes: size, the four exclusion rules, the thresholds (README, Method)."""

import torch

from calibrated_teacher.pseudo_labels import MergeRules, box_iof, merge_pseudo_boxes, overlaps_annotation

GT = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
GT_LABEL = torch.tensor([1])


def _merge(box, label, score=0.9, calibrated=None):
    boxes, labels, kept, _candidate = merge_pseudo_boxes(
        GT, GT_LABEL, torch.tensor([box]), torch.tensor([label]), torch.tensor([score]), calibrated
    )
    return bool(kept[0]), boxes, labels


def test_box_iof_against_hand_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 25.0, 10.0]])
    assert box_iof(a, b).item() == 0.5  # 50 / 100
    assert box_iof(b, a).item() == 0.25  # 50 / 200


def test_a_far_away_box_is_merged_as_a_hard_target():
    kept, boxes, labels = _merge([200.0, 200.0, 260.0, 260.0], 2)
    assert kept and boxes.tolist()[-1] == [200.0, 200.0, 260.0, 260.0] and labels.tolist() == [1, 2]


def test_size_rule_needs_both_sides_above_10_px():
    assert not _merge([200.0, 200.0, 210.0, 260.0], 2)[0]  # width exactly 10
    assert not _merge([200.0, 200.0, 260.0, 209.0], 2)[0]
    assert _merge([200.0, 200.0, 210.5, 210.5], 2)[0]


def test_rule_a_same_class_iou_above_0_6():
    # IoU with GT: 100*70 / (100*100) = 0.7 for [0,0,100,70]; IoF(d in g) = 1 would also fire, so shift it out
    box = [0.0, 30.0, 100.0, 130.0]  # IoU = 70*100 / (100*100 + 100*100 - 7000) = 0.538
    assert _merge(box, 1)[0]
    box = [0.0, 20.0, 100.0, 120.0]  # IoU = 8000 / 12000 = 0.667 > 0.6, IoF 0.8 both ways
    assert not _merge(box, 1)[0]
    assert _merge(box, 2)[0]  # other class: only rule b (0.75) applies


def test_rule_b_any_class_iou_above_0_75():
    box = [0.0, 10.0, 100.0, 110.0]  # IoU = 9000 / 11000 = 0.818
    assert not _merge(box, 2)[0]
    box = [0.0, 15.0, 100.0, 115.0]  # IoU = 8500 / 11500 = 0.739
    assert _merge(box, 2)[0]


def test_rule_c_gt_inside_detection_same_class():
    box = [-5.0, -5.0, 150.0, 150.0]  # contains the GT: IoF(g in d) = 1, IoU = 10000 / 24025 = 0.42
    assert not _merge(box, 1)[0]
    assert _merge(box, 2)[0]


def test_rule_d_detection_inside_gt_same_class():
    box = [10.0, 10.0, 40.0, 40.0]  # inside the GT: IoF(d in g) = 1, IoU 0.09
    assert not _merge(box, 1)[0]
    assert _merge(box, 2)[0]


def test_iof_just_below_0_9_does_not_exclude():
    assert _merge([-9.0, 0.0, 51.0, 100.0], 1)[0]  # IoF(d in g) = 5100 / 6000 = 0.85, IoU 0.47
    assert not _merge([-5.0, 0.0, 51.0, 100.0], 1)[0]  # IoF(d in g) = 5100 / 5600 = 0.91


def test_raw_threshold_then_calibrated_threshold():
    box = [200.0, 200.0, 260.0, 260.0]
    assert not _merge(box, 2, score=0.39)[0]
    assert _merge(box, 2, score=0.45)[0]
    assert not _merge(box, 2, score=0.95, calibrated=torch.tensor([0.69]))[0]
    assert _merge(box, 2, score=0.45, calibrated=torch.tensor([0.7]))[0]


def test_overlaps_annotation_without_annotations_is_false():
    assert overlaps_annotation(
        GT, GT_LABEL, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 0.6, 0.75, 0.9
    ).tolist() == [False]


def test_merge_is_vectorised_over_many_detections():
    det = torch.tensor([[200.0, 200.0, 260.0, 260.0], [10.0, 10.0, 40.0, 40.0], [0.0, 10.0, 100.0, 110.0]])
    _, _, kept, candidate = merge_pseudo_boxes(
        GT, GT_LABEL, det, torch.tensor([2, 1, 2]), torch.tensor([0.9, 0.9, 0.9]), None, MergeRules()
    )
    assert kept.tolist() == [True, False, False] and candidate.tolist() == [True, False, False]
