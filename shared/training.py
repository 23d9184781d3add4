"""Small training utilities every package uses: the device setting, AMP, EMA, the non-finite loss guard, a warm-up +
cosine schedule."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable
from typing import Any, Literal

import torch
from timm.utils import ModelEmaV3
from torch import nn

__all__ = [
    "AmpDtype",
    "ModelEmaV3",
    "NonFiniteLossError",
    "autocast",
    "check_finite",
    "check_finite_gradients",
    "check_finite_parameters",
    "lr_noise_factor",
    "make_grad_scaler",
    "optimizer_step",
    "resolve_device",
    "show_progress",
    "unwrap_model",
    "warmup_cosine_schedule",
]

AmpDtype = Literal["off", "bf16", "fp16"]  # the values of shared.config.RunConfig.amp


def resolve_device(name: str) -> torch.device:
    """The torch device of a config's ``device`` setting (``shared.config.DeviceName``): "auto" is CUDA when torch
    sees a GPU, else the CPU; "cuda" that torch cannot see is an error, not a silent CPU run."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available to torch")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss is NaN or infinite; the message names the step."""


def check_finite(loss: torch.Tensor, step: int, what: str = "loss") -> None:
    """Stop the run with a clear message when `loss` is NaN/inf (the last good checkpoint stays on disk)."""
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLossError(
            f"non-finite {what} ({loss.detach().float().cpu().tolist()}) at step {step}; stopping. "
            "The last checkpoint written before this step is intact; lower the learning rate or disable fp16 AMP."
        )


def _first_nonfinite(named: Iterable[tuple[str, torch.Tensor | None]]) -> str | None:
    named = [(n, t) for n, t in named if t is not None]
    if not named:
        return None
    flags = torch.stack([torch.isfinite(t.detach()).all() for _, t in named]).cpu()
    bad = (~flags).nonzero()
    return named[int(bad[0])][0] if len(bad) else None


def check_finite_gradients(parameters: Iterable[torch.Tensor] | nn.Module, step: int, what: str = "loss") -> None:
    """Stop the run when a gradient holds NaN/inf (the loss itself can be finite while its gradient is not)."""
    named = (
        parameters.named_parameters()
        if isinstance(parameters, nn.Module)
        else ((f"parameter {i}", p) for i, p in enumerate(parameters))
    )
    name = _first_nonfinite((n, p.grad) for n, p in named)
    if name is not None:
        raise NonFiniteLossError(
            f"non-finite gradient of {what} in {name} at step {step}; stopping before the optimizer step. The last "
            "checkpoint written before this step is intact; lower the learning rate or disable fp16 AMP."
        )


def check_finite_parameters(parameters: Iterable[torch.Tensor] | nn.Module, step: int, what: str = "model") -> None:
    """Stop the run when a parameter (or buffer of a module) holds NaN/inf, e.g. after a step with a huge lr."""
    if isinstance(parameters, nn.Module):
        named = [
            *parameters.named_parameters(),
            *((n, b) for n, b in parameters.named_buffers() if b.is_floating_point()),
        ]
    else:
        named = [(f"parameter {i}", p) for i, p in enumerate(parameters)]
    name = _first_nonfinite(named)
    if name is not None:
        raise NonFiniteLossError(
            f"non-finite value in {what} {name} after step {step}; stopping. The last checkpoint written before this "
            "step is intact; lower the learning rate or disable fp16 AMP."
        )


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    step: int,
    clip_grad: float | None = None,
    parameters: Iterable[torch.Tensor] | None = None,
    what: str = "loss",
) -> None:
    """One optimizer update from `loss`: non-finite guard, zero_grad, scaled backward, optional clipping of the
    global L2 norm of `parameters` at `clip_grad` (after unscaling), scaler step and update.

    Without an active fp16 scaler the gradients of the optimizer's parameters are checked before the step (a
    finite loss can have a non-finite gradient), and the parameters after it; with fp16 the scaler itself skips
    steps with inf/NaN gradients, as designed.

    Args:
        loss: the scalar to minimise.
        optimizer, scaler: as built by the training loop (`make_grad_scaler`; a disabled scaler is a plain step).
        step: global step, named in the error of :func:`check_finite`.
        clip_grad: max global gradient norm, or None for no clipping.
        parameters: what to clip (required with `clip_grad`).
        what: name of the loss in the non-finite error.
    """
    check_finite(loss, step, what)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad is not None:
        if parameters is None:
            raise ValueError("optimizer_step: clip_grad needs the parameters to clip")
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(parameters, clip_grad)
    if not scaler.is_enabled():
        params = [p for group in optimizer.param_groups for p in group["params"]]
        check_finite_gradients(params, step, what)
        optimizer.step()
        check_finite_parameters(params, step, "parameters of the optimizer")
        return
    scaler.step(optimizer)
    scaler.update()


def autocast(device: torch.device, amp: AmpDtype = "off") -> contextlib.AbstractContextManager:
    """`torch.autocast` for bf16/fp16, a no-op context for "off"."""
    if amp == "off":
        return contextlib.nullcontext()
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be 'off', 'bf16' or 'fp16', got {amp!r}")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, amp: AmpDtype = "off") -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16 and fp32 need none); its state goes into checkpoints."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def lr_noise_factor(step: int, seed: int = 42, pct: float = 0.67, std: float = 1.0) -> float:
    """timm's ``lr_noise`` multiplier ``1 + n`` of one step: n ~ N(0, std) from a generator seeded with
    ``seed + step``, redrawn until ``|n| < pct`` (timm ``Scheduler._calculate_noise``, noise_type 'normal')."""
    generator = torch.Generator().manual_seed(seed + step)
    while True:
        noise = torch.randn(1, generator=generator).item() * std
        if abs(noise) < pct:
            return 1.0 + noise


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
    warmup_lr: float = 0.0,
    warmup_prefix: bool = True,
    noise_range: tuple[float, float] | None = None,
    noise_pct: float = 0.67,
    noise_std: float = 1.0,
    noise_seed: int = 42,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up from `warmup_lr` to each group's base lr, then cosine down to `min_lr`.

    Args:
        optimizer: its param groups' current `lr` are the base (peak) learning rates.
        total_steps: number of optimizer steps of the whole run.
        warmup_steps: length of the linear warm-up.
        min_lr: final learning rate (absolute, the same for every group).
        warmup_lr: learning rate at step 0 (absolute).
        warmup_prefix: True: the cosine starts at the end of the warm-up, ``t = (step - W) / (T - W)`` (timm
            ``warmup_prefix=True``). False: timm's default, the cosine runs over the whole run from step 0,
            ``t = step / T``, and the warm-up only overrides its first W steps (so the lr jumps from the warm-up's
            end to the cosine's value there, slightly below the peak).
        noise_range: timm ``lr_noise`` as fractions of `total_steps` ``(start, end)``: for ``start * T <= step <
            end * T`` the lr is multiplied by :func:`lr_noise_factor` (the noise is a function of the step, so a
            resumed run gets the same values). None: no noise.
        noise_pct, noise_std, noise_seed: timm's ``lr_noise_pct``, ``lr_noise_std``, ``seed`` of the noise.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if noise_range is not None and not 0.0 <= noise_range[0] <= noise_range[1]:
        raise ValueError(f"noise_range must be (start, end) fractions with 0 <= start <= end, got {noise_range}")
    bases = [g["lr"] for g in optimizer.param_groups]
    noise_start, noise_end = (noise_range[0] * total_steps, noise_range[1] * total_steps) if noise_range else (0, 0)

    def factor(base: float):
        def f(step: int) -> float:
            if base == 0:
                return 0.0
            if step < warmup_steps:
                lr = warmup_lr + (base - warmup_lr) * step / warmup_steps
            else:
                if warmup_prefix:
                    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
                else:
                    t = min(1.0, step / total_steps)
                lr = min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * t))
            if noise_start <= step < noise_end:
                lr *= lr_noise_factor(step, noise_seed, noise_pct, noise_std)
            return lr / base

        return f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(b) for b in bases])


def show_progress(
    bar: Any, loss: float, lr: float, images: int, world_size: int, start: float, digits: tuple[int, int] = (4, 0)
) -> None:
    """Loss, learning rate and images per second (over all processes since ``start``, a ``time.perf_counter()``
    value) on a tqdm bar; nothing for a plain iterable (non-main ranks). ``digits``: decimals of loss and rate."""
    if hasattr(bar, "set_postfix"):
        rate = images * world_size / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{loss:.{digits[0]}f}", lr=f"{lr:.2e}", img_s=f"{rate:.{digits[1]}f}")
