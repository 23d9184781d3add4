"""The DMLP label purifier on frozen features: IPC (Intrinsic Primary Correction) + EAC (Extrinsic Aux. Correction).

IPC (Eq. 6, 8): a linear least-squares solver gives W(Y_B) = (X_B^T X_B + lambda I)^-1 X_B^T Y_B in closed form as a
function of the learnable soft label matrix Y; the meta loss of W on the clean meta set is back-propagated through
the solver into Y, and Adam takes one step on Y per contiguous batch of training rows.

EAC (Eq. 10): a linear classifier trained on argmax(Y_B) with confidence and prior penalties; the paper's figure
feeds its predictions back into the labels by an EMA, Y_B <- m Y_B + (1 - m) softmax(C(X_B)) (``eac_feedback``;
the released script never does, see README "Fidelity notes").

The solver is batched over any leading dimensions, and the Gram matrices of the frozen feature batches are
factorised once (Cholesky), so an IPC step costs one ``d x C`` product and one triangular solve per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dmlp.losses import eac_loss, ipc_meta_loss
from shared.training import NonFiniteLossError, check_finite, check_finite_gradients, check_finite_parameters

__all__ = [
    "DMLPPurifier",
    "PurifierConfig",
    "PurifierDivergedError",
    "closed_form_solver",
    "meta_split",
    "ridge_gram_cholesky",
]


class PurifierDivergedError(NonFiniteLossError):
    """The label matrix Y (or the EAC classifier) became non-finite or left any plausible range."""


@dataclass
class PurifierConfig:
    """IPC + EAC hyper-parameters (defaults: the released CIFAR script; the paper's EMA feedback is an option, off)."""

    epochs: int = 100
    ipc_batch: int = field(default=7000, metadata={"help": "contiguous rows per IPC step (49 000 / 7 = 7 batches)"})
    lr: float = field(default=0.01, metadata={"help": "Adam lr on the label matrix Y"})
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 3e-4
    ridge: float = field(
        default=1e-3,
        metadata={"help": "lambda = ridge x mean diagonal of X_B^T X_B (0: the released plain least squares)"},
    )
    ipc: bool = field(default=True, metadata={"help": "IPC steps on Y (false: the EAC-only ablation)"})
    eac: bool = field(default=True, metadata={"help": "train the EAC linear classifier"})
    eac_batch: int = 500
    eac_lr: float = 0.006
    eac_lr_late: float = field(default=0.0006, metadata={"help": "EAC lr from epoch eac_lr_drop_epoch on"})
    eac_lr_drop_epoch: int = 4
    eac_conf_weight: float = 0.4
    eac_prior_weight: float = field(
        default=1.0, metadata={"help": "prior penalty weight (released 2200 with double softmax; 1 with real logits)"}
    )
    eac_double_softmax: bool = field(default=False, metadata={"help": "released double softmax in EAC"})
    eac_feedback: bool = field(
        default=False,
        metadata={
            "help": "EMA of the EAC predictions into Y (drawn in the paper's figure, momentum and period unknown); "
            "false = the released script, where the feedback is dead code"
        },
    )
    ema_momentum: float = 0.9
    ema_period: int = field(default=1, metadata={"help": "feedback every this many epochs"})
    ema_start_epoch: int = field(default=1, metadata={"help": "first epoch with feedback"})
    max_label_magnitude: float | None = field(
        default=100.0,
        metadata={
            "help": "stop when max |Y| exceeds this (Y starts one-hot; Adam moves it by about lr per step, so a "
            "runaway lr gives finite but meaningless labels); null: no bound"
        },
    )


def ridge_gram_cholesky(features: torch.Tensor, ridge: float) -> torch.Tensor:
    """Cholesky factor L of X^T X + lambda I with lambda = ridge x mean(diag(X^T X)); batched over leading dims."""
    gram = features.transpose(-1, -2) @ features
    d = gram.shape[-1]
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True).unsqueeze(-1)
    eye = torch.eye(d, dtype=gram.dtype, device=gram.device)
    return torch.linalg.cholesky(gram + ridge * scale * eye)


def closed_form_solver(
    features: torch.Tensor, labels: torch.Tensor, ridge: float = 0.0, cholesky: torch.Tensor | None = None
) -> torch.Tensor:
    """W(Y) = argmin_W ||X W - Y||^2 + lambda ||W||^2 = (X^T X + lambda I)^-1 X^T Y (IPC Eq. 6), differentiable in Y.

    Args:
        features: X, ``... x B x d`` (leading dimensions are batch dimensions).
        labels: Y, ``... x B x C``.
        ridge: relative ridge (lambda = ridge x mean diagonal of X^T X); 0 is ordinary least squares (needs B >= d
            and X of full column rank).
        cholesky: precomputed :func:`ridge_gram_cholesky` of ``features`` (the features are frozen).

    Returns:
        W, ``... x d x C``.
    """
    rhs = features.transpose(-1, -2) @ labels
    if cholesky is None:
        if ridge == 0:
            return torch.linalg.solve(features.transpose(-1, -2) @ features, rhs)
        cholesky = ridge_gram_cholesky(features, ridge)
    return torch.cholesky_solve(rhs, cholesky)


