"""LSFA's self-supervised feature adaptation (the "Adaptation" stage): one loss evaluation on a batch.

Per batch of normal training images (all classes mixed, each with its class index):

1. frozen features: xyz (B, C_x, g, g), rgb (B, C_r, g, g) (the ViT map pooled to the xyz grid), token validity;
2. the rgb features of the patch-rotated image (:func:`lsfa.data.patch_rotation`);
3. adapted tokens x~ = A_x(x), r~ = A_r(r), r~_rot = A_r(r_rot); projections q = W_r r~, k = W_x x~;
4. L = w_cm L_cm_patch(q_NZ, k_NZ) + w_rot L_rot(q, q_rot) + w_ifc L_IFC + w_g L_cm_global, where NZ are the tokens
   that hold at least one point, pooled over the batch;
5. the per-class queues receive the detached adapted features (rgb: all tokens, xyz: NZ tokens, plus one global
   mean per modality) after the loss is computed.

Under torchrun each process holds ``data.batch_size / world_size`` images: the projections of the three InfoNCE
terms are gathered over the processes (:func:`gather_batch`, gradients flowing back to each process's own rows), so
their negatives are the whole global batch, as in one process; the IFC term and the queues stay per process. In one
process nothing is gathered.

Released-code behaviours that differ from the intended semantics are switches of :class:`AdaptationSettings`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lsfa.losses import (
    FeatureQueue,
    compactness_loss,
    cross_modal_global_loss,
    cross_modal_patch_loss,
    rotation_consistency_loss,
)
from lsfa.model import LSFAAdaptors
from shared.distributed import get_world_size

__all__ = [
    "AdaptationQueues",
    "AdaptationSettings",
    "gather_batch",
    "lr_at",
    "lsfa_loss",
    "pool_to_grid",
    "released_rgb_token_layout",
    "tokens",
]


@dataclass
class AdaptationSettings:
    """Loss weights and switches (defaults: the release's weights with the intended semantics)."""

    weight_cross_patch: float = 1.0
    weight_rotation: float = 0.05
    weight_compactness: float = 0.9
    weight_cross_global: float = 0.1
    temperature: float = 1.0
    rotation_fraction: float = 1 / 6
    compactness_start_iteration: int = 60
    compactness_min_fill: int = 59_900
    compactness_global_weight: float = 0.4
    distance_cap: float = 50.0
    rgb_token_layout: str = "aligned"  # "aligned" | "released" (the FeatureExtract reshape scramble)
    rotated_token_layout: str = "aligned"  # "aligned" | "released" (reshape without permute)
    rotation_indexing: str = "nonzero"  # "nonzero" | "released" (positions 0..|NZ|-1 used as patch indices)


class AdaptationQueues:
    """The four per-class queues of the IFC term (rgb / xyz patches, rgb / xyz global means), on one device."""

    def __init__(
        self,
        num_classes: int,
        xyz_dim: int,
        rgb_dim: int,
        patch_capacity: int = 60_000,
        global_capacity: int = 100,
        device: torch.device | str = "cpu",
    ):
        self.rgb = FeatureQueue(num_classes, patch_capacity, rgb_dim, device)
        self.xyz = FeatureQueue(num_classes, patch_capacity, xyz_dim, device)
        self.rgb_global = FeatureQueue(num_classes, global_capacity, rgb_dim, device)
        self.xyz_global = FeatureQueue(num_classes, global_capacity, xyz_dim, device)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: getattr(self, name).state_dict() for name in ("rgb", "xyz", "rgb_global", "xyz_global")}

    def load_state_dict(self, state: dict) -> None:
        for name, sub in state.items():
            getattr(self, name).load_state_dict(sub)


class _Schedule(Protocol):
    lr: float
    min_lr: float
    warmup_epochs: float
    schedule_epochs: float


