"""Promising label mining: score promotion on a constructed example, and mined positives in the R-CNN sample."""

import torch

from mixteacher.mining import score_promotion
from mixteacher.model import MixedScaleFasterRCNN


def test_score_promotion_promotes_exactly_delta_above_threshold():
    # five candidate proposals, two low-confidence pseudo boxes (classes 2 and 1)
    low_boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 70.0, 70.0]])
    low_labels = torch.tensor([2, 1])
    ref_boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # matches box 0 (IoU 1)
            [1.0, 0.0, 11.0, 10.0],  # matches box 0 (IoU 0.82)
            [50.0, 50.0, 70.0, 72.0],  # matches box 1 (IoU 0.91)
            [5.0, 5.0, 15.0, 15.0],  # IoU 0.14 with box 0: unmatched
            [51.0, 51.0, 69.0, 69.0],  # matches box 1 (IoU 0.81)
        ]
    )
    ref = torch.tensor([[0.5, 0.1, 0.4], [0.5, 0.1, 0.4], [0.4, 0.5, 0.1], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1]])
    tgt = torch.tensor([[0.2, 0.1, 0.7], [0.45, 0.1, 0.45], [0.32, 0.58, 0.1], [0.0, 0.0, 1.0], [0.2, 0.71, 0.09]])
    # delta of the matched class:   +0.3         +0.05              +0.08         (unmatched)    +0.11
    promoted, match = score_promotion(ref, tgt, ref_boxes, low_boxes, low_labels, diff_thr=0.1)
    assert promoted.tolist() == [True, False, False, False, True]
    assert match.tolist() == [0, 0, 1, -1, 1]
    promoted, _ = score_promotion(ref, tgt, ref_boxes, low_boxes, low_labels, diff_thr=0.0)
    assert promoted.tolist() == [True, True, True, False, True]
    empty, match = score_promotion(ref, tgt, ref_boxes, low_boxes[:0], low_labels[:0], diff_thr=0.0)
    assert not empty.any() and (match == -1).all()


def test_mined_proposals_become_positives_before_sampling(tiny_detector_cfg):
    model = MixedScaleFasterRCNN(3, tiny_detector_cfg)
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0], [60.0, 60.0, 90.0, 90.0]])
    gt_boxes, gt_labels = torch.tensor([[60.0, 60.0, 90.0, 90.0]]), torch.tensor([3])
    mined_box = torch.tensor([[31.0, 30.0, 41.0, 40.0]])
    sampled = model.sample_rois(
        [proposals],
        [gt_boxes],
        [gt_labels],
        mined=[(torch.tensor([1]), torch.tensor([2]), mined_box)],
        mined_as_proposals=False,
    )
    boxes = sampled.boxes[0]
    row = int(torch.where((boxes == proposals[1]).all(1))[0][0])
    assert sampled.labels[row] == 2 and sampled.mined[row]
    torch.testing.assert_close(sampled.matched_boxes[row], mined_box[0])
    row0 = int(torch.where((boxes == proposals[0]).all(1))[0][0])
    assert sampled.labels[row0] == 0 and not sampled.mined[row0]
    assert int(sampled.mined.sum()) == 1


def test_an_image_without_proposals_is_sampled_from_its_targets(tiny_detector_cfg):
    """The RPN can remove every proposal of an image (seen at paper size with random weights and bf16 on CUDA): the
    targets, added as proposals, are then the only positives, and the other image is unaffected."""
    model = MixedScaleFasterRCNN(3, tiny_detector_cfg)
    gt_boxes, gt_labels = torch.tensor([[60.0, 60.0, 90.0, 90.0]]), torch.tensor([3])
    proposals = [torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 10.0, 10.0], [61.0, 60.0, 90.0, 90.0]])]
    sampled = model.sample_rois(proposals, [gt_boxes, gt_boxes], [gt_labels, gt_labels])
    assert sampled.boxes[0].tolist() == gt_boxes.tolist()
    assert len(sampled.boxes[1]) == 3
    assert sampled.labels.tolist().count(3) == 3 and sampled.labels.tolist().count(0) == 1