def meta_split(num_samples: int, meta_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split: (meta indices, remaining training indices), both sorted."""
    if not 0 < meta_size < num_samples:
        raise ValueError(f"meta_size must be in (0, {num_samples}), got {meta_size}")
    perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    return perm[:meta_size].sort().values, perm[meta_size:].sort().values


class DMLPPurifier:
    """IPC + EAC on frozen features.

    Args:
        train_features: X_t, ``N x d`` features of the samples to purify.
        noisy_labels: their noisy labels (``N``), the initial Y (one-hot).
        meta_features: X_v, ``M x d`` features of the clean meta set.
        meta_labels: its true labels (``M``).
        num_classes: C.
        cfg: hyper-parameters.
        device: where the purifier runs.
        seed: seeds the EAC classifier's initialisation and chunk order.
    """

    def __init__(
        self,
        train_features: torch.Tensor,
        noisy_labels: torch.Tensor,
        meta_features: torch.Tensor,
        meta_labels: torch.Tensor,
        num_classes: int,
        cfg: PurifierConfig,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ):
        self.cfg, self.num_classes, self.device = cfg, num_classes, torch.device(device)
        n, d = train_features.shape
        if len(noisy_labels) != n:
            raise ValueError(f"{n} training features but {len(noisy_labels)} noisy labels")
        if meta_features.shape[1] != d or len(meta_labels) != len(meta_features):
            raise ValueError(
                f"meta features {tuple(meta_features.shape)} / labels {len(meta_labels)} do not match "
                f"the training features' dimension {d}"
            )
        if not (cfg.ipc or cfg.eac):
            raise ValueError("purifier.ipc and purifier.eac are both false: nothing would correct the labels")
        if cfg.ridge == 0 and cfg.ipc_batch < d:
            raise ValueError(
                f"ipc_batch {cfg.ipc_batch} < feature dimension {d}: plain least squares is singular; "
                "set ridge > 0 or a larger ipc_batch"
            )
        self.x = train_features.to(self.device, torch.float32)
        self.xv = meta_features.to(self.device, torch.float32)
        self.yv = torch.as_tensor(meta_labels, dtype=torch.int64, device=self.device)
        self.noisy = torch.as_tensor(noisy_labels, dtype=torch.int64, device=self.device)
        self.labels = nn.Parameter(F.one_hot(self.noisy, num_classes).float())
        self.optimizer = torch.optim.Adam([self.labels], lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.batches = [
            torch.arange(s, min(s + cfg.ipc_batch, n), device=self.device) for s in range(0, n, cfg.ipc_batch)
        ]
        if len(self.batches) > 1 and len(self.batches[-1]) < d and cfg.ridge == 0:
            self.batches[-2] = torch.cat(self.batches[-2:])
            self.batches.pop()
        # The features are frozen: factorise each batch's Gram matrix once.
        self.cholesky = [ridge_gram_cholesky(self.x[b], cfg.ridge) if cfg.ridge > 0 else None for b in self.batches]
        generator = torch.Generator().manual_seed(seed)
        self.classifier = nn.Linear(d, num_classes).to(self.device)
        with torch.no_grad():
            bound = 1 / math.sqrt(d)
            self.classifier.weight.copy_(torch.empty(num_classes, d).uniform_(-bound, bound, generator=generator))
            self.classifier.bias.copy_(torch.empty(num_classes).uniform_(-bound, bound, generator=generator))
        self.eac_optimizer = torch.optim.Adam(
            self.classifier.parameters(), lr=cfg.eac_lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.generator = generator
        self.epoch, self.step = 0, 0
        self.last_weights: torch.Tensor | None = None

    # -- the two correctors
    def ipc_step(self, batch: int) -> dict[str, float]:
        """One Adam step on Y from the meta loss of the closed-form solver on batch ``batch``."""
        rows = self.batches[batch]
        weights = closed_form_solver(self.x[rows], self.labels[rows], self.cfg.ridge, self.cholesky[batch])
        terms = ipc_meta_loss(self.xv @ weights, self.yv, self.x[rows] @ weights)
        check_finite(terms["total"], self.step, "IPC meta loss")
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        check_finite_gradients([self.labels], self.step, "IPC meta loss (gradient w.r.t. the label matrix Y)")
        self.optimizer.step()
        self.check_labels("IPC step")
        self.step += 1
        self.last_weights = weights.detach()
        return {k: v.item() for k, v in terms.items()}

    def eac_steps(self, batch: int) -> float:
        """EAC: mini-batches of ``eac_batch`` rows of the batch, hard targets argmax(Y_B) frozen for the pass."""
        rows = self.batches[batch]
        targets = self.labels.detach()[rows].argmax(1)
        order = torch.randperm(len(rows), generator=self.generator).to(self.device)
        total = 0.0
        chunks = order.split(self.cfg.eac_batch)
        for chunk in chunks:
            terms = eac_loss(
                self.classifier(self.x[rows[chunk]]),
                targets[chunk],
                self.cfg.eac_conf_weight,
                self.cfg.eac_prior_weight,
                self.cfg.eac_double_softmax,
            )
            check_finite(terms["total"], self.step, "EAC loss")
            self.eac_optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            check_finite_gradients(self.classifier, self.step, "EAC loss")
            self.eac_optimizer.step()
            check_finite_parameters(self.classifier, self.step, "EAC classifier")
            total += terms["total"].item()
        return total / len(chunks)

    @torch.no_grad()
    def ema_feedback(self, batch: int) -> None:
        """Paper's EMA update of the labels toward the EAC predictions: Y_B <- m Y_B + (1 - m) softmax(C(X_B))."""
        rows = self.batches[batch]
        probs = F.softmax(self.classifier(self.x[rows]), dim=1)
        m = self.cfg.ema_momentum
        self.labels[rows] = m * self.labels[rows] + (1 - m) * probs
        self.check_labels("EAC feedback")

    @torch.no_grad()
    def check_labels(self, after: str) -> None:
        """Stop (:class:`PurifierDivergedError`) when Y holds NaN/inf or exceeds ``cfg.max_label_magnitude``."""
        peak = self.labels.detach().abs().max().item()
        if not math.isfinite(peak):
            raise PurifierDivergedError(
                f"non-finite label estimates (the label matrix Y holds NaN/inf) after the {after} at step {self.step}; "
                "stopping before they are saved. Lower --purifier.lr (or --purifier.eac_lr)."
            )
        bound = self.cfg.max_label_magnitude
        if bound is not None and peak > bound:
            raise PurifierDivergedError(
                f"the label matrix Y diverged after the {after} at step {self.step}: max |Y| = {peak:.3g} > "
                f"purifier.max_label_magnitude {bound:g} (Y starts one-hot and Adam moves it by about lr = "
                f"{self.cfg.lr:g} per step; its argmax is no longer a label estimate). Lower --purifier.lr."
            )

    def feedback_due(self, epoch: int) -> bool:
        cfg = self.cfg
        return cfg.eac and cfg.eac_feedback and epoch >= cfg.ema_start_epoch and epoch % cfg.ema_period == 0

    def run_epoch(self) -> dict[str, float]:
        """One pass over the contiguous batches in fixed order: IPC step, EAC steps, optional EMA feedback (either
        corrector can be switched off for the ablations)."""
        epoch, cfg = self.epoch, self.cfg
        lr = cfg.eac_lr if epoch < cfg.eac_lr_drop_epoch else cfg.eac_lr_late
        for group in self.eac_optimizer.param_groups:
            group["lr"] = lr
        sums: dict[str, float] = {}
        for b in range(len(self.batches)):
            if cfg.ipc:
                for key, value in self.ipc_step(b).items():
                    sums[f"ipc_{key}"] = sums.get(f"ipc_{key}", 0.0) + value
            if cfg.eac:
                sums["eac_loss"] = sums.get("eac_loss", 0.0) + self.eac_steps(b)
                if self.feedback_due(epoch):
                    self.ema_feedback(b)
        self.epoch += 1
        return {k: v / len(self.batches) for k, v in sums.items()}

    # -- outputs
    def hard_labels(self) -> torch.Tensor:
        """argmax(Y): the purified labels."""
        return self.labels.detach().argmax(1).cpu()

    def soft_labels(self) -> torch.Tensor:
        """Rows of Y clipped at 0 and normalised to sum 1 (uniform where a row has no positive entry)."""
        y = self.labels.detach().clamp_min(0).cpu()
        sums = y.sum(1, keepdim=True)
        return torch.where(sums > 0, y / sums.clamp_min(1e-12), torch.full_like(y, 1.0 / self.num_classes))

    @torch.no_grad()
    def linear_probe_accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Test accuracy (percent) of the EAC classifier and of the last closed-form W on ``features``."""
        features = features.to(self.device, torch.float32)
        labels = torch.as_tensor(labels, device=self.device)
        result = {}
        if self.cfg.eac:
            result["eac_probe_acc"] = 100 * (self.classifier(features).argmax(1) == labels).float().mean().item()
        if self.last_weights is not None:
            result["ipc_probe_acc"] = 100 * ((features @ self.last_weights).argmax(1) == labels).float().mean().item()
        return result

    def state_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels.detach().cpu(),
            "optimizer": self.optimizer.state_dict(),
            "classifier": self.classifier.state_dict(),
            "eac_optimizer": self.eac_optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.labels.copy_(state["labels"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.classifier.load_state_dict(state["classifier"])
        self.eac_optimizer.load_state_dict(state["eac_optimizer"])
        self.generator.set_state(state["generator"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