def lr_at(step: float, cfg: _Schedule, iters_per_epoch: int) -> float:
    """Per-iteration schedule of the release (adaptors and UFF pre-training): linear warm-up, then half-cycle cosine
    over ``schedule_epochs``."""
    epoch = step / iters_per_epoch
    if epoch < cfg.warmup_epochs:
        return cfg.lr * epoch / cfg.warmup_epochs
    progress = (epoch - cfg.warmup_epochs) / max(cfg.schedule_epochs - cfg.warmup_epochs, 1e-9)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, g, g) -> (B, g*g, C) spatially ordered tokens."""
    return feature_map.flatten(2).transpose(1, 2)


def released_rgb_token_layout(feature_map: torch.Tensor) -> torch.Tensor:
    """The release's FeatureExtract token layout: each (C, g, g) map is read as reshape(-1, C) (channel-major), a
    CLS row is prepended, the result is read as reshape(C, -1).T, and rows 1: are the "patch" tokens. Reproduced for
    ablations only; the tokens are not spatially aligned with the xyz tokens."""
    b, c, h, w = feature_map.shape
    rows = feature_map.reshape(b, h * w, c)  # channel-major reinterpretation
    cls = rows.new_zeros(b, 1, c)
    stacked = torch.cat([cls, rows], 1)  # (B, 1 + hw, C)
    return stacked.reshape(b, c, h * w + 1).transpose(1, 2)[:, 1:]


def gather_batch(t: torch.Tensor) -> torch.Tensor:
    """``t`` (B, ...) of every process concatenated along dim 0 in rank order (W*B, ...), differentiable:
    ``torch.distributed.nn.functional.all_gather`` sends the gradient of every process's copy back to the process
    that owns the rows (summed over the processes); ``t`` itself in one process.

    Every process computes the same global loss from the gathered rows, so each receives W times its rows' share of
    the gradient, and the average of :func:`shared.distributed.all_reduce_gradients` makes it the gradient of the
    global-batch loss exactly. Same B on every process (``data.batch_size`` divisible by the process count,
    ``drop_last``)."""
    if get_world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t.contiguous()), 0)


def _gather_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean (B, ...) mask of every process, concatenated in rank order (no gradient); ``mask`` in one process."""
    if get_world_size() == 1:
        return mask
    as_bytes = mask.to(torch.uint8).contiguous()
    parts = [torch.empty_like(as_bytes) for _ in range(get_world_size())]
    dist.all_gather(parts, as_bytes)
    return torch.cat(parts, 0).bool()


