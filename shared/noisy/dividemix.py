"""DivideMix (Li, Socher, Hoi, ICLR 2020, arXiv 2002.07394): the engine shared by dmlp, anm and crema.

Two networks; each epoch, for each network k in (1, 2):
  1. *co-divide*: the other network's per-sample CE loss on the (un-augmented) training set, min-max normalised
     (averaged over the last 5 epochs at 90 % noise), is fitted by a 2-component GMM (max_iter 10, tol 1e-2,
     reg_covar 5e-4); the posterior of the low-mean component is the clean probability w_i, and w_i > p_threshold
     puts sample i into the labeled set X, the rest into the unlabeled set U;
  2. *label co-refinement* on X: p = mean softmax of net k over two augmentations, y' = w y + (1 - w) p, sharpened
     with temperature T; *label co-guessing* on U: the mean softmax of both networks over two augmentations,
     sharpened;
  3. *MixMatch*: lambda ~ Beta(alpha, alpha), lambda' = max(lambda, 1 - lambda), inputs and targets mixed with a
     random permutation of the concatenated batch;
  4. loss = L_x (soft CE on the mixed labeled part) + lambda_u(t) L_u (MSE of probabilities on the mixed
     unlabeled part; lambda_u ramped linearly over 16 epochs after warm-up) + the uniform-prior penalty
     KL(u || mean softmax).
Warm-up trains both networks with CE on the noisy labels (plus the negative-entropy confidence penalty for
asymmetric noise). Test prediction: the sum of both networks' logits.

Defaults (:func:`cifar_defaults`, :func:`clothing1m_defaults`) follow the released DivideMix scripts
(``Train_cifar.py``, ``Train_clothing1M.py``; see shared/papers/anm.md section 3-4 and dmlp.md section 7).
The engine reads images through :class:`shared.noisy.data.ViewDataset`; labels and clean probabilities live in
tensors indexed by sample, so a package can hand in any label file (e.g. DMLP's purified labels).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture
from torch import nn
from torch.utils.data import DataLoader

from shared.checkpoint import capture_rng_state, restore_rng_state, save_checkpoint
from shared.logger import RunLogger
from shared.noisy.data import ViewDataset, balanced_subset
from shared.noisy.metrics import AccuracyTracker, label_precision_recall
from shared.noisy.supervised import evaluate_accuracy
from shared.training import check_finite

__all__ = [
    "DivideMix",
    "DivideMixConfig",
    "cifar_defaults",
    "clothing1m_defaults",
    "co_guess",
    "co_refine",
    "gmm_clean_probability",
    "linear_rampup",
    "mixmatch",
    "mixmatch_lambda",
    "mixmatch_losses",
    "neg_entropy",
    "per_sample_loss",
    "sharpen",
    "uniform_prior_penalty",
]


@dataclass
class DivideMixConfig:
    """DivideMix hyper-parameters (defaults: CIFAR-10, 50 % symmetric noise)."""

    epochs: int = 300
    warmup_epochs: int = 10
    batch_size: int = 64
    warmup_batch_size: int = field(default=128, metadata={"help": "DivideMix warms up with 2 x batch_size"})
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay_epoch: int = field(default=150, metadata={"help": "lr / 10 from this epoch on"})
    alpha: float = 4.0
    lambda_u: float = 25.0
    rampup_length: int = 16
    p_threshold: float = 0.5
    temperature: float = 0.5
    asym_penalty: bool = field(default=False, metadata={"help": "negative-entropy penalty in warm-up (asym noise)"})
    loss_history: int = field(default=1, metadata={"help": "average the GMM input over this many epochs (5 at 90%)"})
    gmm_max_iter: int = 10
    gmm_tol: float = 1e-2
    gmm_reg_covar: float = 5e-4
    epoch_samples: int | None = field(
        default=None,
        metadata={"help": "Clothing1M: train each epoch on a class-balanced sample of this size (null: whole set)"},
    )
    num_workers: int = 0
    eval_batch_size: int = 512


def cifar_defaults(num_classes: int, noise_type: str, rate: float) -> DivideMixConfig:
    """DivideMix's CIFAR settings for a noise setting.

    lambda_u per setting as in the DivideMix README/paper (CIFAR-10: 0 at sym 20 % and asym 40 %, 25 at sym 50/80 %,
    50 at sym 90 %; CIFAR-100: 25 at sym 20 %, 150 otherwise); warm-up 10 (CIFAR-10) / 30 (CIFAR-100) epochs;
    loss averaged over 5 epochs at 90 % noise; the confidence penalty in warm-up for asymmetric noise.
    """
    asym = noise_type.startswith("asym")
    if num_classes == 10:
        lambda_u = 0.0 if asym or rate <= 0.2 else (50.0 if rate >= 0.9 else 25.0)
    else:
        lambda_u = 25.0 if rate <= 0.2 else 150.0
    return DivideMixConfig(
        warmup_epochs=10 if num_classes == 10 else 30,
        lambda_u=lambda_u,
        asym_penalty=asym,
        loss_history=5 if rate >= 0.9 else 1,
    )


def clothing1m_defaults() -> DivideMixConfig:
    """DivideMix's Clothing1M settings: batch 32, 1 000 batches per epoch, 80 epochs, lr 0.002 (/10 at 40),
    weight decay 1e-3, 1 warm-up epoch, alpha 0.5, lambda_u 0, p_threshold 0.5."""
    return DivideMixConfig(
        epochs=80,
        warmup_epochs=1,
        batch_size=32,
        warmup_batch_size=32,
        lr=0.002,
        weight_decay=1e-3,
        lr_decay_epoch=40,
        alpha=0.5,
        lambda_u=0.0,
        epoch_samples=32 * 1000 * 2,
    )


# ----------------------------------------------------------------------------------------------- building blocks
def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^(1/T) renormalised over the last dimension (MixMatch Eq. 7)."""
    p = p.pow(1.0 / temperature)
    return p / p.sum(dim=-1, keepdim=True)


