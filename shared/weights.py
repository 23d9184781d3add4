"""Reading the weights of release files and training checkpoints: the wrapper layouts and the prefixes.

A package names its own layouts as ``(EMA key, raw key)`` pairs (e.g. ``("state_dict_ema", "state_dict")``); a
layout is recognised by its EMA key first, then by its raw key, and the EMA weights are preferred when asked for.
Keys prefixed by ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) are stripped, however nested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

__all__ = ["WRAPPER_PREFIXES", "check_state_dict_fits", "pick_wrapped_state_dict", "strip_wrapper_prefixes"]

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper_prefixes(key: str) -> str:
    """``key`` without its leading ``module.`` / ``_orig_mod.`` prefixes (any number, in any order)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def pick_wrapped_state_dict(
    checkpoint: Mapping[str, Any], layouts: Sequence[tuple[str, str]], use_ema: bool = True
) -> tuple[Any, tuple[str, str] | None]:
    """The object a wrapper layout of ``checkpoint`` holds (EMA preferred with ``use_ema``), and that layout.

    Returns ``(checkpoint, None)`` when no layout matches (a flat state_dict). The picked object is not checked:
    it is ``None`` when the layout has neither a usable EMA nor a raw entry; the caller names the error.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"expected a dict checkpoint, got {type(checkpoint).__name__}")
    # a layout is recognised by its EMA key first (``{"model", "ema"}`` and ``{"model", "model_ema"}`` share "model")
    layout = next((pair for pair in layouts if pair[0] in checkpoint), None)
    layout = layout or next((pair for pair in layouts if pair[1] in checkpoint), None)
    if layout is None:
        return checkpoint, None
    ema_key, key = layout
    picked = checkpoint.get(ema_key) if use_ema else None
    return (picked if picked is not None else checkpoint.get(key)), layout


def check_state_dict_fits(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise a RuntimeError naming the missing, unexpected and mis-shaped keys of ``state_dict`` for ``model``.

    ``source`` names the file in the message (``"<source> does not fit <Model>: ..."``).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise RuntimeError(
            f"{source} does not fit {type(model).__name__}: missing {missing[:8]} ({len(missing)}), "
            f"unexpected {unexpected[:8]} ({len(unexpected)}), shape mismatches {shapes[:8]} ({len(shapes)})"
        )