def _rgb_tokens(feature_map: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "aligned":
        return tokens(feature_map)
    if layout == "released":
        return released_rgb_token_layout(feature_map)
    raise ValueError(f"rgb token layout must be 'aligned' or 'released', got {layout!r}")


def lsfa_loss(
    adaptors: LSFAAdaptors,
    xyz: torch.Tensor,
    rgb: torch.Tensor,
    rgb_rotated: torch.Tensor,
    valid: torch.Tensor,
    class_ids: torch.Tensor,
    queues: AdaptationQueues,
    iteration: int,
    settings: AdaptationSettings,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The LSFA objective on one batch; pushes the batch into the queues afterwards.

    Under torchrun (an initialised process group) the batch is this process's part of the global batch: the
    cross-modal patch, rotation and cross-modal global InfoNCE terms are computed over the projections of every
    process (:func:`gather_batch`; the rotation subset is drawn with this process's ``generator`` among the global
    batch's patches), the IFC term over this process's samples and queues. Every process calls it once per
    iteration, with the same batch size.

    Args:
        xyz: (B, C_x, g, g) frozen point features; rgb / rgb_rotated: (B, C_r, g, g) frozen rgb features of the
            image and of its patch-rotated copy (same grid as xyz); valid: (B, g, g) token holds a point;
        class_ids: (B,) class index per sample; iteration: global iteration (IFC starts after
            ``compactness_start_iteration``).

    Returns:
        (total loss, dict of the four terms and the number of samples with an active IFC term).
    """
    s = settings
    b = xyz.shape[0]
    x = adaptors.adapt_xyz(tokens(xyz))
    r = adaptors.adapt_rgb(_rgb_tokens(rgb, s.rgb_token_layout))
    r_rot = adaptors.adapt_rgb(
        _rgb_tokens(rgb_rotated, "aligned")
        if s.rotated_token_layout == "aligned"
        else rgb_rotated.reshape(b, -1, rgb_rotated.shape[1])
    )
    q, k, q_rot = adaptors.rgb_head(r), adaptors.xyz_head(x), adaptors.rgb_head(r_rot)
    nz = valid.flatten(1)  # (B, N)
    # the InfoNCE terms run over the global batch (every process's rows; the same tensors in one process)
    q_all, k_all, q_rot_all = gather_batch(q), gather_batch(k), gather_batch(q_rot)
    flat_nz = torch.nonzero(_gather_mask(nz).reshape(-1)).squeeze(1)
    if flat_nz.numel() < 2:
        raise ValueError("lsfa_loss: fewer than 2 tokens with points in the batch; check the xyz inputs")
    q_flat, k_flat, q_rot_flat = (t.reshape(-1, t.shape[-1]) for t in (q_all, k_all, q_rot_all))

    loss_patch = cross_modal_patch_loss(q_flat[flat_nz], k_flat[flat_nz], s.temperature)
    if s.rotation_indexing == "nonzero":
        positions = flat_nz
    elif s.rotation_indexing == "released":
        positions = torch.arange(flat_nz.numel(), device=flat_nz.device)
    else:
        raise ValueError(f"rotation_indexing must be 'nonzero' or 'released', got {s.rotation_indexing!r}")
    loss_rot = rotation_consistency_loss(q_flat, q_rot_flat, positions, s.rotation_fraction, generator, s.temperature)

    weights = nz.float()
    counts = weights.sum(1).clamp_min(1.0)[:, None]
    g_rgb = (r * weights[..., None]).sum(1) / counts  # mean over non-empty tokens
    g_xyz = (x * weights[..., None]).sum(1) / counts
    loss_global = (
        cross_modal_global_loss(
            gather_batch(adaptors.rgb_head(g_rgb)), gather_batch(adaptors.xyz_head(g_xyz)), s.temperature
        )
        if b * get_world_size() > 1
        else x.new_zeros(())
    )

    ifc_terms = []
    if iteration >= s.compactness_start_iteration:
        for i in range(b):  # a handful of samples per batch, each a chunked distance pass over its class queue
            c = int(class_ids[i])
            if queues.rgb.size(c) < s.compactness_min_fill or queues.xyz.size(c) == 0:
                continue
            term = compactness_loss(r[i], queues.rgb.entries(c), s.distance_cap)
            term = term + compactness_loss(x[i][nz[i]], queues.xyz.entries(c), s.distance_cap)
            if queues.rgb_global.size(c) and queues.xyz_global.size(c):
                term = term + s.compactness_global_weight * (
                    compactness_loss(g_rgb[i : i + 1], queues.rgb_global.entries(c), s.distance_cap)
                    + compactness_loss(g_xyz[i : i + 1], queues.xyz_global.entries(c), s.distance_cap)
                )
            ifc_terms.append(term)
    loss_ifc = torch.stack(ifc_terms).mean() if ifc_terms else x.new_zeros(())

    for i in range(b):
        c = int(class_ids[i])
        queues.rgb.push(c, r[i])
        queues.xyz.push(c, x[i][nz[i]])
        queues.rgb_global.push(c, g_rgb[i : i + 1])
        queues.xyz_global.push(c, g_xyz[i : i + 1])

    total = (
        s.weight_cross_patch * loss_patch
        + s.weight_rotation * loss_rot
        + s.weight_compactness * loss_ifc
        + s.weight_cross_global * loss_global
    )
    return total, {
        "loss_cm_patch": loss_patch.item(),
        "loss_rot": loss_rot.item(),
        "loss_ifc": loss_ifc.item(),
        "loss_cm_global": loss_global.item(),
        "ifc_active": float(len(ifc_terms)),
    }


def pool_to_grid(feature_map: torch.Tensor, grid: int) -> torch.Tensor:
    """AdaptiveAvgPool2d to (grid, grid) (LSFA's 28 -> 56 rgb replication), a no-op at the same size."""
    return feature_map if feature_map.shape[-1] == grid else F.adaptive_avg_pool2d(feature_map, grid)
