"""M3DM's Unsupervised Feature Fusion (UFF): its contrastive pre-training and its checkpoint format (the module itself,
:class:`lsfa.model.UnsupervisedFeatureFusion`, is re-exported here).

M3DM (Wang et al., "Multimodal Industrial Anomaly Detection via Hybrid Fusion", CVPR 2023, arXiv 2303.00601,
Sec. 3.3) fuses the frozen point and RGB patch features of the same position into one "fusion" feature that feeds
M3DM's third memory bank (``DINO+Point_MAE+Fusion``, ``TripleFeatures`` of the release):

    fused = concat[ xyz_mlp(LN(xyz)), rgb_mlp(LN(rgb)) ]          (1152 + 768 = 1920-d at paper size)

Each MLP is Linear d -> 4d, GELU, Linear 4d -> d. Two linear heads (rgb 768 -> 256, xyz 1152 -> 256) project the
two halves for the patch-wise InfoNCE loss, which is used only in pre-training: rgb-head and xyz-head projections of
the same patch are positives, the other patches of the batch negatives; only patches whose raw xyz feature is
entirely non-zero count; T = 1 and the cross-entropy is multiplied by 2T (``FeatureFusionBlock.contrastive_loss``).

Key names and the checkpoint layout follow the release (``models/feature_fusion.py``, ``fusion_pretrain.py``,
``utils/misc.py::save_model``): ``{"model": state_dict, "optimizer": ..., "epoch": ..., "scaler": ..., "args": ...}``
with the keys ``xyz_norm.*``, ``xyz_mlp.fc1.*``, ``xyz_mlp.fc2.*``, ``rgb_norm.*``, ``rgb_mlp.fc{1,2}.*``,
``rgb_head.*`` and ``xyz_head.*``; M3DM reads the file's ``"model"`` entry.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lsfa.adaptation import lr_at, pool_to_grid, tokens
from lsfa.losses import info_nce
from lsfa.model import UnsupervisedFeatureFusion, create_model, load_state_dict_strict
from shared.checkpoint import save_checkpoint
from shared.config import AmpMode
from shared.training import autocast, check_finite, make_grad_scaler

__all__ = [
    "UFFSettings",
    "UnsupervisedFeatureFusion",
    "fuse_feature_maps",
    "load_uff_checkpoint",
    "released_uff_rgb_pairing",
    "save_uff_checkpoint",
    "train_uff",
    "uff_contrastive_loss",
    "uff_token_pairs",
]


@dataclass
class UFFSettings:
    """UFF pre-training (``fusion_pretrain.py`` of M3DM; defaults: the README command and the release's code)."""

    train: bool = False  # train a UFF when method m3dm_triple runs without backbone.uff_checkpoint
    epochs: int = 3  # fusion_pretrain.py default
    lr: float = 0.003  # README: --lr 0.003
    batch_size: int = 16  # README: --batch_size 16 (images per batch, every token of each image)
    accum_iter: int = 16  # README: --accum_iter 16
    warmup_epochs: float = 1.0
    min_lr: float = 0.0
    weight_decay: float = 0.01  # torch's AdamW default: the release passes no weight_decay to AdamW
    betas: tuple[float, float] = (0.9, 0.95)
    temperature: float = 1.0
    head_dim: int = 256
    mlp_ratio: float = 4.0
    rgb_pairing: str = "aligned"  # "aligned": rgb pooled to the xyz grid | "released": the saved-feature layout
    seed: int = 0

    @property
    def schedule_epochs(self) -> float:
        """Length of the half-cycle cosine (the release: the number of epochs that run)."""
        return self.epochs


def uff_contrastive_loss(
    module: UnsupervisedFeatureFusion, xyz: torch.Tensor, rgb: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """UFF pre-training loss: InfoNCE(rgb_head(rgb half), xyz_head(xyz half)) over the patches of a batch whose raw
    xyz feature is entirely non-zero (2T * CE, T = 1; one direction, rgb projections as queries, as the release).

    Args:
        xyz / rgb: (B, P, C_x) / (B, P, C_r) frozen tokens at the same P positions.
    """
    fused = module(xyz, rgb)
    q = module.rgb_head(fused[..., module.xyz_dim :]).reshape(-1, module.rgb_head.out_features)
    k = module.xyz_head(fused[..., : module.xyz_dim]).reshape(-1, module.xyz_head.out_features)
    keep = (xyz != 0).all(-1).reshape(-1)
    if int(keep.sum()) < 2:
        raise ValueError("uff_contrastive_loss: fewer than 2 patches with a non-zero xyz feature in the batch")
    return info_nce(q[keep], k[keep], temperature)


def released_uff_rgb_pairing(rgb_tokens: torch.Tensor) -> torch.Tensor:
    """The rgb layout of the features M3DM saves for UFF training (``DoubleRGBPointFeatures``): the n ViT tokens
    are ``repeat(4, 1).reshape(n, 4, C).permute(1, 0, 2).reshape(4n, C)``, so xyz token t = n*j + i is paired with
    rgb token (4i + j) mod n — not a spatial 2x upsampling. (B, n, C) -> (B, 4n, C); reproduced for ablations."""
    n = rgb_tokens.shape[1]
    t = torch.arange(4 * n, device=rgb_tokens.device)
    return rgb_tokens[:, (4 * (t % n) + t // n) % n]


def uff_token_pairs(
    xyz_maps: torch.Tensor, rgb_maps: torch.Tensor, rgb_pairing: str = "aligned"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen maps (B, C_x, g, g) and (B, C_r, g_r, g_r) -> paired tokens (B, g*g, C_x), (B, g*g, C_r).

    ``aligned``: the rgb map is brought to the xyz grid by AdaptiveAvgPool2d (M3DM at test time); ``released``: the
    saved-feature layout of the release's UFF training (:func:`released_uff_rgb_pairing`, needs g = 2 g_r).
    """
    if rgb_pairing == "aligned":
        return tokens(xyz_maps), tokens(pool_to_grid(rgb_maps, xyz_maps.shape[-1]))
    if rgb_pairing == "released":
        if xyz_maps.shape[-1] != 2 * rgb_maps.shape[-1]:
            raise ValueError(
                f"rgb_pairing 'released' needs an xyz grid twice the rgb grid, got "
                f"{xyz_maps.shape[-1]} and {rgb_maps.shape[-1]}"
            )
        return tokens(xyz_maps), released_uff_rgb_pairing(tokens(rgb_maps))
    raise ValueError(f"rgb_pairing must be 'aligned' or 'released', got {rgb_pairing!r}")


@torch.no_grad()
def fuse_feature_maps(
    module: UnsupervisedFeatureFusion,
    xyz_maps: torch.Tensor,
    rgb_maps: torch.Tensor,
    device: torch.device,
    batch_size: int = 8,
) -> torch.Tensor:
    """Fusion-bank tokens of a split (M3DM ``TripleFeatures``): rgb pooled to the xyz grid, fused per position.
    Returns (N, g*g, C_x + C_r) on ``device``."""
    module.eval()
    out = []
    for start in range(0, xyz_maps.shape[0], batch_size):
        x, r = uff_token_pairs(
            xyz_maps[start : start + batch_size].to(device), rgb_maps[start : start + batch_size].to(device), "aligned"
        )
        out.append(module(x, r))
    return torch.cat(out)


def train_uff(
    source: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    num_images: int,
    xyz_dim: int,
    rgb_dim: int,
    settings: UFFSettings,
    device: torch.device,
    amp: AmpMode = "off",
    log: Callable[[str], None] | None = print,
) -> tuple[UnsupervisedFeatureFusion, torch.optim.Optimizer]:
    """Pre-train a UFF on the frozen features of ``num_images`` normal training images (all classes).

    As ``fusion_pretrain.py`` + ``engine_fusion_pretrain.py``: one sample = all tokens of one image; shuffled
    batches of ``batch_size`` images, last incomplete batch dropped; AdamW(betas 0.9 / 0.95); per-iteration linear
    warm-up then half-cycle cosine, the LR set every ``accum_iter`` iterations; gradients accumulated over
    ``accum_iter`` iterations (an incomplete accumulation at the end of an epoch is discarded).

    Args:
        source: image indices (b,) -> paired tokens (b, P, xyz_dim), (b, P, rgb_dim) (:func:`uff_token_pairs`).
        amp: "off", "bf16" or "fp16" (the release: fp16 autocast + GradScaler).

    Returns:
        (the trained module in eval mode, its optimizer).
    """
    s = settings
    iters = num_images // s.batch_size
    if iters == 0:
        raise ValueError(
            f"train_uff: {num_images} training images, fewer than one batch of {s.batch_size} (uff.batch_size)"
        )
    accum = max(1, s.accum_iter)
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG stream stays untouched
        torch.manual_seed(s.seed)
        module = create_model(
            "m3dm_uff", xyz_dim=xyz_dim, rgb_dim=rgb_dim, mlp_ratio=s.mlp_ratio, head_dim=s.head_dim
        ).to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=s.lr, betas=tuple(s.betas), weight_decay=s.weight_decay)
    scaler = make_grad_scaler(device, amp)
    generator = torch.Generator().manual_seed(s.seed)
    module.train()
    step = 0
    for epoch in range(s.epochs):
        t0, total = time.perf_counter(), 0.0
        order = torch.randperm(num_images, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        lr = optimizer.param_groups[0]["lr"]
        for i in range(iters):
            if i % accum == 0:
                lr = lr_at(i / iters + epoch, s, 1)
                for group in optimizer.param_groups:
                    group["lr"] = lr
            xyz, rgb = source(order[i * s.batch_size : (i + 1) * s.batch_size])
            with autocast(device, amp):
                loss = uff_contrastive_loss(module, xyz.to(device), rgb.to(device), s.temperature)
            check_finite(loss, step, "UFF loss")
            scaler.scale(loss / accum).backward()
            if (i + 1) % accum == 0:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            total += loss.item()
            step += 1
        if log is not None:
            log(
                f"UFF epoch {epoch + 1}/{s.epochs}: loss {total / iters:.4g}  lr {lr:.3g}  "
                f"{iters * s.batch_size / max(time.perf_counter() - t0, 1e-9):.1f} img/s"
            )
    return module.eval(), optimizer


def save_uff_checkpoint(
    module: UnsupervisedFeatureFusion,
    path: str | Path,
    epoch: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    settings: UFFSettings | None = None,
) -> Path:
    """Write a UFF checkpoint in the release's layout (``{"model", "optimizer", "epoch", "args"}``; ``args`` is a
    plain dict here, not an ``argparse.Namespace``, so that ``weights_only`` loading needs no allow-list)."""
    state: dict = {
        "model": module.state_dict(),
        "epoch": -1 if epoch is None else epoch,
        "args": {
            "xyz_dim": module.xyz_dim,
            "rgb_dim": module.rgb_dim,
            **(
                {}
                if settings is None
                else {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}
            ),
        },
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return save_checkpoint(state, path)


def load_uff_checkpoint(module: UnsupervisedFeatureFusion, path: str | Path) -> UnsupervisedFeatureFusion:
    """Load M3DM's UFF checkpoint (the ``fusion_pretrain.py`` output read by ``--fusion_module_path``, or one
    written by :func:`save_uff_checkpoint`) strictly: the weights sit under ``"model"``; a missing, unexpected or
    mis-shaped key is an error naming it (the release loads with ``strict=False``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"UFF checkpoint not found: {path}. Expected M3DM's fusion checkpoint "
            f"(fusion_pretrain.py output, {{'model': {{'xyz_norm.weight': ...}}, ...}}); "
            f"without one, train a UFF with --uff.train (README, fusion bank)"
        )
    # the release pickles its argparse.Namespace under "args": allow exactly that class besides tensors
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise RuntimeError(f"could not load UFF checkpoint {path}: {err}") from err
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise KeyError(
            f"{path}: no 'model' entry; M3DM's UFF checkpoint holds {{'model': {{'xyz_norm.weight': ..., "
            f"'rgb_head.weight': ...}}, 'optimizer': ..., 'epoch': ...}}; found {found}"
        )
    load_state_dict_strict(module, state["model"], str(path))
    return module
