"""LSFA losses (as implemented in the released ``Adaptation/fusion_pretrain.py``; the paper body was not checked).

Total: L = 1.0 L_cm_patch + 0.05 L_rot + 0.9 L_IFC + 0.1 L_cm_global (weights configurable).

* :func:`info_nce` - the MoCo-v3-style contrastive loss copied from M3DM: 2T * CE(a_hat b_hat^T / T, diag), T = 1;
* :func:`cross_modal_patch_loss` - cross-modal local consistency (CLC, patch level): symmetric InfoNCE between the
  rgb-head and xyz-head projections of the same (non-empty) patch, negatives = all other such patches of the batch;
* :func:`rotation_consistency_loss` - intra-modal local term: InfoNCE between rgb projections of the image and of
  its patch-rotated copy on a random 1/6 of the patches;
* :class:`FeatureQueue` + :func:`compactness_loss` - intra-modal feature compactness (IFC) with dynamic per-class
  memory queues: mean distance of each adapted feature to its nearest queue entry, sqrt(clamp(d^2, 1e-12, 50));
* :func:`cross_modal_global_loss` - cross-modal global consistency (CLC, image level): InfoNCE between the
  projections of the per-image means over non-empty patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "FeatureQueue",
    "capped_distance",
    "compactness_loss",
    "cross_modal_global_loss",
    "cross_modal_patch_loss",
    "info_nce",
    "rotation_consistency_loss",
]


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """2T * CE(softmax(a_hat b_hat^T / T), diag) with L2-normalised rows (M3DM ``contrastive_loss``)."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = a @ b.T / temperature
    return 2.0 * temperature * F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def cross_modal_patch_loss(q_rgb: torch.Tensor, k_xyz: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Symmetric patch-level InfoNCE: (InfoNCE(q, k) + InfoNCE(k, q)) / 2 over the rows given (the non-empty
    patches of a batch, spatially aligned rgb / xyz)."""
    return 0.5 * (info_nce(q_rgb, k_xyz, temperature) + info_nce(k_xyz, q_rgb, temperature))


def rotation_consistency_loss(
    q: torch.Tensor,
    q_rot: torch.Tensor,
    positions: torch.Tensor,
    fraction: float = 1 / 6,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """InfoNCE(q[S], q_rot[S]) on a random subset S of ``len(positions) * fraction`` rows.

    Args:
        q, q_rot: (M, d) projections of all patches of the batch (image and patch-rotated image).
        positions: indices of the non-empty patches; S is drawn among them (the release draws 0..|NZ|-1 and uses
            those as patch indices directly: pass ``torch.arange(len(positions))`` for that behaviour).
    """
    count = max(2, int(len(positions) * fraction))
    pick = torch.randperm(len(positions), generator=generator)[:count].to(positions.device)
    s = positions[pick]
    return info_nce(q[s], q_rot[s], temperature)


def capped_distance(x: torch.Tensor, bank: torch.Tensor, cap: float = 50.0, chunk: int = 8192) -> torch.Tensor:
    """min_m sqrt(clamp(|x - M_m|^2, 1e-12, cap)) for every row of x (the release's IFC distance; the cap bounds each
    term at sqrt(50) ~ 7.07).

    The nearest entry is found without gradient, chunked over the bank, and the distance to the gathered entries is
    recomputed with gradient: the same value and gradient as the min over all entries, without keeping the
    rows x bank matrix for the backward pass, and safe against later in-place pushes into a ring-buffer bank.
    """
    with torch.no_grad():
        x_sq = x.square().sum(1, keepdim=True)
        best_d, best_i = None, None
        for start in range(0, bank.shape[0], chunk):
            m = bank[start : start + chunk]
            d2, i = (x_sq - 2.0 * x @ m.T + m.square().sum(1)).min(1)
            if best_d is None:
                best_d, best_i = d2, i + start
            else:
                better = d2 < best_d
                best_d, best_i = torch.where(better, d2, best_d), torch.where(better, i + start, best_i)
    nearest = bank[best_i]  # a copy: gradients do not depend on the bank storage
    return (x - nearest).square().sum(1).clamp(1e-12, cap).sqrt()


class FeatureQueue:
    """Per-class FIFO queues of detached features, as ring buffers on the device.

    Args:
        num_classes: number of classes (one queue each).
        capacity: entries per class (60,000 patches / ~100 global vectors in the release).
        dim: feature width.
    """

    def __init__(
        self,
        num_classes: int,
        capacity: int,
        dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.buffer = torch.zeros(num_classes, capacity, dim, device=device, dtype=dtype)
        self.pointer = torch.zeros(num_classes, dtype=torch.long)
        self.count = torch.zeros(num_classes, dtype=torch.long)
        self.capacity = capacity

    @torch.no_grad()
    def push(self, class_index: int, features: torch.Tensor) -> None:
        """Append (n, dim) rows to the class queue, overwriting the oldest when full."""
        features = features.detach().to(self.buffer.dtype)[-self.capacity :]
        n = features.shape[0]
        if n == 0:
            return
        slots = (self.pointer[class_index] + torch.arange(n)) % self.capacity
        self.buffer[class_index, slots.to(self.buffer.device)] = features
        self.pointer[class_index] = (self.pointer[class_index] + n) % self.capacity
        self.count[class_index] = min(self.capacity, int(self.count[class_index]) + n)

    def entries(self, class_index: int) -> torch.Tensor:
        """The filled part of a class queue, (count, dim)."""
        return self.buffer[class_index, : int(self.count[class_index])]

    def size(self, class_index: int) -> int:
        return int(self.count[class_index])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"buffer": self.buffer, "pointer": self.pointer, "count": self.count}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.buffer.copy_(state["buffer"])
        self.pointer.copy_(state["pointer"])
        self.count.copy_(state["count"])


def compactness_loss(features: torch.Tensor, queue: torch.Tensor, cap: float = 50.0) -> torch.Tensor:
    """IFC term of one sample and one level: mean over its rows of the capped distance to the nearest queue entry."""
    return capped_distance(features, queue, cap).mean()


def cross_modal_global_loss(g_rgb: torch.Tensor, g_xyz: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """InfoNCE(W_r g_rgb, W_x g_xyz) over the images of a batch (inputs already projected)."""
    return info_nce(g_rgb, g_xyz, temperature)
