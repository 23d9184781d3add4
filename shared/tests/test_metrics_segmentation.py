"""Segmentation metrics against a brute-force per-pixel confusion matrix and hand-computed values."""

import math

import numpy as np
import pytest
import torch

from shared.metrics import confusion_matrix, segmentation_metrics


def brute_force(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int) -> dict:
    """One pixel at a time: the confusion matrix, then mmseg's formulas class by class in plain Python."""
    conf = [[0] * num_classes for _ in range(num_classes)]
    for p, t in zip(pred.ravel().tolist(), target.ravel().tolist()):
        if t != ignore:
            conf[t][p] += 1
    ious, accs = [], []
    for c in range(num_classes):
        tp = conf[c][c]
        fn = sum(conf[c]) - tp
        fp = sum(conf[r][c] for r in range(num_classes)) - tp
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
        accs.append(tp / (tp + fn) if tp + fn else math.nan)
    total = sum(map(sum, conf))
    defined = [v for v in ious if not math.isnan(v)], [v for v in accs if not math.isnan(v)]
    return {
        "confusion": conf,
        "aAcc": sum(conf[c][c] for c in range(num_classes)) / total,
        "mIoU": sum(defined[0]) / len(defined[0]),
        "mAcc": sum(defined[1]) / len(defined[1]),
        "IoU": ious,
        "Acc": accs,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_the_brute_force_reference_with_ignored_pixels(seed):
    rng = np.random.default_rng(seed)
    num_classes, ignore = 7, 255
    target = rng.integers(0, num_classes, size=(3, 17, 23))
    target[rng.random(target.shape) < 0.2] = ignore  # ignored pixels
    target[target == 5] = 6  # class 5 absent from the labels: its Acc is undefined
    pred = np.where(
        rng.random(target.shape) < 0.6, np.where(target == ignore, 0, target), rng.integers(0, 7, target.shape)
    )
    pred[pred == 4] = 3  # class 4 never predicted
    ref = brute_force(pred, target, num_classes, ignore)
    conf = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), num_classes, ignore_index=ignore)
    assert conf.tolist() == ref["confusion"]
    got = segmentation_metrics(conf)
    for key in ("aAcc", "mIoU", "mAcc"):
        assert got[key] == pytest.approx(ref[key], rel=1e-12)
    np.testing.assert_allclose(got["IoU"], ref["IoU"], rtol=1e-12)  # NaN where the reference has NaN
    np.testing.assert_allclose(got["Acc"], ref["Acc"], rtol=1e-12)
    assert math.isnan(got["Acc"][5]) and not math.isnan(got["IoU"][5])  # predicted but never labelled: IoU 0


def test_confusion_matrices_of_batches_add_up_and_numpy_inputs_work():
    rng = np.random.default_rng(3)
    pred, target = rng.integers(0, 4, (2, 8, 8)), rng.integers(0, 4, (2, 8, 8))
    whole = confusion_matrix(pred, target, 4)
    parts = confusion_matrix(pred[:1], target[:1], 4) + confusion_matrix(pred[1:], target[1:], 4)
    assert torch.equal(whole, parts) and whole.sum() == 128


def test_hand_computed_example():
    target = torch.tensor([[0, 0, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 0]])
    got = segmentation_metrics(confusion_matrix(pred, target, 2))
    # class 0: TP 1, FN 1, FP 0 -> IoU 1/2, Acc 1/2; class 1: TP 1, FP 1 -> IoU 1/2, Acc 1
    assert got["IoU"] == [0.5, 0.5] and got["Acc"] == [0.5, 1.0]
    assert got["aAcc"] == pytest.approx(2 / 3) and got["mIoU"] == 0.5 and got["mAcc"] == 0.75


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="label 7"):
        confusion_matrix(torch.zeros(2, dtype=torch.long), torch.tensor([0, 7]), 3)
    with pytest.raises(ValueError, match="predicted class 3"):
        confusion_matrix(torch.tensor([0, 3]), torch.zeros(2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(torch.zeros(2), torch.zeros(2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="square"):
        segmentation_metrics(torch.zeros(2, 3))
