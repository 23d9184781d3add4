"""The CREMA training loop (README, Method): one network by default, two co-divided networks as an option.

Each epoch, for every network k:
  1. credibility pass: softmax of every (epoch-sampled) training input without augmentation, in eval mode;
     c_i = credibility(p_i, given y_i) and argmax_i go into net k's ring-buffer memory;
  2. warm-up epochs: CE on the given labels;
  3. after warm-up: coarse split by a GMM on the credibility of the dividing network (k itself, or the other network
     when co-divided); memory-based weights omega for the clean set; selective label update of the noisy set with
     reversion; one epoch of :func:`crema.losses.crema_loss` over the clean set, the updated samples and (switch)
     the other noisy samples;
then the clean test split is evaluated (sum of both networks' logits with two networks).

Runs in one process or under torchrun (DDP; the training batches are sharded by a DistributedSampler). DDP
broadcasts the buffers only at the start of a training forward, so after an epoch each rank holds the BatchNorm
running statistics of its own last batch; the credibility pass and the test therefore first copy rank 0's parameters
and buffers to every rank (``broadcast_module``); each rank predicts its share of the pass and the shares are
gathered, so every rank makes the same split, label update and selection and runs the same number of batches. The
full state (networks, optimizers, memories, updated labels, RNG states, tracker) is checkpointed, and a resumed run
ends bit-identical on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from crema.config import PACKAGE, Config
from crema.credibility import CredibilityMemory, coarse_split, credibility, modulation_weights, selective_label_update
from crema.data import NoisyTask
from crema.losses import CLEAN, REST, UPDATED, crema_loss, warmup_loss
from shared.checkpoint import restore_training_state, training_state
from shared.distributed import DistContext, all_reduce_mean, broadcast_module
from shared.logger import RunLogger
from shared.noisy.data import ViewDataset, balanced_subset
from shared.noisy.loop import EpochTrainer
from shared.noisy.metrics import AccuracyTracker, label_accuracy, label_precision_recall
from shared.noisy.supervised import evaluate_accuracy, set_learning_rate
from shared.training import make_grad_scaler, optimizer_step

__all__ = ["LOG_KEYS", "CremaTrainer"]

#: Per-epoch log columns (every epoch writes all of them; NaN where an entry does not apply, e.g. in warm-up).
LOG_KEYS = (
    "lr",
    "loss",
    "clean_n",
    "clean_precision",
    "clean_recall",
    "weight_mean_correct",
    "weight_mean_wrong",
    "updated_n",
    "updated_changed",
    "updated_label_acc",
    "reversions",
    "test_acc",
    "epoch_time_s",
)


class CremaTrainer(EpochTrainer):
    """CREMA on one task.

    Args:
        nets: one or two networks on ``ctx.device``.
        task: data, labels and transforms (:func:`crema.data.build_task`).
        cfg: the run config (``optim`` and ``method`` sections are read).
        ctx: process context.
        logger: run logger (rank 0 writes).
        histograms: optional TensorBoard ``SummaryWriter`` for the weight histogram (rank 0).
    """

    def __init__(
        self,
        nets: list[nn.Module],
        task: NoisyTask,
        cfg: Config,
        ctx: DistContext,
        logger: RunLogger,
        histograms: Any | None = None,
    ):
        self.nets, self.task, self.cfg, self.ctx, self.logger = nets, task, cfg, ctx, logger
        self.histograms = histograms
        self.device = ctx.device
        self.method, self.optim = cfg.method, cfg.optim
        n = len(task.noisy_labels)
        self.given = task.noisy_labels.long().to(self.device)
        self.clean = None if task.clean_labels is None else task.clean_labels.long().to(self.device)
        self.optimizers = [self._optimizer(net) for net in nets]
        self.memories = [CredibilityMemory(n, self.method.memory_length, self.device) for _ in nets]
        self.updates = [torch.full((n,), -1, dtype=torch.int64, device=self.device) for _ in nets]
        self.train_nets = [self._wrap(net) for net in nets]
        self.scaler = make_grad_scaler(self.device, "off")  # fp32: a disabled scaler is a plain, checked step
        self.tracker = AccuracyTracker()
        self.epoch, self.step = -1, 0

    def _optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        o = self.optim
        if o.optimizer == "adam":
            return torch.optim.Adam(net.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        return torch.optim.SGD(net.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)

    def _wrap(self, net: nn.Module) -> nn.Module:
        if not self.ctx.distributed:
            return net
        device_ids = [self.ctx.local_rank] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(net, device_ids=device_ids)

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        parts: dict[str, Any] = {}
        for k, (net, opt) in enumerate(zip(self.nets, self.optimizers, strict=True)):
            parts[f"net{k + 1}"], parts[f"opt{k + 1}"] = net, opt
        state = training_state(PACKAGE, self.cfg, **parts)
        state.update(
            memories=[m.state_dict() for m in self.memories],
            updates=[u.cpu() for u in self.updates],
            tracker=self.tracker.state_dict(),
            epoch=self.epoch,
            step=self.step,
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        parts: dict[str, Any] = {}
        for k, (net, opt) in enumerate(zip(self.nets, self.optimizers, strict=True)):
            parts[f"net{k + 1}"], parts[f"opt{k + 1}"] = net, opt
        if len(state["memories"]) != len(self.nets):
            raise ValueError(f"checkpoint holds {len(state['memories'])} network(s), the config {len(self.nets)}")
        for memory, saved in zip(self.memories, state["memories"], strict=True):
            memory.load_state_dict(saved)
        self.updates = [u.to(self.device) for u in state["updates"]]
        self.tracker.load_state_dict(state["tracker"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        restore_training_state(state, **parts)

    # ------------------------------------------------------------------------------------------------ pieces
    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """All training samples, or DivideMix's class-balanced Clothing1M epoch sample: ``data.epoch_samples``
        images, in warm-up epochs ``data.warmup_epoch_samples`` when set."""
        n, d = len(self.given), self.cfg.data
        size = d.epoch_samples
        if epoch < self.method.warmup_epochs and d.warmup_epoch_samples is not None:
            size = d.warmup_epoch_samples
        if size is None:
            return torch.arange(n)
        rng = np.random.default_rng([self.cfg.seed, epoch])
        subset = balanced_subset(self.given.cpu().numpy(), size, self.task.num_classes, rng)
        return torch.from_numpy(subset)

    def sync_nets(self, ks: list[int] | None = None) -> None:
        """Under torchrun: rank 0's parameters and buffers (BatchNorm running statistics) on every rank. DDP
        broadcasts buffers only when a training forward starts, so after an epoch the ranks' buffers differ and the
        eval-mode predictions would too. Nothing happens in one process."""
        if self.ctx.distributed:
            for k in range(len(self.nets)) if ks is None else ks:
                broadcast_module(self.nets[k])

    @torch.no_grad()
    def predict(self, k: int, indices: torch.Tensor, transform: Callable) -> torch.Tensor:
        """Softmax of network k on the samples ``indices`` (eval mode), ``len(indices) x C`` on the device."""
        net, source, batch = self.nets[k], self.task.train_source, self.optim.eval_batch_size
        was_training = net.training
        net.eval()
        out = []
        if isinstance(source, torch.Tensor) and transform is self.task.eval_transform:
            for s in range(0, len(indices), batch):
                images = transform(source[indices[s : s + batch]]).to(self.device)
                out.append(F.softmax(net(images), 1))
        else:
            loader = DataLoader(
                ViewDataset(source, transform, 1, indices.numpy()),
                batch_size=batch,
                num_workers=self.cfg.data.num_workers,
            )
            out = [F.softmax(net(images.to(self.device)), 1) for images, _ in loader]
        net.train(was_training)
        return torch.cat(out)

    def _predict_shared(self, k: int, indices: torch.Tensor, transform: Callable) -> torch.Tensor:
        """:meth:`predict` on all of ``indices``: under torchrun each rank predicts one contiguous share and the shares
        are gathered (padded to the longest for ``all_gather``), so every rank holds all the predictions."""
        if not self.ctx.distributed:
            return self.predict(k, indices, transform)
        shares = indices.tensor_split(self.ctx.world_size)
        mine = shares[self.ctx.rank]
        longest = max(len(share) for share in shares)
        padded = torch.zeros(longest, self.task.num_classes, device=self.device)
        if len(mine):
            padded[: len(mine)] = self.predict(k, mine, transform)
        parts = [torch.empty_like(padded) for _ in shares]
        dist.all_gather(parts, padded)
        return torch.cat([part[: len(share)] for part, share in zip(parts, shares)])

    def credibility_pass(self, k: int, indices: torch.Tensor) -> torch.Tensor:
        """Step 1: credibility of the given labels under network k, pushed into its memory; returns the softmax.

        Under torchrun every rank predicts its share of ``indices`` with rank 0's weights and buffers, and the shares
        are gathered, so every rank holds the same predictions and the memories, splits and selections agree."""
        self.sync_nets([k])
        probs = self._predict_shared(k, indices, self.task.eval_transform)
        view = None
        if self.method.credibility == "agreement":
            view = self._predict_shared(k, indices, self.task.train_transform)
        if not torch.isfinite(probs).all():
            raise FloatingPointError(
                f"network {k + 1} predicts non-finite probabilities after step {self.step}: the run diverged "
                "(lower optim.lr); the last good checkpoint is kept"
            )
        given = self.given[indices.to(self.device)]
        scores = credibility(probs, given, self.method.credibility, view)
        self.memories[k].push(indices, scores, probs.argmax(1))
        return probs

    def _loader(self, indices: torch.Tensor, batch_size: int, epoch: int, k: int) -> DataLoader:
        dataset = ViewDataset(self.task.train_source, self.task.train_transform, 1, indices.numpy())
        seed = self.cfg.seed * 1000 + k
        if self.ctx.distributed:
            sampler = DistributedSampler(
                dataset, self.ctx.world_size, self.ctx.rank, shuffle=True, seed=seed, drop_last=True
            )
            sampler.set_epoch(epoch)
            return DataLoader(dataset, batch_size, sampler=sampler, num_workers=self.cfg.data.num_workers)
        generator = torch.Generator().manual_seed(seed * 100003 + epoch)
        return DataLoader(
            dataset,
            batch_size,
            shuffle=True,
            generator=generator,
            drop_last=True,
            num_workers=self.cfg.data.num_workers,
        )

    def _optimise(self, k: int, loss: torch.Tensor, what: str) -> None:
        optimizer_step(loss, self.optimizers[k], self.scaler, self.step, what=what)
        self.step += 1

    def warmup_epoch(self, k: int, epoch: int, indices: torch.Tensor) -> float:
        """Step 2: CE on the given labels for network k."""
        net = self.train_nets[k]
        net.train()
        total, count = 0.0, 0
        batch_size = min(self.optim.warmup_batch_size or self.optim.batch_size, len(indices))
        for images, index in self.logger.progress(self._loader(indices, batch_size, epoch, k), f"warm-up {epoch}"):
            logits = net(images.to(self.device))
            loss = warmup_loss(logits, self.given[index.to(self.device)], self.method.warmup_penalty)
            self._optimise(k, loss, "CREMA warm-up loss")
            total, count = total + loss.item() * len(index), count + len(index)
        return all_reduce_mean(total / max(count, 1))

    def plan(self, k: int, indices: torch.Tensor, probs: list[torch.Tensor]) -> dict[str, Any]:
        """Step 3 for network k: split, weights and label update over the epoch's samples ``indices``."""
        m, n_nets = self.method, len(self.nets)
        divider = 1 - k if n_nets == 2 else k
        idx = indices.to(self.device)
        memory = self.memories[divider]
        if m.split == "none":
            clean = torch.ones(len(idx), dtype=torch.bool, device=self.device)
        else:
            scores = memory.mean()[idx] if m.split_on == "memory_mean" else memory.last()[idx]
            _, clean = coarse_split(
                scores, m.p_threshold, m.gmm_max_iter, m.gmm_tol, m.gmm_reg_covar, seed=self.cfg.seed
            )
        weights = modulation_weights(memory, m.modulation, m.weight_min)[idx]
        roles = torch.where(clean, CLEAN, REST)
        labels = self.given[idx].clone()
        update = None
        if m.label_update:
            # the rule is tested on this epoch's samples only: with data.epoch_samples, a sample outside the draw
            # keeps its updated label (it is re-tested when it is drawn again) and is not counted as reverted
            other = probs[1 - k].argmax(1) if n_nets == 2 and m.update_agreement else None
            stable = self.memories[k].stable()[idx] if m.update_stable else None
            update = selective_label_update(
                probs[k], self.given[idx], ~clean, self.updates[k][idx], m.update_threshold, stable, other
            )
            updates = self.updates[k].clone()
            updates[idx] = update.labels
            self.updates[k] = updates
            new = update.labels
            roles = torch.where(new >= 0, UPDATED, roles)
            labels = torch.where(new >= 0, new, labels)
        return {"clean": clean, "weights": weights, "roles": roles, "labels": labels, "update": update}

    def train_epoch(
        self, k: int, epoch: int, indices: torch.Tensor, plan: dict[str, Any], probs: torch.Tensor
    ) -> float:
        """Step 5: one epoch of the CREMA loss for network k over the planned samples."""
        m = self.method
        keep = plan["roles"] != REST
        if m.noisy_rest == "consistency":
            keep = torch.ones_like(keep)
        position = torch.full((len(self.given),), -1, dtype=torch.int64, device=self.device)
        position[indices.to(self.device)] = torch.arange(len(indices), device=self.device)
        chosen = indices[keep.cpu()]
        batch_size = min(self.optim.batch_size, len(chosen))
        if batch_size < 2:
            self.logger.info(f"net{k + 1}: {len(chosen)} samples selected; epoch {epoch} skipped")
            return math.nan
        net = self.train_nets[k]
        net.train()
        total, count = 0.0, 0
        for images, index in self.logger.progress(self._loader(chosen, batch_size, epoch, k), f"epoch {epoch}"):
            pos = position[index.to(self.device)]
            logits = net(images.to(self.device))
            loss, _ = crema_loss(
                logits,
                plan["labels"][pos],
                plan["roles"][pos],
                plan["weights"][pos],
                probs[pos],
                m.consistency_weight,
                m.sharpen_temperature,
                m.prior_weight,
            )
            self._optimise(k, loss, "CREMA loss")
            total, count = total + loss.item() * len(index), count + len(index)
        return all_reduce_mean(total / max(count, 1))

    def set_lr(self, epoch: int) -> float:
        lr = self.optim.lr * self.optim.gamma ** sum(epoch >= mile for mile in self.optim.milestones)
        return set_learning_rate(self.optimizers, lr)

    def test(self) -> float:
        """Accuracy on the clean test split (sum of the networks' logits; under torchrun rank 0's networks)."""
        self.sync_nets()
        return evaluate_accuracy(
            self.nets,
            self.task.test_source,
            self.task.test_labels,
            self.task.eval_transform,
            self.device,
            self.optim.eval_batch_size,
            self.cfg.data.num_workers,
        )

    # ---------------------------------------------------------------------------------------------- logging
    def _plan_stats(self, epoch: int, indices: torch.Tensor, plan: dict[str, Any]) -> dict[str, float]:
        """Clean-set precision/recall, weights of correct vs wrong clean-set labels, label-update quality."""
        clean, weights, update = plan["clean"], plan["weights"], plan["update"]
        row = {"clean_n": float(clean.sum())}
        if self.histograms is not None and clean.any():
            self.histograms.add_histogram("clean_set_weight", weights[clean].cpu(), epoch)
        if update is not None:
            row.update(updated_n=float(update.updated), updated_changed=float(update.changed))
            row["reversions"] = float(update.reverted)
        if self.clean is not None:
            idx = indices.to(self.device)
            correct = self.given[idx] == self.clean[idx]
            quality = label_precision_recall(clean.cpu(), self.given[idx].cpu(), self.clean[idx].cpu())
            row.update(clean_precision=quality["precision"], clean_recall=quality["recall"])
            row["weight_mean_correct"] = float(weights[clean & correct].mean()) if (clean & correct).any() else math.nan
            row["weight_mean_wrong"] = float(weights[clean & ~correct].mean()) if (clean & ~correct).any() else math.nan
            if update is not None and update.updated:  # update.labels: the epoch's samples, in order of indices
                mask = update.labels >= 0
                row["updated_label_acc"] = label_accuracy(update.labels[mask].cpu(), self.clean[idx][mask].cpu())
        return row

    def epoch_row(self, epoch: int) -> dict[str, Any]:
        """One epoch of every network; returns the log row of network 1 (two networks: also ``loss2``)."""
        t0 = time.perf_counter()
        row: dict[str, Any] = dict.fromkeys(LOG_KEYS, math.nan)
        row.update(dict.fromkeys([f"loss{k + 1}" for k in range(1, len(self.nets))], math.nan))
        row["lr"] = self.set_lr(epoch)
        indices = self.epoch_indices(epoch)
        probs = [self.credibility_pass(k, indices) for k in range(len(self.nets))]
        for k in range(len(self.nets)):
            suffix = "" if k == 0 else str(k + 1)
            if epoch < self.method.warmup_epochs:
                row["loss" + suffix] = self.warmup_epoch(k, epoch, indices)
                continue
            plan = self.plan(k, indices, probs)
            if k == 0:
                row.update(self._plan_stats(epoch, indices, plan))
            row["loss" + suffix] = self.train_epoch(k, epoch, indices, plan, probs[k])
        last = epoch == self.optim.epochs - 1
        interval = self.cfg.eval_interval
        if last or (interval and (epoch + 1) % interval == 0):
            row["test_acc"] = self.test()
            self.tracker.update(row["test_acc"], epoch)
        row["epoch_time_s"] = time.perf_counter() - t0
        return row

    @property
    def num_epochs(self) -> int:
        return self.optim.epochs

    def checkpoint_due(self, epoch: int) -> bool:
        """On the main process, after the last epoch and every ``checkpoint_interval`` epochs."""
        interval = self.cfg.checkpoint_interval
        due = epoch == self.optim.epochs - 1 or (interval and (epoch + 1) % interval == 0)
        return bool(self.ctx.is_main and due)
