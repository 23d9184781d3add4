"""A short Point-MAE-style masked pre-training of the point encoder on generic synthetic shapes (README, Evidence).

LSFA's premise is a point encoder pre-trained elsewhere (Point-MAE on ShapeNet) whose features do not fit the
industrial domain. No Point-MAE weights exist offline, so the evidence run pre-trains the small ``point_mae_tiny``
encoder here, on shapes that are not the evaluation objects:

- data: top-view surface scans of random generic solids (super-ellipsoid caps from round to box-like, rings,
  rippled domes, with random bumps), sampled on a regular grid whose pitch matches the embedded data as the
  extractor sees it (centred, ``point_scale`` 100: 0.134 units per pixel), 4096 points per cloud, no defects;
- task (Point-MAE, Pang et al., ECCV 2022, arXiv 2203.06604): FPS + kNN groups, 60 % of the groups masked at
  random, the encoder (mini-PointNet + transformer with the centre position code before every block) sees the
  visible groups, a light decoder (2 blocks, mask tokens + their centre codes) predicts the masked groups' points,
  loss = Chamfer-L2 between predicted and true centred groups;
- AdamW, cosine learning rate, fixed seed: deterministic on the CPU. The result is written in Point-MAE's file
  layout (``{"base_model": {"MAE_encoder.<key>": ...}}``) and cached under ``data/synthetic/``, so
  ``backbone.point_checkpoint`` loads it strictly like the published file.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lsfa.model import POINT_VARIANTS, PointMAEEncoder, TransformerBlock
from lsfa.point_ops import group_points
from shared.synthetic import synthetic_root
from shared.synthetic._cache import write_cached

__all__ = ["PRETRAIN_VERSION", "chamfer_l2", "ensure_pretrained_point_encoder", "pretrain_point_mae", "shape_cloud"]

PRETRAIN_VERSION = 1
PITCH = 0.134  # grid pitch in the extractor's units (1.34 mm per pixel after resizing, x 100)


def shape_cloud(rng: np.random.Generator, num_points: int = 4096) -> np.ndarray:
    """One top-view scan of a random generic solid, (num_points, 3), centred on its centroid."""
    a, b = rng.uniform(3.5, 8.0, 2)
    extent = max(a, b) * 1.05
    axis = np.arange(-extent, extent, PITCH)
    x, y = np.meshgrid(axis, axis, indexing="ij")
    theta = rng.uniform(0, np.pi)
    u, v = x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)
    kind = rng.integers(0, 3)
    height = rng.uniform(0.8, 4.0)
    if kind == 0:  # super-ellipsoid cap: round (p = 2) to box-like (p = 8)
        p = rng.uniform(2.0, 8.0)
        r = (np.abs(u / a) ** p + np.abs(v / b) ** p) ** (1 / p)
        inside = r < 1
        z = height * np.clip(1 - r**p, 0, None) ** (1 / p)
    elif kind == 1:  # ring: a tube around an ellipse
        r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        tube = rng.uniform(0.25, 0.45)
        d = np.abs(r - (1 - tube)) / tube
        inside = d < 1
        z = height * 0.6 * np.sqrt(np.clip(1 - d**2, 0, None))
    else:  # rippled dome
        r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        inside = r < 1
        k = rng.uniform(0.5, 1.5, 2)
        z = height * (1 - r**2) + 0.15 * height * np.sin(k[0] * u) * np.cos(k[1] * v)
    for _ in range(rng.integers(0, 4)):  # smooth bumps and dents
        cx, cy = rng.uniform(-0.6, 0.6) * a, rng.uniform(-0.6, 0.6) * b
        z = z + rng.uniform(-0.4, 0.4) * np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / (2 * rng.uniform(0.3, 1.0) ** 2))
    z = z + rng.normal(0, 0.01, z.shape)
    points = np.stack([x[inside], y[inside], z[inside]], -1)
    points = points[rng.choice(len(points), num_points, replace=len(points) < num_points)]
    return (points - points.mean(0)).astype(np.float32)


def chamfer_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Point-MAE's Chamfer-L2: mean squared distance to the nearest target point plus the reverse, (N, K, 3) sets."""
    d = torch.cdist(pred, target).square()
    return d.min(2).values.mean() + d.min(1).values.mean()


