"""SimCLR self-supervised pretraining (Chen et al., ICML 2020, arXiv 2002.05709), CIFAR recipe, and SSL checkpoints.

* :class:`SimCLRAugment`: the CIFAR augmentation (random resized crop with scale (0.08, 1) -- 0.2 for small
  images is a common variant, see ``scale`` --, horizontal flip, colour jitter with strength s = 0.5 applied with
  probability 0.8, random grey-scale with probability 0.2; no blur on CIFAR), implemented **batched** on tensors
  (``affine_grid`` + ``grid_sample`` for the crops), so a whole batch is augmented in a few vectorised ops.
* :func:`nt_xent_loss`: the normalised temperature-scaled cross-entropy over 2B views (temperature 0.5 for CIFAR).
* :class:`SimCLR`: encoder (any backbone with ``forward_features``) + the 2-layer MLP projection head.
* :func:`train_simclr_epoch`: one epoch over an in-memory uint8 image tensor.
* :func:`load_ssl_checkpoint`: loads external SSL weights (SimCLR/C2D, MoCo v1/v2 ``module.encoder_q.*``,
  torchvision ImageNet, or checkpoints saved by this module), stripping known prefixes and dropping heads.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.checkpoint import load_weights_file
from shared.training import check_finite

__all__ = ["SimCLR", "SimCLRAugment", "load_ssl_checkpoint", "nt_xent_loss", "train_simclr_epoch"]


class SimCLRAugment:
    """Batched SimCLR augmentation of a float ``B x 3 x H x W`` batch in [0, 1]; returns a normalised batch.

    Args:
        mean, std: normalisation applied after augmenting.
        scale: area range of the random resized crop.
        ratio: aspect-ratio range of the crop.
        jitter_strength: s of SimCLR's colour distortion (brightness/contrast/saturation 0.8 s, hue 0.2 s).
        jitter_prob: probability of applying colour jitter.
        gray_prob: probability of converting to grey-scale.
    """

    def __init__(
        self,
        mean,
        std,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        jitter_strength: float = 0.5,
        jitter_prob: float = 0.8,
        gray_prob: float = 0.2,
    ):
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.scale, self.ratio = scale, ratio
        self.s, self.jitter_prob, self.gray_prob = jitter_strength, jitter_prob, gray_prob

    @staticmethod
    def _gray(x: torch.Tensor) -> torch.Tensor:
        return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, device = x.shape[0], x.device
        # Random resized crop + flip as one affine map per image (normalised coordinates).
        area = torch.empty(b, device=device).uniform_(*self.scale)
        log_ratio = torch.empty(b, device=device).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        aspect = log_ratio.exp()
        w = (area * aspect).sqrt().clamp(max=1.0)
        h = (area / aspect).sqrt().clamp(max=1.0)
        cx = (torch.rand(b, device=device) * 2 - 1) * (1 - w)
        cy = (torch.rand(b, device=device) * 2 - 1) * (1 - h)
        flip = torch.where(torch.rand(b, device=device) < 0.5, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3, device=device)
        theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        # Colour jitter (brightness, contrast, saturation, hue shift in a YIQ rotation), per image.
        jitter = (torch.rand(b, 1, 1, 1, device=device) < self.jitter_prob).float()

        def factor(strength: float) -> torch.Tensor:
            return 1 + jitter * torch.empty(b, 1, 1, 1, device=device).uniform_(-strength, strength)

        s = self.s
        x = (x * factor(0.8 * s)).clamp(0, 1)
        mean = self._gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * factor(0.8 * s) + mean).clamp(0, 1)
        gray = self._gray(x)
        x = ((x - gray) * factor(0.8 * s) + gray).clamp(0, 1)
        angle = jitter.view(b) * torch.empty(b, device=device).uniform_(-0.2 * s, 0.2 * s) * 2 * math.pi
        yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=device)
        c, sn = angle.cos(), angle.sin()
        rot = torch.zeros(b, 3, 3, device=device)
        rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1, c, -sn, sn, c
        transform = torch.linalg.inv(yiq) @ rot @ yiq
        x = torch.einsum("bij,bjhw->bihw", transform, x).clamp(0, 1)
        gray_mask = (torch.rand(b, 1, 1, 1, device=device) < self.gray_prob).float()
        x = gray_mask * self._gray(x) + (1 - gray_mask) * x
        return (x - self.mean.to(device)) / self.std.to(device)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent (SimCLR Eq. 1) averaged over the 2B anchors; ``z1[i]`` and ``z2[i]`` are the positive pair."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


class SimCLR(nn.Module):
    """Encoder + projection head g(h) = W2 ReLU(BN(W1 h)) (SimCLR's 2-layer MLP, output ``proj_dim``)."""

    def __init__(self, encoder: nn.Module, proj_dim: int = 128):
        super().__init__()
        self.encoder = encoder
        d = encoder.num_features
        self.projector = nn.Sequential(
            nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True), nn.Linear(d, proj_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder.forward_features(x))


def train_simclr_epoch(
    model: nn.Module,
    images: torch.Tensor,
    augment: SimCLRAugment,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    temperature: float,
    step: int,
    device: torch.device,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    generator: torch.Generator | None = None,
) -> tuple[float, int, float]:
    """One SimCLR epoch over ``images`` (uint8 ``N x 3 x H x W``, shuffled, last partial batch dropped).

    Returns (mean loss, global step, images per second).
    """
    import time

    model.train()
    order = torch.randperm(len(images), generator=generator)
    total, count, t0 = 0.0, 0, time.perf_counter()
    for start in range(0, len(images) - batch_size + 1, batch_size):
        batch = images[order[start : start + batch_size]].to(device).float() / 255
        loss = nt_xent_loss(model(augment(batch)), model(augment(batch)), temperature)
        check_finite(loss, step, "SimCLR loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        step += 1
        total += loss.item() * batch_size
        count += batch_size
    elapsed = time.perf_counter() - t0
    return total / max(count, 1), step, count / max(elapsed, 1e-9)


_PREFIXES = (
    "module.encoder_q.",
    "encoder_q.",
    "module.encoder.",
    "module.backbone.",
    "module.",
    "encoder.",
    "backbone.",
    "model.",
    "body.",
)
_HEADS = ("fc.", "linear.", "projector.", "head.", "classifier.", "encoder_k.", "queue")


def load_ssl_checkpoint(model: nn.Module, path: str | Path, strict_backbone: bool = True) -> list[str]:
    """Load self-supervised (or ImageNet) weights from a local file into ``model``'s backbone.

    Handles a raw state dict or one nested under ``state_dict`` / ``model`` / ``encoder``; strips the prefixes of
    MoCo (``module.encoder_q.``), DataParallel (``module.``), SimCLR re-implementations (``encoder.``,
    ``backbone.``) and this repo's :class:`SimCLR`; drops projection and classifier heads. Always
    ``weights_only=True``.

    Args:
        model: the backbone (e.g. :class:`~shared.noisy.models.PreActResNet18` or a torchvision ResNet-50).
        path: checkpoint file.
        strict_backbone: raise when a backbone weight of ``model`` is missing from the file or has another shape.

    Returns:
        the names of the model's parameters left at their initial value (heads).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"SSL checkpoint not found: {path}. For CIFAR train one with the SimCLR stage "
            "(dmlp: --stages ssl ...), or pass the SimCLR/C2D/MoCo file you downloaded."
        )
    state = load_weights_file(path, "SSL checkpoint")  # C2D's SupContrast files (options beside weights) included
    for key in ("state_dict", "model", "encoder"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    cleaned: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        if not name.startswith(_HEADS):
            cleaned[name] = value
    target = model.state_dict()
    head_names = [k for k in target if k.startswith(_HEADS)]
    problems = [k for k in target if k not in head_names and (k not in cleaned or cleaned[k].shape != target[k].shape)]
    if strict_backbone and problems:
        raise ValueError(
            f"{path}: {len(problems)} backbone weights missing or of another shape, e.g. {problems[:3]}; "
            f"found keys like {list(cleaned)[:5]}"
        )
    model.load_state_dict(
        {k: v for k, v in cleaned.items() if k in target and v.shape == target[k].shape}, strict=False
    )
    return head_names
