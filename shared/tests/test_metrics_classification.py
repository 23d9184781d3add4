"""top-k accuracy against a brute-force loop and hand-made cases."""

import numpy as np
import pytest
import torch

from shared.metrics import topk_accuracy


def brute_force_topk(logits: np.ndarray, targets: np.ndarray, k: int) -> float:
    hits = 0
    for row, target in zip(logits, targets):
        # Rank of the target = number of classes with a strictly larger logit (continuous logits: no ties).
        rank = sum(1 for value in row if value > row[target])
        hits += rank < k
    return 100.0 * hits / len(targets)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_matches_brute_force(as_tensor):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 10))
    targets = rng.integers(0, 10, size=300)
    expected = [brute_force_topk(logits, targets, k) for k in (1, 3, 5)]
    if as_tensor:
        logits, targets = torch.from_numpy(logits).float(), torch.from_numpy(targets)
    assert topk_accuracy(logits, targets, topk=(1, 3, 5)) == pytest.approx(expected, abs=1e-9)


def test_hand_made():
    logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [0.2, 0.3, 0.5], [0.9, 0.04, 0.06]])
    targets = torch.tensor([1, 2, 0, 1])
    # Target ranks: 1, 2, 3, 3 -> top-1 25 %, top-2 50 %, top-3 100 %.
    assert topk_accuracy(logits, targets, topk=(1, 2, 3)) == [25.0, 50.0, 100.0]


def test_k_larger_than_classes_is_clamped():
    logits = torch.randn(8, 4)
    targets = torch.randint(0, 4, (8,))
    assert topk_accuracy(logits, targets, topk=(4, 5, 100)) == [100.0, 100.0, 100.0]


def test_soft_and_one_hot_targets_use_argmax():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(200, 7))
    targets = rng.integers(0, 7, size=200)
    one_hot = np.eye(7)[targets]
    soft = 0.6 * one_hot + 0.4 * rng.dirichlet(np.ones(7) * 0.1, size=200) * 0.5  # argmax stays the target
    assert (soft.argmax(1) == targets).all()
    expected = topk_accuracy(logits, targets)
    assert topk_accuracy(logits, one_hot) == expected
    assert topk_accuracy(torch.from_numpy(logits), torch.from_numpy(soft)) == expected


def test_invalid_inputs_raise():
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        topk_accuracy(torch.randn(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must be"):
        topk_accuracy(logits, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="soft targets"):
        topk_accuracy(logits, torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        topk_accuracy(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="integers"):
        topk_accuracy(logits, torch.tensor([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="at least 1"):
        topk_accuracy(logits, torch.tensor([0, 1, 2, 1]), topk=(0,))