class _MaskedDecoder(nn.Module):
    """Point-MAE's light decoder: mask tokens, the centre code added before every block, a linear point head."""

    def __init__(self, dim: int, num_heads: int, group_size: int, depth: int = 2):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))
        self.blocks = nn.ModuleList([TransformerBlock(dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3 * group_size)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, visible: torch.Tensor, centres: torch.Tensor, num_masked: int) -> torch.Tensor:
        b = visible.shape[0]
        x = torch.cat([visible, self.mask_token.expand(b, num_masked, -1)], 1)
        pos = self.pos_embed(centres)
        for block in self.blocks:
            x = block(x + pos)
        return self.head(self.norm(x[:, -num_masked:]))


def _encode(encoder: PointMAEEncoder, groups: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """The encoder's last block, after its final LayerNorm, on the given groups (the visible ones)."""
    x = encoder.encoder(groups)
    pos = encoder.pos_embed(centres)
    for block in encoder.blocks.blocks:
        x = block(x + pos)
    return encoder.norm(x)


def pretrain_point_mae(
    variant: str = "point_mae_tiny",
    steps: int = 300,
    batch_size: int = 8,
    num_points: int = 4096,
    num_group: int = 64,
    mask_ratio: float = 0.6,
    lr: float = 1e-3,
    seed: int = 0,
    log_every: int = 50,
) -> tuple[PointMAEEncoder, list[dict]]:
    """Masked point modelling on :func:`shape_cloud` scans; returns the encoder and the logged losses."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    v = POINT_VARIANTS[variant]
    encoder = PointMAEEncoder(v)
    decoder = _MaskedDecoder(v.trans_dim, v.num_heads, v.group_size)
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    num_masked = round(mask_ratio * num_group)
    log: list[dict] = []
    t0 = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:  # linear warm-up over 5 %, then half-cycle cosine
            warm = max(1, steps // 20)
            group["lr"] = lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / steps))
        clouds = torch.from_numpy(np.stack([shape_cloud(rng, num_points) for _ in range(batch_size)]))
        with torch.no_grad():
            groups, centres, _ = group_points(clouds, num_group, v.group_size)
        order = torch.argsort(torch.rand(batch_size, num_group), dim=1)
        vis_idx, mask_idx = order[:, num_masked:], order[:, :num_masked]

        def take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return torch.gather(t, 1, idx.view(*idx.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))

        visible = _encode(encoder, take(groups, vis_idx), take(centres, vis_idx))
        pred = decoder(visible, torch.cat([take(centres, vis_idx), take(centres, mask_idx)], 1), num_masked)
        target = take(groups, mask_idx)
        loss = chamfer_l2(pred.reshape(-1, v.group_size, 3), target.reshape(-1, v.group_size, 3))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"point pre-training: non-finite loss at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps - 1:
            log.append(
                {"step": step, "chamfer_l2": round(float(loss.detach()), 5), "seconds": round(time.perf_counter() - t0)}
            )
    return encoder.eval(), log


def ensure_pretrained_point_encoder(
    variant: str = "point_mae_tiny", steps: int = 300, seed: int = 0, root: str | Path | None = None
) -> Path:
    """The cached pre-trained encoder file (Point-MAE layout), trained on first use; ``pretrain_log.json`` beside
    it holds the loss curve."""
    params = {"generator": "lsfa.point_pretrain", "version": PRETRAIN_VERSION, "variant": variant, "steps": steps}
    folder = Path(root) if root is not None else synthetic_root() / f"lsfa_point_mae_pretrained_{variant}"

    def write(out: Path) -> None:
        encoder, log = pretrain_point_mae(variant, steps, seed=seed)
        state = {f"MAE_encoder.{k}": t.detach().clone() for k, t in encoder.state_dict().items()}
        torch.save({"base_model": state, "steps": steps}, out / "point_mae_pretrained.pth")
        (out / "pretrain_log.json").write_text(json.dumps(log, indent=1) + "\n")

    write_cached(folder, {**params, "seed": seed}, write)
    return folder / "point_mae_pretrained.pth"