def mixmatch_lambda(lam: float | torch.Tensor) -> float | torch.Tensor:
    """lambda' = max(lambda, 1 - lambda): the mixed sample stays closer to its first input (MixMatch Eq. 9)."""
    return torch.maximum(lam, 1 - lam) if isinstance(lam, torch.Tensor) else max(lam, 1 - lam)


def mixmatch(
    inputs: torch.Tensor, targets: torch.Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """MixUp with lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha), against a random permutation."""
    lam = float(np.random.beta(alpha, alpha)) if alpha > 0 else 1.0
    lam = mixmatch_lambda(lam)
    perm = torch.randperm(inputs.shape[0], generator=generator).to(inputs.device)
    return lam * inputs + (1 - lam) * inputs[perm], lam * targets + (1 - lam) * targets[perm], lam


def mixmatch_losses(
    logits_x: torch.Tensor, targets_x: torch.Tensor, logits_u: torch.Tensor, targets_u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_x = mean soft cross-entropy; L_u = mean over samples and classes of (softmax - target)^2."""
    lx = -(F.log_softmax(logits_x, dim=1) * targets_x).sum(1).mean()
    lu = ((F.softmax(logits_u, dim=1) - targets_u) ** 2).mean() if logits_u.numel() else logits_x.new_zeros(())
    return lx, lu


def uniform_prior_penalty(logits: torch.Tensor) -> torch.Tensor:
    """KL(u || p_bar) = sum_c (1/C) log((1/C) / p_bar_c), p_bar = batch mean of the softmax (DivideMix's penalty)."""
    num_classes = logits.shape[1]
    prior = torch.full((num_classes,), 1.0 / num_classes, device=logits.device, dtype=logits.dtype)
    mean = F.softmax(logits, dim=1).mean(0)
    return (prior * (prior.log() - mean.log())).sum()


def neg_entropy(logits: torch.Tensor) -> torch.Tensor:
    """mean_i sum_c p_ic log p_ic: added to the loss, it penalises over-confident predictions (asym warm-up)."""
    p = F.softmax(logits, dim=1)
    return (p * F.log_softmax(logits, dim=1)).sum(1).mean()


def linear_rampup(current: float, warmup_epochs: int, lambda_u: float, rampup_length: int = 16) -> float:
    """lambda_u * clip((current - warm_up) / rampup_length, 0, 1) (DivideMix's ``linear_rampup``)."""
    return lambda_u * float(np.clip((current - warmup_epochs) / rampup_length, 0.0, 1.0))


def co_refine(labels_onehot: torch.Tensor, w: torch.Tensor, probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Label co-refinement: sharpen(w y + (1 - w) p) with p the network's mean prediction over augmentations."""
    w = w.view(-1, 1)
    return sharpen(w * labels_onehot + (1 - w) * probs, temperature)


def co_guess(probs: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Label co-guessing: sharpen the mean of both networks' predictions over both augmentations."""
    return sharpen(torch.stack(probs).mean(0), temperature)


@torch.no_grad()
def per_sample_loss(
    model: nn.Module,
    source: Any,
    labels: torch.Tensor,
    transform: Callable[[Any], torch.Tensor],
    device: torch.device,
    indices: Any | None = None,
    batch_size: int = 512,
    num_workers: int = 0,
) -> torch.Tensor:
    """CE loss of every sample against its (noisy) label, model in eval mode, un-augmented images (``eval_train``)."""
    was_training = model.training
    model.eval()
    loader = DataLoader(ViewDataset(source, transform, 1, indices), batch_size=batch_size, num_workers=num_workers)
    losses = []
    for images, index in loader:
        losses.append(F.cross_entropy(model(images.to(device)), labels[index].to(device), reduction="none").cpu())
    model.train(was_training)
    return torch.cat(losses)


def gmm_clean_probability(
    losses: torch.Tensor | np.ndarray, max_iter: int = 10, tol: float = 1e-2, reg_covar: float = 5e-4, seed: int = 0
) -> np.ndarray:
    """Min-max normalise the losses, fit a 2-component GMM, return the posterior of the low-mean component."""
    losses = np.asarray(torch.as_tensor(losses).float().numpy(), dtype=np.float64).reshape(-1)
    span = losses.max() - losses.min()
    normed = (losses - losses.min()) / (span if span > 0 else 1.0)
    gmm = GaussianMixture(n_components=2, max_iter=max_iter, tol=tol, reg_covar=reg_covar, random_state=seed)
    gmm.fit(normed.reshape(-1, 1))
    return gmm.predict_proba(normed.reshape(-1, 1))[:, int(gmm.means_.argmin())]


# ------------------------------------------------------------------------------------------------------ trainer
class DivideMix:
    """The two-network DivideMix trainer on one process.

    Args:
        net1, net2: the two networks (same architecture, different initialisation), on ``device``.
        source: training images (uint8 tensor or indexable image source).
        labels: the training labels it treats as noisy (``N``), e.g. a noise file's or DMLP's purified labels.
        num_classes: C.
        train_transform: per-image augmentation for warm-up and the MixMatch views.
        eval_transform: per-image transform for the per-sample losses and the test set.
        test_source, test_labels: clean test split.
        cfg: hyper-parameters.
        device: where to train.
        logger: run logger.
        clean_labels: true training labels when known (synthetic noise), only for the label-quality log.
        seed: seeds the GMM and the Clothing1M epoch samples.
    """

    def __init__(
        self,
        net1: nn.Module,
        net2: nn.Module,
        source: Any,
        labels: Any,
        num_classes: int,
        train_transform: Callable,
        eval_transform: Callable,
        test_source: Any,
        test_labels: Any,
        cfg: DivideMixConfig,
        device: torch.device,
        logger: RunLogger,
        clean_labels: Any | None = None,
        seed: int = 0,
    ):
        self.nets = [net1, net2]
        self.source, self.num_classes, self.cfg, self.device, self.logger = source, num_classes, cfg, device, logger
        self.labels = torch.as_tensor(np.array(labels), dtype=torch.int64)
        self.clean = None if clean_labels is None else torch.as_tensor(np.array(clean_labels), dtype=torch.int64)
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.test_source, self.test_labels = test_source, test_labels
        self.seed = seed
        self.optimizers = [
            torch.optim.SGD(n.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            for n in self.nets
        ]
        self.loss_history: list[list[torch.Tensor]] = [[], []]
        self.tracker = AccuracyTracker()
        self.epoch, self.step = 0, 0

    # -- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "net1": self.nets[0].state_dict(),
            "net2": self.nets[1].state_dict(),
            "opt1": self.optimizers[0].state_dict(),
            "opt2": self.optimizers[1].state_dict(),
            "loss_history": [list(h) for h in self.loss_history],
            "tracker": self.tracker.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "rng": capture_rng_state(),
            "config": asdict(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in range(2):
            self.nets[k].load_state_dict(state[f"net{k + 1}"])
            self.optimizers[k].load_state_dict(state[f"opt{k + 1}"])
        self.loss_history = [list(h) for h in state["loss_history"]]
        self.tracker.load_state_dict(state["tracker"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        restore_rng_state(state["rng"])

    # -- pieces
    def _epoch_indices(self, epoch: int) -> np.ndarray:
        if self.cfg.epoch_samples is None:
            return np.arange(len(self.labels))
        rng = np.random.default_rng([self.seed, epoch])
        return balanced_subset(self.labels.numpy(), self.cfg.epoch_samples, self.num_classes, rng)

    def _loader(self, indices: np.ndarray, views: int, batch_size: int) -> DataLoader:
        dataset = ViewDataset(self.source, self.train_transform, views, indices)
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=self.cfg.num_workers
        )

    def warmup_epoch(self, k: int, indices: np.ndarray) -> float:
        """CE on the given labels (+ negative entropy for asymmetric noise) for network k."""
        net, opt = self.nets[k], self.optimizers[k]
        net.train()
        total, count = 0.0, 0
        for images, index in self._loader(indices, 1, self.cfg.warmup_batch_size):
            logits = net(images.to(self.device))
            loss = F.cross_entropy(logits, self.labels[index].to(self.device))
            if self.cfg.asym_penalty:
                loss = loss + neg_entropy(logits)
            check_finite(loss, self.step, "DivideMix warm-up loss")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.step += 1
            total, count = total + loss.item() * len(index), count + len(index)
        return total / max(count, 1)

    def clean_probability(self, k: int, indices: np.ndarray) -> np.ndarray:
        """Co-divide input: network k's GMM clean probability of each sample in ``indices``."""
        losses = per_sample_loss(
            self.nets[k],
            self.source,
            self.labels,
            self.eval_transform,
            self.device,
            indices,
            self.cfg.eval_batch_size,
            self.cfg.num_workers,
        )
        span = losses.max() - losses.min()
        normed = (losses - losses.min()) / (span if span > 0 else 1.0)
        if self.cfg.epoch_samples is None and self.cfg.loss_history > 1:
            self.loss_history[k] = [*self.loss_history[k], normed][-self.cfg.loss_history :]
            normed = torch.stack(self.loss_history[k]).mean(0)
        return gmm_clean_probability(normed, self.cfg.gmm_max_iter, self.cfg.gmm_tol, self.cfg.gmm_reg_covar, self.seed)

    def train_epoch(self, k: int, epoch: int, indices: np.ndarray, prob: np.ndarray) -> dict[str, float]:
        """One DivideMix epoch of network k, using the clean probabilities ``prob`` from the other network."""
        cfg, net, other, opt = self.cfg, self.nets[k], self.nets[1 - k], self.optimizers[k]
        labeled = prob > cfg.p_threshold
        lab_idx, unl_idx = indices[labeled], indices[~labeled]
        weights = torch.zeros(len(self.labels))
        weights[torch.as_tensor(indices)] = torch.as_tensor(prob, dtype=torch.float32)
        if len(lab_idx) < cfg.batch_size:
            self.logger.info(f"net{k + 1}: only {len(lab_idx)} labeled samples; skipping the epoch")
            return {"labeled": float(len(lab_idx))}
        lab_loader = self._loader(lab_idx, 2, cfg.batch_size)
        unl_loader = self._loader(unl_idx, 2, cfg.batch_size) if len(unl_idx) >= cfg.batch_size else None
        unl_iter = iter(unl_loader) if unl_loader is not None else None
        net.train()
        other.eval()
        num_iter = len(lab_loader)
        sums = {"lx": 0.0, "lu": 0.0, "penalty": 0.0}
        for batch_idx, (x1, x2, index) in enumerate(lab_loader):
            x1, x2 = x1.to(self.device), x2.to(self.device)
            batch = x1.shape[0]
            onehot = F.one_hot(self.labels[index], self.num_classes).float().to(self.device)
            w = weights[index].to(self.device)
            with torch.no_grad():
                px = (F.softmax(net(x1), 1) + F.softmax(net(x2), 1)) / 2
                targets_x = co_refine(onehot, w, px, cfg.temperature)
                inputs, targets = [x1, x2], [targets_x, targets_x]
                if unl_iter is not None:
                    try:
                        u1, u2, _ = next(unl_iter)
                    except StopIteration:
                        unl_iter = iter(unl_loader)
                        u1, u2, _ = next(unl_iter)
                    u1, u2 = u1.to(self.device), u2.to(self.device)
                    targets_u = co_guess([F.softmax(m(u), 1) for m in (net, other) for u in (u1, u2)], cfg.temperature)
                    inputs += [u1, u2]
                    targets += [targets_u, targets_u]
            mixed_input, mixed_target, _ = mixmatch(torch.cat(inputs), torch.cat(targets), cfg.alpha)
            logits = net(mixed_input)
            lx, lu = mixmatch_losses(
                logits[: 2 * batch], mixed_target[: 2 * batch], logits[2 * batch :], mixed_target[2 * batch :]
            )
            lamb = linear_rampup(epoch + batch_idx / num_iter, cfg.warmup_epochs, cfg.lambda_u, cfg.rampup_length)
            penalty = uniform_prior_penalty(logits)
            loss = lx + lamb * lu + penalty
            check_finite(loss, self.step, "DivideMix loss")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.step += 1
            sums["lx"] += lx.item()
            sums["lu"] += lu.item()
            sums["penalty"] += penalty.item()
        stats = {key: value / num_iter for key, value in sums.items()}
        stats["labeled"] = float(len(lab_idx))
        if self.clean is not None:
            quality = label_precision_recall(labeled, self.labels[indices], self.clean[indices])
            stats.update({"labeled_precision": quality["precision"], "labeled_recall": quality["recall"]})
        return stats

    def adjust_lr(self, epoch: int) -> float:
        lr = self.cfg.lr * (0.1 if epoch >= self.cfg.lr_decay_epoch else 1.0)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        return lr

    def test(self) -> float:
        """Accuracy of the two-network ensemble (sum of logits) on the clean test split."""
        return evaluate_accuracy(
            self.nets,
            self.test_source,
            self.test_labels,
            self.eval_transform,
            self.device,
            self.cfg.eval_batch_size,
            self.cfg.num_workers,
        )

    def fit(
        self,
        checkpoint_path: str | Path | None = None,
        resume_state: dict[str, Any] | None = None,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Run (or continue) the whole schedule; returns best/last ensemble test accuracy."""
        start = 0
        if resume_state is not None:
            self.load_state_dict(resume_state)
            start = self.epoch + 1
        for epoch in range(start, self.cfg.epochs):
            t0 = time.perf_counter()
            lr = self.adjust_lr(epoch)
            indices = self._epoch_indices(epoch)
            row: dict[str, Any] = {"lr": lr}
            if epoch < self.cfg.warmup_epochs:
                for k in range(2):
                    row[f"warmup_loss{k + 1}"] = self.warmup_epoch(k, indices)
            else:
                probs = [self.clean_probability(k, indices) for k in range(2)]
                for k in range(2):  # net k learns from the division of the other network
                    stats = self.train_epoch(k, epoch, indices, probs[1 - k])
                    row.update({f"{key}{k + 1}": value for key, value in stats.items()})
            acc = self.test()
            self.tracker.update(acc, epoch)
            self.epoch = epoch
            row.update({"test_acc": acc, "epoch_time_s": time.perf_counter() - t0})
            if checkpoint_path is not None:
                save_checkpoint(self.state_dict(), checkpoint_path)
            self.logger.log_epoch(epoch, row)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
        best = self.tracker.best if math.isfinite(self.tracker.best) else math.nan
        return {"best": best, "best_epoch": self.tracker.best_epoch, "last": self.tracker.last}
