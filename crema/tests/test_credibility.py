"""CREMA's mechanisms against hand-computed values and scikit-learn (README, Method)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from crema.credibility import (
    CredibilityMemory,
    coarse_split,
    credibility,
    js_divergence,
    modulation_weights,
    selective_label_update,
)
from crema.losses import CLEAN, REST, UPDATED, crema_loss


def test_js_credibility_matches_a_hand_computed_value():
    # p = (0.7, 0.2, 0.1), y = 0: m = (0.85, 0.1, 0.05);
    # KL(p||m) = 0.7 ln(0.7/0.85) + 0.3 ln 2 = 0.0720349, KL(e_0||m) = ln(1/0.85) = 0.1625189,
    # JS = (0.0720349 + 0.1625189) / 2 = 0.1172769, credibility = 1 - JS / ln 2 = 0.8308051.
    probs = torch.tensor([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    c = credibility(probs, torch.tensor([0, 0, 0]), "js")
    assert c[0].item() == pytest.approx(0.8308051, abs=1e-6)
    assert c[1].item() == pytest.approx(1.0)  # the prediction is the label
    assert c[2].item() == pytest.approx(0.0, abs=1e-12)  # disjoint supports: JS = ln 2


def test_js_divergence_is_symmetric_and_bounded():
    p = torch.softmax(torch.randn(50, 7, generator=torch.Generator().manual_seed(0)), 1)
    q = torch.softmax(torch.randn(50, 7, generator=torch.Generator().manual_seed(1)), 1)
    assert torch.allclose(js_divergence(p, q), js_divergence(q, p))
    assert (js_divergence(p, q) >= 0).all() and (js_divergence(p, q) <= math.log(2) + 1e-7).all()


def test_other_credibilities():
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 0])
    assert torch.allclose(credibility(probs, labels, "prob"), torch.tensor([0.5, 0.9, 0.2]))
    loss = -torch.tensor([0.5, 0.9, 0.2]).log()
    expected = 1 - (loss - loss.min()) / (loss.max() - loss.min())
    assert torch.allclose(credibility(probs, labels, "loss"), expected)
    same = credibility(probs, labels, "agreement", probs)  # identical views: mean p[y] x 1
    assert torch.allclose(same, torch.tensor([0.5, 0.9, 0.2]))
    with pytest.raises(ValueError, match="second view"):
        credibility(probs, labels, "agreement")
    with pytest.raises(ValueError, match="unknown credibility"):
        credibility(probs, labels, "entropy")


def test_ring_buffer_holds_exactly_the_last_k_values_after_k_plus_2_epochs():
    k, n = 4, 3
    memory = CredibilityMemory(n, k)
    for epoch in range(k + 2):
        values = torch.tensor([epoch, 10 + epoch, 20 + epoch], dtype=torch.float32)
        memory.push(torch.arange(n), values, torch.full((n,), epoch))
    expected = torch.tensor([[2.0, 3, 4, 5], [12, 13, 14, 15], [22, 23, 24, 25]])
    assert torch.equal(memory.ordered(), expected)
    assert torch.equal(memory.last(), torch.tensor([5.0, 15, 25]))
    assert torch.equal(memory.count, torch.full((n,), k + 2))
    assert torch.allclose(memory.mean(), expected.mean(1))
    assert torch.allclose(memory.std(), expected.std(1, unbiased=False))


def test_memory_keeps_per_sample_histories_for_epoch_subsets():
    memory = CredibilityMemory(4, 3)
    memory.push(torch.tensor([0, 2]), torch.tensor([0.5, 0.7]), torch.tensor([1, 1]))
    memory.push(torch.tensor([2]), torch.tensor([0.9]), torch.tensor([1]))
    assert memory.mean().tolist() == pytest.approx([0.5, 0.0, 0.8, 0.0])
    assert memory.std().tolist() == pytest.approx([0.0, 0.0, 0.1, 0.0])
    assert memory.valid().sum(1).tolist() == [1, 0, 2, 0]


def test_stable_needs_k_equal_argmaxes():
    memory = CredibilityMemory(3, 3)
    for preds in ([1, 2, 0], [1, 2, 0], [1, 0, 0]):
        memory.push(torch.arange(3), torch.ones(3), torch.tensor(preds))
    assert memory.stable().tolist() == [True, False, True]
    young = CredibilityMemory(1, 3)
    young.push(torch.arange(1), torch.ones(1), torch.tensor([4]))
    assert young.stable().tolist() == [False]  # fewer than K epochs seen


def test_modulation_weight_on_a_constructed_history():
    memory = CredibilityMemory(3, 4)
    histories = torch.tensor([[0.9, 0.9, 0.9, 0.9], [1.0, 0.0, 1.0, 0.0], [0.2, 0.4, 0.6, 0.8]])
    for epoch in range(4):
        memory.push(torch.arange(3), histories[:, epoch], torch.zeros(3, dtype=torch.int64))
    # mean * (1 - std): 0.9 * 1; 0.5 * (1 - 0.5) = 0.25; 0.5 * (1 - sqrt(0.05)) = 0.388197
    assert modulation_weights(memory, "mean_std").tolist() == pytest.approx([0.9, 0.25, 0.5 * (1 - 0.05**0.5)])
    assert modulation_weights(memory, "mean").tolist() == pytest.approx([0.9, 0.5, 0.5])
    assert modulation_weights(memory, "last").tolist() == pytest.approx([0.9, 0.0, 0.8])
    assert modulation_weights(memory, "none").tolist() == [1.0, 1.0, 1.0]
    assert modulation_weights(memory, "mean_std", weight_min=0.3).tolist() == pytest.approx(
        [0.9, 0.3, 0.5 * (1 - 0.05**0.5)]
    )


def test_selective_update_changes_exactly_the_samples_that_meet_the_rule_and_reverts_one():
    probs = torch.tensor(
        [
            [0.95, 0.05, 0.00],  # 0: noisy set, confident, stable -> updated to 0
            [0.05, 0.95, 0.00],  # 1: clean set -> never updated
            [0.50, 0.50, 0.00],  # 2: noisy set, not confident
            [0.00, 0.05, 0.95],  # 3: noisy set, confident but argmax not stable
            [0.00, 0.92, 0.08],  # 4: noisy set, confident, stable -> updated to 1
        ]
    )
    given = torch.tensor([1, 1, 2, 0, 0])
    noisy = torch.tensor([True, False, True, True, True])
    stable = torch.tensor([True, True, True, False, True])
    first = selective_label_update(probs, given, noisy, torch.full((5,), -1), 0.9, stable)
    assert first.labels.tolist() == [0, -1, -1, -1, 1]
    assert (first.updated, first.changed, first.reverted) == (2, 2, 0)
    # next epoch sample 4 loses its confidence: its update is reverted (label back to the given one)
    probs[4] = torch.tensor([0.3, 0.6, 0.1])
    second = selective_label_update(probs, given, noisy, first.labels, 0.9, stable)
    assert second.labels.tolist() == [0, -1, -1, -1, -1]
    assert (second.updated, second.reverted) == (1, 1)
    # two networks: the other network must agree
    third = selective_label_update(probs, given, noisy, second.labels, 0.9, stable, torch.tensor([2, 1, 0, 2, 1]))
    assert third.labels.tolist() == [-1, -1, -1, -1, -1] and third.reverted == 1


def test_coarse_split_equals_scikit_learn_on_the_same_inputs():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.beta(8, 2, 300), rng.beta(2, 5, 200)]).astype(np.float32)
    prob, clean = coarse_split(torch.from_numpy(scores), 0.5, seed=3)
    # reference: DivideMix's GMM (max_iter 10, tol 1e-2, reg_covar 5e-4) on the min-max-normalised divergence
    divergence = (1.0 - torch.from_numpy(scores)).double().numpy()
    normed = ((divergence - divergence.min()) / (divergence.max() - divergence.min())).reshape(-1, 1)
    gmm = GaussianMixture(2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=3).fit(normed)
    reference = gmm.predict_proba(normed)[:, gmm.means_.argmin()]
    np.testing.assert_allclose(prob.numpy(), reference, rtol=0, atol=1e-6)
    assert torch.equal(clean, torch.from_numpy(reference > 0.5))
    assert clean[:300].float().mean() > 0.9 and clean[300:].float().mean() < 0.1


def test_crema_loss_weights_clean_samples_and_counts_updates_once():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.0]])
    labels = torch.tensor([0, 1, 0, 1])
    roles = torch.tensor([CLEAN, CLEAN, UPDATED, REST])
    weights = torch.tensor([0.2, 0.6, 0.0, 0.9])
    loss, stats = crema_loss(logits, labels, roles, weights, prior_weight=0.0)
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    # clean weights normalised to mean 1: 0.5, 1.5; updated weight 1; rest not supervised; / 3 supervised samples
    expected = (0.5 * ce[0] + 1.5 * ce[1] + ce[2]) / 3
    assert loss.item() == pytest.approx(expected.item())
    assert stats["sup_loss"] == pytest.approx(expected.item())
    probs = torch.softmax(logits, 1)
    with_rest, stats = crema_loss(logits, labels, roles, weights, probs, 2.0, 0.5, 0.0)
    target = probs[3] ** 2 / (probs[3] ** 2).sum()
    cons = ((probs[3] - target) ** 2).sum()
    assert with_rest.item() == pytest.approx((expected + 2.0 * cons).item())
