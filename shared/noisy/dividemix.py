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
     random permutation of the concatenated batch (both drawn from the run's own generator);
  4. loss = L_x (soft CE on the mixed labeled part) + lambda_u(t) L_u (MSE of probabilities on the mixed
     unlabeled part; lambda_u ramped linearly over 16 epochs after warm-up) + the uniform-prior penalty
     KL(u || mean softmax).
Warm-up trains both networks with CE on the noisy labels (plus the negative-entropy confidence penalty for
asymmetric noise and always on Clothing1M). Test prediction: the sum of both networks' logits.

Defaults (:func:`cifar_defaults`, :func:`clothing1m_defaults`) follow the released DivideMix scripts
(``Train_cifar.py``, ``Train_clothing1M.py``; shared/noisy/README.md, "DivideMix settings").
The engine reads images through :class:`shared.noisy.data.ViewDataset`; labels and clean probabilities live in
tensors indexed by sample, so a package can hand in any label file (e.g. DMLP's purified labels).

:class:`DivideMix` is built to be subclassed (anm, crema): ``train_epoch`` is a sequence of overridable steps,
listed in shared/noisy/README.md, "Extending the engine".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import betaincinv
from sklearn.mixture import GaussianMixture
from torch import nn
from torch.utils.data import DataLoader

from shared.checkpoint import capture_rng_state, reseed_other_ranks, restore_rng_state
from shared.logger import RunLogger
from shared.noisy.data import ViewDataset, balanced_subset
from shared.noisy.loop import EpochTrainer
from shared.noisy.metrics import AccuracyTracker, label_precision_recall
from shared.noisy.supervised import evaluate_accuracy, set_learning_rate
from shared.training import check_finite

__all__ = [
    "DivideMix",
    "DivideMixConfig",
    "MixBatch",
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
    "sample_beta",
    "sharpen",
    "uniform_prior_kl",
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
    asym_penalty: bool = field(
        default=False,
        metadata={"help": "negative-entropy confidence penalty in warm-up (CIFAR asym noise; always on Clothing1M)"},
    )
    loss_history: int = field(default=1, metadata={"help": "average the GMM input over this many epochs (5 at 90%)"})
    gmm_max_iter: int = 10
    gmm_tol: float = 1e-2
    gmm_reg_covar: float = 5e-4
    epoch_samples: int | None = field(
        default=None,
        metadata={
            "help": "Clothing1M: each network's co-divide (eval_train) set is a fresh class-balanced sample of this "
            "size per epoch (num_batches x batch_size = 32 000); null: the whole training set"
        },
    )
    warmup_samples: int | None = field(
        default=None,
        metadata={
            "help": "Clothing1M: each network warms up on a class-balanced sample of this size "
            "(num_batches x batch_size x 2 = 64 000); null: the whole training set"
        },
    )
    mix_forward: Literal["all", "labeled"] = field(
        default="all",
        metadata={
            "help": "all: forward every mixed row (Train_cifar.py); labeled: mix over all 4B rows but forward only "
            "the first 2B (Train_clothing1M.py: no L_u, penalty over 2B); needs lambda_u = 0"
        },
    )
    num_workers: int = 0
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        if self.mix_forward not in ("all", "labeled"):
            raise ValueError(f"mix_forward must be 'all' or 'labeled', got {self.mix_forward!r}")
        if self.mix_forward == "labeled" and self.lambda_u != 0:
            raise ValueError(
                f"mix_forward='labeled' drops the unlabeled loss, so lambda_u must be 0 (got {self.lambda_u})"
            )


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
    """DivideMix's ``Train_clothing1M.py``: batch 32 (warm-up 64), num_batches 1 000, epochs 0..80 (81 loops, the
    first one warm-up), lr 0.002 (/10 from epoch 40), weight decay 1e-3, alpha 0.5, lambda_u 0, p_threshold 0.5.

    Per epoch each network warms up on a class-balanced sample of 1 000 x 32 x 2 = 64 000 images (CE + the
    confidence penalty, always), and later divides a fresh class-balanced sample of 1 000 x 32 = 32 000 images
    (``eval_train``); the mixed batch is drawn over all 4B rows but only the first 2B are forwarded (no L_u)."""
    return DivideMixConfig(
        epochs=81,
        warmup_epochs=1,
        batch_size=32,
        warmup_batch_size=64,
        lr=0.002,
        weight_decay=1e-3,
        lr_decay_epoch=40,
        alpha=0.5,
        lambda_u=0.0,
        asym_penalty=True,
        epoch_samples=1000 * 32,
        warmup_samples=1000 * 32 * 2,
        mix_forward="labeled",
    )


# ----------------------------------------------------------------------------------------------- building blocks
def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^(1/T) renormalised over the last dimension (MixMatch Eq. 7)."""
    p = p.pow(1.0 / temperature)
    return p / p.sum(dim=-1, keepdim=True)


def mixmatch_lambda(lam: float | torch.Tensor) -> float | torch.Tensor:
    """lambda' = max(lambda, 1 - lambda): the mixed sample stays closer to its first input (MixMatch Eq. 9)."""
    return torch.maximum(lam, 1 - lam) if isinstance(lam, torch.Tensor) else max(lam, 1 - lam)


def sample_beta(alpha: float, generator: torch.Generator | None = None) -> float:
    """One draw of Beta(alpha, alpha) from ``generator`` (inverse CDF of a uniform draw); 1.0 when alpha <= 0."""
    if alpha <= 0:
        return 1.0
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    return float(betaincinv(alpha, alpha, u))


def mixmatch(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    generator: torch.Generator | None = None,
    num_forward: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """MixUp with lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha), against a random permutation.

    Lambda and the permutation come from ``generator`` (the run's own; torch's global generator when None).
    ``num_forward`` keeps only the first rows of the mixed batch (their partners are drawn from all rows), as
    ``Train_clothing1M.py`` does with its 2B labeled rows.
    """
    lam = mixmatch_lambda(sample_beta(alpha, generator))
    perm = torch.randperm(inputs.shape[0], generator=generator).to(inputs.device)
    rows = slice(0, inputs.shape[0] if num_forward is None else num_forward)
    perm = perm[rows]
    return lam * inputs[rows] + (1 - lam) * inputs[perm], lam * targets[rows] + (1 - lam) * targets[perm], lam


def mixmatch_losses(
    logits_x: torch.Tensor, targets_x: torch.Tensor, logits_u: torch.Tensor, targets_u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_x = mean soft cross-entropy; L_u = mean over samples and classes of (softmax - target)^2."""
    lx = -(F.log_softmax(logits_x, dim=1) * targets_x).sum(1).mean()
    lu = ((F.softmax(logits_u, dim=1) - targets_u) ** 2).mean() if logits_u.numel() else logits_x.new_zeros(())
    return lx, lu


def uniform_prior_kl(probs: torch.Tensor) -> torch.Tensor:
    """KL(u || p_bar) = sum_c (1/C) log((1/C) / p_bar_c), p_bar = the batch mean of ``probs`` (``B x C``)."""
    num_classes = probs.shape[1]
    prior = torch.full((num_classes,), 1.0 / num_classes, device=probs.device, dtype=probs.dtype)
    return (prior * (prior.log() - probs.mean(0).log())).sum()


def uniform_prior_penalty(logits: torch.Tensor) -> torch.Tensor:
    """DivideMix's penalty: :func:`uniform_prior_kl` of the softmax of ``logits``."""
    return uniform_prior_kl(F.softmax(logits, dim=1))


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
@dataclass
class MixBatch:
    """What one DivideMix step mixes: input groups and one target per group, plus what produced them.

    ``labeled`` / ``unlabeled`` are lists of input groups (each ``B x ...`` on the device) and
    ``labeled_targets`` / ``unlabeled_targets`` the matching ``B x C`` targets; MixMatch concatenates
    ``labeled + unlabeled`` in that order, L_x covers the labeled rows and L_u the unlabeled ones. A hook may
    append groups (e.g. masked images with modulated targets) to either side.

    Attributes:
        views_x, views_u: every view the loaders delivered for the labeled / unlabeled items (device tensors).
        index_x, index_u: their sample indices (CPU int64).
        w_x, w_u: their clean probabilities (from the other network's co-divide).
        targets_x: co-refined targets of the labeled items; targets_u: co-guessed targets of the unlabeled ones.
        feature_maps_x, feature_maps_u: the trained network's last feature maps of the first guessing view
            (``B x C x h x w``, no grad), when :attr:`DivideMix.need_feature_maps` is set; else None.
        extras: free room for a subclass (e.g. masking ratios for its loss).
    """

    labeled: list[torch.Tensor]
    labeled_targets: list[torch.Tensor]
    unlabeled: list[torch.Tensor]
    unlabeled_targets: list[torch.Tensor]
    views_x: list[torch.Tensor]
    views_u: list[torch.Tensor]
    index_x: torch.Tensor
    index_u: torch.Tensor | None
    w_x: torch.Tensor
    w_u: torch.Tensor | None
    targets_x: torch.Tensor
    targets_u: torch.Tensor | None
    feature_maps_x: torch.Tensor | None = None
    feature_maps_u: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_labeled_rows(self) -> int:
        return sum(int(g.shape[0]) for g in self.labeled)

    def inputs(self) -> torch.Tensor:
        return torch.cat([*self.labeled, *self.unlabeled])

    def targets(self) -> torch.Tensor:
        return torch.cat([*self.labeled_targets, *self.unlabeled_targets])


class DivideMix(EpochTrainer):
    """The two-network DivideMix trainer on one process, built from overridable steps. ``fit`` runs the schedule
    (:class:`shared.noisy.loop.EpochTrainer`; each epoch is :meth:`epoch_row`); :meth:`for_task` builds the engine
    from a package's task.

    Args:
        net1, net2: the two networks (same architecture, different initialisation), on ``device``; they follow the
            model API of :mod:`shared.noisy.models` (``forward_feature_map``, ``pool``, ``forward_head``).
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
        seed: seeds the GMM, the Clothing1M epoch samples and the run's MixMatch generator.

    Class attributes a subclass may change:
        guess_views: which loaded views feed co-refinement and co-guessing (default the two views).
        mix_views: which loaded views enter MixMatch as input groups (default the same two).
        need_feature_maps: hand the trained network's feature maps of the first guessing view to the batch.
    """

    guess_views: tuple[int, ...] = (0, 1)
    mix_views: tuple[int, ...] = (0, 1)
    need_feature_maps: bool = False

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
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizers = [
            torch.optim.SGD(n.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            for n in self.nets
        ]
        self.loss_history: list[list[torch.Tensor]] = [[], []]
        self.tracker = AccuracyTracker()
        self.epoch, self.step = 0, 0

    @classmethod
    def for_task(
        cls,
        task: Any,
        nets: Sequence[nn.Module],
        cfg: DivideMixConfig,
        device: torch.device,
        logger: RunLogger,
        labels: Any | None = None,
        **kwargs: Any,
    ) -> DivideMix:
        """The engine on a package's task (:class:`shared.noisy.data.NoisyTaskBase`: sources, transforms, labels).

        Args:
            task: the training and test data; its ``clean_labels`` feed the label-quality log.
            nets: the two networks, on ``device``.
            labels: the training labels (default: ``task.noisy_labels``; e.g. DMLP's purified labels).
            **kwargs: ``seed`` and a subclass's own arguments.
        """
        return cls(
            nets[0],
            nets[1],
            task.train_source,
            task.noisy_labels if labels is None else labels,
            task.num_classes,
            task.train_transform,
            task.eval_transform,
            task.test_source,
            task.test_labels,
            cfg,
            device,
            logger,
            clean_labels=task.clean_labels,
            **kwargs,
        )

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
            "mix_generator": self.generator.get_state(),
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
        reseed_other_ranks()  # under torch.distributed, ranks other than 0 draw their own streams again
        if "mix_generator" in state:
            self.generator.set_state(state["mix_generator"])

    # -- data
    def view_transforms(self, role: str) -> list[Callable]:
        """The per-item views a loader delivers: ``role`` is "warmup" (default one view), "labeled" or "unlabeled"
        (default two views). Each entry is an image -> tensor transform; override to add views (ANM: 6)."""
        if role not in ("warmup", "labeled", "unlabeled"):
            raise ValueError(f"role must be warmup, labeled or unlabeled, got {role!r}")
        return [self.train_transform] * (1 if role == "warmup" else 2)

    def _balanced(self, size: int | None, epoch: int, k: int, salt: int) -> np.ndarray:
        if size is None:
            return np.arange(len(self.labels))
        rng = np.random.default_rng([self.seed, epoch, k, salt])
        return balanced_subset(self.labels.numpy(), size, self.num_classes, rng)

    def warmup_indices(self, epoch: int, k: int) -> np.ndarray:
        """Samples network k warms up on in ``epoch`` (``cfg.warmup_samples``: a fresh class-balanced draw)."""
        return self._balanced(self.cfg.warmup_samples, epoch, k, 0)

    def divide_indices(self, epoch: int, k: int) -> np.ndarray:
        """Samples network k's co-divide covers in ``epoch`` (``cfg.epoch_samples``: a fresh class-balanced draw)."""
        return self._balanced(self.cfg.epoch_samples, epoch, k, 1)

    def _loader(self, indices: np.ndarray, role: str, batch_size: int) -> DataLoader:
        dataset = ViewDataset(self.source, self.view_transforms(role), indices=indices)
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=self.cfg.num_workers
        )

    # -- warm-up
    def warmup_loss(self, k: int, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """CE on the given labels (+ the negative-entropy confidence penalty when ``cfg.asym_penalty``)."""
        loss = F.cross_entropy(logits, targets)
        return loss + neg_entropy(logits) if self.cfg.asym_penalty else loss

    def warmup_epoch(self, k: int, indices: np.ndarray) -> float:
        """One warm-up pass of network k over ``indices`` (batch ``cfg.warmup_batch_size``)."""
        net = self.nets[k]
        net.train()
        total, count = 0.0, 0
        for *views, index in self._loader(indices, "warmup", self.cfg.warmup_batch_size):
            logits = net(views[0].to(self.device))
            loss = self.warmup_loss(k, logits, self.labels[index].to(self.device))
            check_finite(loss, self.step, "DivideMix warm-up loss")
            self.optimizer_step(k, loss, warmup=True)
            total, count = total + loss.item() * len(index), count + len(index)
        return total / max(count, 1)

    # -- co-divide
    def sample_losses(self, k: int, indices: np.ndarray) -> torch.Tensor:
        """``eval_train``: network k's per-sample CE on the un-augmented images of ``indices``."""
        return per_sample_loss(
            self.nets[k],
            self.source,
            self.labels,
            self.eval_transform,
            self.device,
            indices,
            self.cfg.eval_batch_size,
            self.cfg.num_workers,
        )

    def clean_probability(self, k: int, indices: np.ndarray) -> np.ndarray:
        """Network k's GMM clean probability of each sample in ``indices`` (min-max normalised loss, history)."""
        losses = self.sample_losses(k, indices)
        span = losses.max() - losses.min()
        normed = (losses - losses.min()) / (span if span > 0 else 1.0)
        if self.cfg.epoch_samples is None and self.cfg.loss_history > 1:
            self.loss_history[k] = [*self.loss_history[k], normed][-self.cfg.loss_history :]
            normed = torch.stack(self.loss_history[k]).mean(0)
        return gmm_clean_probability(normed, self.cfg.gmm_max_iter, self.cfg.gmm_tol, self.cfg.gmm_reg_covar, self.seed)

    def co_divide(self, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(indices, clean probability) of each network's division; network k then trains on entry 1 - k."""
        divisions = []
        for k in range(2):
            indices = self.divide_indices(epoch, k)
            divisions.append((indices, self.clean_probability(k, indices)))
        return divisions

    # -- one training step, in pieces
    def _predict(self, net: nn.Module, x: torch.Tensor, keep_map: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not keep_map:
            return F.softmax(net(x), 1), None
        fmap = net.forward_feature_map(x)
        return F.softmax(net.forward_head(net.pool(fmap)), 1), fmap

    @torch.no_grad()
    def prepare_batch(
        self,
        k: int,
        views_x: list[torch.Tensor],
        index_x: torch.Tensor,
        views_u: list[torch.Tensor] | None,
        index_u: torch.Tensor | None,
        weights: torch.Tensor,
    ) -> MixBatch:
        """Label co-refinement of the labeled items and co-guessing of the unlabeled ones (no grad).

        ``weights`` holds every sample's clean probability (indexed by sample). The guessing views are
        :attr:`guess_views`, the MixMatch groups :attr:`mix_views`, each paired with the refined / guessed target.
        """
        net, other = self.nets[k], self.nets[1 - k]
        cfg = self.cfg
        onehot = F.one_hot(self.labels[index_x], self.num_classes).float().to(self.device)
        w_x = weights[index_x].to(self.device)
        keep = self.need_feature_maps
        probs, fmap_x = [], None
        for i, v in enumerate(self.guess_views):
            p, fmap = self._predict(net, views_x[v], keep and i == 0)
            probs.append(p)
            fmap_x = fmap if i == 0 else fmap_x
        targets_x = co_refine(onehot, w_x, torch.stack(probs).mean(0), cfg.temperature)
        batch = MixBatch(
            labeled=[views_x[v] for v in self.mix_views],
            labeled_targets=[targets_x] * len(self.mix_views),
            unlabeled=[],
            unlabeled_targets=[],
            views_x=views_x,
            views_u=views_u or [],
            index_x=index_x,
            index_u=index_u,
            w_x=w_x,
            w_u=None,
            targets_x=targets_x,
            targets_u=None,
            feature_maps_x=fmap_x,
        )
        if views_u is not None:
            probs, fmap_u = [], None
            for model in (net, other):
                for i, v in enumerate(self.guess_views):
                    p, fmap = self._predict(model, views_u[v], keep and model is net and i == 0)
                    probs.append(p)
                    fmap_u = fmap if fmap is not None else fmap_u
            batch.targets_u = co_guess(probs, cfg.temperature)
            batch.w_u = weights[index_u].to(self.device)
            batch.feature_maps_u = fmap_u
            batch.unlabeled = [views_u[v] for v in self.mix_views]
            batch.unlabeled_targets = [batch.targets_u] * len(self.mix_views)
        return batch

    def augment_batch(self, k: int, batch: MixBatch) -> MixBatch:
        """Hook: append extra input groups with their targets before MixMatch (identity by default)."""
        return batch

    def mixmatch(self, batch: MixBatch) -> tuple[torch.Tensor, torch.Tensor, float]:
        """MixMatch over ``labeled + unlabeled`` with the run's generator; with ``cfg.mix_forward == "labeled"`` only
        the labeled rows are kept (their partners come from all rows)."""
        num_forward = batch.num_labeled_rows if self.cfg.mix_forward == "labeled" else None
        return mixmatch(batch.inputs(), batch.targets(), self.cfg.alpha, self.generator, num_forward)

    def extra_loss(
        self, k: int, batch: MixBatch, logits: torch.Tensor, mixed_target: torch.Tensor
    ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Hook: an auxiliary loss term added to the DivideMix loss, with its log values (none by default)."""
        return None, {}

    def compute_loss(
        self, k: int, batch: MixBatch, logits: torch.Tensor, mixed_target: torch.Tensor, progress: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """L_x + lambda_u(progress) L_u + KL(u || mean softmax) + :meth:`extra_loss`; returns (loss, log values).

        ``progress`` is the fractional epoch (epoch + batch / iterations) of the lambda_u ramp-up.
        """
        cfg = self.cfg
        n = batch.num_labeled_rows
        lx, lu = mixmatch_losses(logits[:n], mixed_target[:n], logits[n:], mixed_target[n:])
        lamb = linear_rampup(progress, cfg.warmup_epochs, cfg.lambda_u, cfg.rampup_length)
        penalty = uniform_prior_penalty(logits)
        loss = lx + lamb * lu + penalty
        stats = {"lx": lx.item(), "lu": lu.item(), "penalty": penalty.item()}
        extra, extra_stats = self.extra_loss(k, batch, logits, mixed_target)
        if extra is not None:
            loss = loss + extra
            stats.update(extra_stats)
        return loss, stats

    def optimizer_step(self, k: int, loss: torch.Tensor, warmup: bool = False) -> None:
        """Backward and one SGD step of network k (override for gradient clipping, AMP, extra modules)."""
        opt = self.optimizers[k]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.step += 1

    def train_step(
        self,
        k: int,
        views_x: list[torch.Tensor],
        index_x: torch.Tensor,
        views_u: list[torch.Tensor] | None,
        index_u: torch.Tensor | None,
        weights: torch.Tensor,
        progress: float,
    ) -> dict[str, float]:
        """prepare_batch -> augment_batch -> mixmatch -> forward -> compute_loss -> optimizer_step."""
        batch = self.prepare_batch(k, views_x, index_x, views_u, index_u, weights)
        batch = self.augment_batch(k, batch)
        mixed_input, mixed_target, _ = self.mixmatch(batch)
        logits = self.nets[k](mixed_input)
        loss, stats = self.compute_loss(k, batch, logits, mixed_target, progress)
        check_finite(loss, self.step, "DivideMix loss")
        self.optimizer_step(k, loss)
        return stats

    def train_epoch(self, k: int, epoch: int, indices: np.ndarray, prob: np.ndarray) -> dict[str, float]:
        """One DivideMix epoch of network k, using the clean probabilities ``prob`` (of ``indices``) from the other
        network."""
        cfg, net, other = self.cfg, self.nets[k], self.nets[1 - k]
        labeled = prob > cfg.p_threshold
        lab_idx, unl_idx = indices[labeled], indices[~labeled]
        weights = torch.zeros(len(self.labels))
        weights[torch.as_tensor(indices)] = torch.as_tensor(prob, dtype=torch.float32)
        if len(lab_idx) < cfg.batch_size:
            self.logger.info(f"net{k + 1}: only {len(lab_idx)} labeled samples; skipping the epoch")
            return {"labeled": float(len(lab_idx))}
        lab_loader = self._loader(lab_idx, "labeled", cfg.batch_size)
        unl_loader = self._loader(unl_idx, "unlabeled", cfg.batch_size) if len(unl_idx) >= cfg.batch_size else None
        unl_iter = iter(unl_loader) if unl_loader is not None else None
        net.train()
        other.eval()
        num_iter = len(lab_loader)
        sums: dict[str, float] = {}
        for batch_idx, (*views_x, index_x) in enumerate(lab_loader):
            views_u, index_u = None, None
            if unl_iter is not None:
                try:
                    *views_u, index_u = next(unl_iter)
                except StopIteration:
                    unl_iter = iter(unl_loader)
                    *views_u, index_u = next(unl_iter)
                views_u = [v.to(self.device) for v in views_u]
            stats = self.train_step(
                k,
                [v.to(self.device) for v in views_x],
                index_x,
                views_u,
                index_u,
                weights,
                epoch + batch_idx / num_iter,
            )
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
        result = {key: value / num_iter for key, value in sums.items()}
        result["labeled"] = float(len(lab_idx))
        if self.clean is not None:
            quality = label_precision_recall(labeled, self.labels[indices], self.clean[indices])
            result.update({"labeled_precision": quality["precision"], "labeled_recall": quality["recall"]})
        return result

    def adjust_lr(self, epoch: int) -> float:
        return set_learning_rate(self.optimizers, self.cfg.lr * (0.1 if epoch >= self.cfg.lr_decay_epoch else 1.0))

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

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Warm-up or co-divide + one training pass of each network; returns the epoch's log values."""
        row: dict[str, Any] = {}
        if epoch < self.cfg.warmup_epochs:
            for k in range(2):
                row[f"warmup_loss{k + 1}"] = self.warmup_epoch(k, self.warmup_indices(epoch, k))
            return row
        divisions = self.co_divide(epoch)
        for k in range(2):  # net k learns from the division of the other network
            indices, prob = divisions[1 - k]
            stats = self.train_epoch(k, epoch, indices, prob)
            row.update({f"{key}{k + 1}": value for key, value in stats.items()})
        return row

    @property
    def num_epochs(self) -> int:
        return self.cfg.epochs

    def epoch_row(self, epoch: int) -> dict[str, Any]:
        """The epoch's learning rate, :meth:`run_epoch`, then the ensemble's test accuracy (every epoch)."""
        t0 = time.perf_counter()
        row: dict[str, Any] = {"lr": self.adjust_lr(epoch)}
        row.update(self.run_epoch(epoch))
        acc = self.test()
        self.tracker.update(acc, epoch)
        row.update({"test_acc": acc, "epoch_time_s": time.perf_counter() - t0})
        return row
