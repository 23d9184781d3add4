"""DMLP losses: the IPC meta loss L_val (Eq. 8) and the EAC classifier loss L_c (Eq. 10).

Equation numbers are those of the paper's framework figure; the formulas are the ones of the released ``DMLP.py``
(the paper body was not available; README, Fidelity notes, lists where this follows the release).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shared.noisy.dividemix import uniform_prior_kl

__all__ = ["eac_loss", "ipc_meta_loss"]


def ipc_meta_loss(
    meta_outputs: torch.Tensor, meta_labels: torch.Tensor, batch_outputs: torch.Tensor
) -> dict[str, torch.Tensor]:
    """L_val of IPC (Eq. 8) for the closed-form weights W(Y_B).

    Args:
        meta_outputs: X_v W, the linear outputs on the clean meta set (``M x C``).
        meta_labels: the meta set's true labels (``M``).
        batch_outputs: X_B W on the current training batch (``B x C``), for the class-balance prior.

    Returns:
        ``{"ce": mean CE(softmax(X_v W), y_v), "sse": sum_{i,c} (X_v W - onehot(y_v))^2, "prior": KL(u || mean
        softmax(X_B W)), "total": their sum}`` (weights 1, 1, 1 as released; the squared error is a **sum**).
    """
    onehot = F.one_hot(meta_labels, meta_outputs.shape[1]).to(meta_outputs.dtype)
    ce = F.cross_entropy(meta_outputs, meta_labels)
    sse = ((meta_outputs - onehot) ** 2).sum()
    prior = uniform_prior_kl(F.softmax(batch_outputs, dim=1))
    return {"ce": ce, "sse": sse, "prior": prior, "total": ce + sse + prior}


def eac_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    conf_weight: float = 0.4,
    prior_weight: float = 1.0,
    double_softmax: bool = False,
) -> dict[str, torch.Tensor]:
    """L_c of EAC (Eq. 10): CE + conf_weight * NegEnt + prior_weight * KL(u || p_bar).

    NegEnt = mean_i sum_c p_ic log p_ic (a confidence penalty: adding it pushes toward higher entropy).

    Args:
        logits: the linear classifier's outputs ``B x C``.
        targets: hard targets argmax(Y_B).
        conf_weight, prior_weight: the two penalty weights (released: 0.4 and 2 200).
        double_softmax: reproduce the released script, whose classifier ends in a softmax that the CE, the
            penalty and the prior then soften again: CE(softmax(z)), p = softmax(softmax(z)),
            p_bar = mean softmax(p). Default False: real logits, p = softmax(z), p_bar = mean p.
    """
    if double_softmax:
        outputs = F.softmax(logits, dim=1)
        p = F.softmax(outputs, dim=1)
        prior_probs = F.softmax(p, dim=1)
    else:
        outputs, p = logits, F.softmax(logits, dim=1)
        prior_probs = p
    ce = F.cross_entropy(outputs, targets)
    neg_ent = (p * p.clamp_min(1e-12).log()).sum(1).mean()
    prior = uniform_prior_kl(prior_probs)
    return {"ce": ce, "neg_ent": neg_ent, "prior": prior, "total": ce + conf_weight * neg_ent + prior_weight * prior}
