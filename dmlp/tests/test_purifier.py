"""IPC closed-form solver and gradient, the loss terms against hand computations, EAC feedback, purification."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from dmlp.losses import eac_loss, ipc_meta_loss
from dmlp.purifier import DMLPPurifier, PurifierConfig, closed_form_solver, meta_split, ridge_gram_cholesky
from shared.label_noise import symmetric_noise
from shared.noisy.dividemix import uniform_prior_kl
from shared.noisy.metrics import label_accuracy


def test_closed_form_solver_equals_lstsq_batched():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 6, generator=g, dtype=torch.float64)
    y = torch.randn(3, 40, 4, generator=g, dtype=torch.float64)
    w = closed_form_solver(x, y)
    ref = torch.linalg.lstsq(x, y).solution
    assert w.shape == (3, 6, 4)
    assert torch.allclose(w, ref, atol=1e-10)
    # with a ridge: the normal equations (X^T X + lambda I) W = X^T Y hold, with lambda = ridge x mean diag
    ridge = 0.1
    w_r = closed_form_solver(x, y, ridge=ridge)
    gram = x.transpose(1, 2) @ x
    lam = ridge * gram.diagonal(dim1=1, dim2=2).mean(1).view(3, 1, 1)
    assert torch.allclose((gram + lam * torch.eye(6, dtype=x.dtype)) @ w_r, x.transpose(1, 2) @ y, atol=1e-9)
    assert torch.allclose(closed_form_solver(x, y, ridge, cholesky=ridge_gram_cholesky(x, ridge)), w_r, atol=1e-10)


def test_solver_gradient_wrt_labels_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    xv = torch.randn(12, 5, generator=g, dtype=torch.float64)
    yv = torch.randint(0, 3, (12,), generator=g)
    y0 = F.one_hot(torch.randint(0, 3, (30,), generator=g), 3).double()

    def meta_loss(y):
        w = closed_form_solver(x, y)
        return ipc_meta_loss(xv @ w, yv, x @ w)["total"]

    assert torch.autograd.gradcheck(meta_loss, (y0.clone().requires_grad_(),), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(
        lambda y: closed_form_solver(x, y, ridge=0.01), (y0.clone().requires_grad_(),), eps=1e-6, atol=1e-6
    )


def test_ipc_meta_loss_terms_match_hand_computation():
    meta_out = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    meta_y = torch.tensor([0, 0])
    batch_out = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    terms = ipc_meta_loss(meta_out, meta_y, batch_out)
    ce = (-(1 - math.log(math.e + 1)) - (0 - math.log(1 + math.exp(2)))) / 2
    sse = (0 + 0) + (1 + 4)  # (1-1)^2 + (0-0)^2 + (0-1)^2 + (2-0)^2
    mean = [(0.5 + 0.75) / 2, (0.5 + 0.25) / 2]
    prior = 0.5 * math.log(0.5 / mean[0]) + 0.5 * math.log(0.5 / mean[1])
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["sse"].item() == pytest.approx(sse)
    assert terms["prior"].item() == pytest.approx(prior, rel=1e-6)
    assert terms["total"].item() == pytest.approx(ce + sse + prior, rel=1e-6)
    assert uniform_prior_kl(torch.full((4, 3), 1 / 3)).item() == pytest.approx(0.0, abs=1e-7)


def test_eac_loss_terms_match_hand_computation():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # softmax (0.75, 0.25), (0.5, 0.5)
    targets = torch.tensor([0, 1])
    terms = eac_loss(logits, targets, conf_weight=0.4, prior_weight=2.0)
    ce = (-math.log(0.75) - math.log(0.5)) / 2
    neg_ent = ((0.75 * math.log(0.75) + 0.25 * math.log(0.25)) + math.log(0.5)) / 2
    prior = 0.5 * math.log(0.5 / 0.625) + 0.5 * math.log(0.5 / 0.375)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["neg_ent"].item() == pytest.approx(neg_ent, rel=1e-6)
    assert terms["prior"].item() == pytest.approx(prior, rel=1e-6)
    assert terms["total"].item() == pytest.approx(ce + 0.4 * neg_ent + 2 * prior, rel=1e-6)
    # released behaviour: the classifier output is already a softmax, softened again by CE, penalty and prior
    released = eac_loss(logits, targets, 0.4, 2200.0, double_softmax=True)
    s = F.softmax(logits, 1)
    p = F.softmax(s, 1)
    assert released["ce"].item() == pytest.approx(F.cross_entropy(s, targets).item(), rel=1e-6)
    assert released["neg_ent"].item() == pytest.approx((p * p.log()).sum(1).mean().item(), rel=1e-6)
    assert released["prior"].item() == pytest.approx(uniform_prior_kl(F.softmax(p, 1)).item(), rel=1e-6)


def test_meta_split_is_seeded_and_disjoint():
    a_meta, a_rest = meta_split(100, 10, seed=3)
    b_meta, _ = meta_split(100, 10, seed=3)
    assert torch.equal(a_meta, b_meta) and len(a_rest) == 90
    assert set(a_meta.tolist()).isdisjoint(a_rest.tolist())
    with pytest.raises(ValueError, match="meta_size"):
        meta_split(10, 10, 0)


def _planted(n=3000, n_meta=300, d=16, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=g) * 1.5
    y = torch.arange(n + n_meta) % classes
    x = centers[y] + torch.randn(n + n_meta, d, generator=g)
    return x[:n], y[:n], x[n:], y[n:]


def test_ema_feedback_and_the_released_no_feedback_flag():
    x, y, xv, yv = _planted(n=400, n_meta=100)
    cfg = PurifierConfig(epochs=1, ipc_batch=200, eac_batch=100, ema_start_epoch=0, eac_feedback=True)
    p = DMLPPurifier(x, y, xv, yv, 5, cfg)
    before = p.labels.detach().clone()
    p.ema_feedback(0)
    rows = p.batches[0]
    probs = F.softmax(p.classifier(p.x[rows]), 1).detach()
    assert torch.allclose(p.labels.detach()[rows], 0.9 * before[rows] + 0.1 * probs)
    assert torch.equal(p.labels.detach()[p.batches[1]], before[p.batches[1]])
    released = DMLPPurifier(
        x, y, xv, yv, 5, PurifierConfig(epochs=1, ipc_batch=200, ema_start_epoch=0)
    )  # the default: the released script's (dead) feedback
    assert not released.feedback_due(0) and p.feedback_due(0)


def test_ipc_batches_are_contiguous_and_state_round_trips():
    x, y, xv, yv = _planted(n=500, n_meta=100)
    p = DMLPPurifier(x, y, xv, yv, 5, PurifierConfig(ipc_batch=200, eac_batch=100))
    assert [b.tolist() for b in p.batches] == [list(range(0, 200)), list(range(200, 400)), list(range(400, 500))]
    p.run_epoch()
    q = DMLPPurifier(x, y, xv, yv, 5, PurifierConfig(ipc_batch=200, eac_batch=100))
    q.load_state_dict(copy.deepcopy(p.state_dict()))  # as through a checkpoint file
    p.run_epoch()
    q.run_epoch()
    assert torch.allclose(p.labels, q.labels) and p.epoch == q.epoch == 2
    with pytest.raises(ValueError, match="ipc_batch 8 < feature dimension 16"):
        DMLPPurifier(x, y, xv, yv, 5, PurifierConfig(ipc_batch=8, ridge=0.0))


def test_purifier_cleans_80_percent_symmetric_noise_on_planted_features():
    """Default purifier (IPC + EAC, no feedback), 160 IPC steps: >= 15 points (measured 35.0 % -> 51.4 %; the margin
    was 30 points while the guessed EMA feedback was on by default, see README "Fidelity notes")."""
    x, y, xv, yv = _planted()
    noise = symmetric_noise(y.numpy(), 0.8, 5, seed=0)
    noisy = torch.from_numpy(noise.noisy.copy())
    cfg = PurifierConfig(epochs=40, ipc_batch=750, lr=0.05, eac_batch=250)
    p = DMLPPurifier(x, noisy, xv, yv, 5, cfg)
    for _ in range(cfg.epochs):
        p.run_epoch()
    before, after = label_accuracy(noisy, y), label_accuracy(p.hard_labels(), y)
    assert after >= before + 15, (before, after)
    soft = p.soft_labels()
    assert torch.allclose(soft.sum(1), torch.ones(len(y))) and (soft >= 0).all()


def _planted_ipc_alone(solver=None):
    """IPC only (EAC and its feedback off), 80 % symmetric noise on planted 16-d features, 100 clean meta rows."""
    import dmlp.purifier as purifier_module

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=g) * 1.5
    y = torch.arange(1600) % 5
    y = y[torch.randperm(1600, generator=g)]
    x = centers[y] + torch.randn(1600, 16, generator=g)
    x, y, xv, yv = x[:1500], y[:1500], x[1500:], y[1500:]
    noisy = torch.from_numpy(symmetric_noise(y.numpy(), 0.8, 5, seed=0).noisy.copy())
    cfg = PurifierConfig(epochs=100, ipc_batch=500, lr=0.05, eac=False, eac_feedback=False)
    original = purifier_module.closed_form_solver
    if solver is not None:
        purifier_module.closed_form_solver = solver
    try:
        p = DMLPPurifier(x, noisy, xv, yv, 5, cfg)
        for _ in range(cfg.epochs):
            stats = p.run_epoch()
    finally:
        purifier_module.closed_form_solver = original
    assert "eac_loss" not in stats
    return label_accuracy(noisy, y), label_accuracy(p.hard_labels(), y)


def test_ipc_alone_purifies_planted_features():
    """IPC alone lifts label accuracy by >= 30 points (measured: 34.9 % -> 78.1 %)."""
    before, after = _planted_ipc_alone()
    assert after >= before + 30, (before, after)


def test_ipc_alone_margin_fails_when_the_solve_is_replaced_by_identity():
    """The same run with W = X^T Y (the closed-form solve replaced by the identity) stays at the noisy accuracy, so
    the margin of the test above measures IPC's solve (measured: 34.9 % -> 34.7 %)."""
    before, after = _planted_ipc_alone(lambda f, labels, ridge=0.0, cholesky=None: f.transpose(-1, -2) @ labels)
    assert after < before + 30, (before, after)
    assert abs(after - before) < 5
