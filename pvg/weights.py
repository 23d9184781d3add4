"""Loading the official Pyramid ViG release files (README, "Loading the official weights").

The released ``pvig_*`` files (huawei-noah/Efficient-AI-Backbones, GitHub release ``pyramid-vig``, e.g.
``pvig_s_82.1.pth.tar``) are flat state_dicts whose keys are those of :class:`pvg.model.PyramidViG`: no remapping.
Files are read with ``torch.load(weights_only=True)``. Accepted layouts:

* a flat state_dict (what the official ``train.py --pretrained`` loads);
* timm-trainer wrappers ``{'state_dict' | 'state_dict_ema' | 'model' | 'model_ema' | 'ema': ...}`` (EMA preferred);
* keys prefixed by ``module.`` (DDP) or ``_orig_mod.`` (torch.compile).

The load is strict: a file that misses a weight of the model, or has one the model does not have, or a tensor of
another shape, is an error that names the keys (never a silently random weight). No PVG weights are published.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from shared.checkpoint import CheckpointError, load_checkpoint
from shared.weights import check_state_dict_fits, pick_wrapped_state_dict, strip_wrapper_prefixes

__all__ = ['OFFICIAL_RELEASE', 'checkpoint_filter_fn', 'load_official_checkpoint', 'unwrap_state_dict']

#: Where the official Pyramid ViG weights are published (one file name is confirmed: ``pvig_s_82.1.pth.tar``).
OFFICIAL_RELEASE = 'https://github.com/huawei-noah/Efficient-AI-Backbones/releases/tag/pyramid-vig'

# (EMA key, raw key) of trainer layouts: timm's train.py, timm-style 'model_ema', this repository's checkpoints
_WRAPPER_LAYOUTS = (('state_dict_ema', 'state_dict'), ('model_ema', 'model'), ('ema', 'model'))


def unwrap_state_dict(checkpoint: Mapping[str, Any], use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The model state_dict held by ``checkpoint`` (see the module docstring for the layouts)."""
    checkpoint, layout = pick_wrapped_state_dict(checkpoint, _WRAPPER_LAYOUTS, use_ema)
    if layout is not None and not isinstance(checkpoint, Mapping):
        raise KeyError(f'checkpoint has {layout[0]!r}/{layout[1]!r} but no state_dict under them')
    state = {strip_wrapper_prefixes(k): v for k, v in checkpoint.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f'not a state_dict: entries {bad[:5]} are not tensors')
    return state


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: unwrap (EMA preferred); a backbone without the head drops ``prediction.*``.

    ``relative_pos`` tensors of another design resolution are kept as they are (the model interpolates at run time
    only from its own size), so a shape mismatch there is reported by the strict load.
    """
    state_dict = unwrap_state_dict(state_dict)
    model_keys = model.state_dict().keys()
    return {k: v for k, v in state_dict.items() if k in model_keys or not k.startswith('prediction.')}


def load_official_checkpoint(model: nn.Module, path: str | Path, use_ema: bool = True) -> None:
    """Load an official Pyramid ViG file (or a wrapped copy) into ``model`` strictly.

    Raises:
        FileNotFoundError: ``path`` is missing (the message names where the weights are published).
        shared.checkpoint.CheckpointError: ``path`` is not a checkpoint (text, a foreign pickle, a truncated file).
        RuntimeError: missing, unexpected or mis-shaped keys, each named.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f'checkpoint {path} not found; the official Pyramid ViG weights are at {OFFICIAL_RELEASE}'
        )
    checkpoint = load_checkpoint(path)  # the safe unpickler; a file that is not a checkpoint is named as such
    try:
        state_dict = checkpoint_filter_fn(checkpoint, model)
    except (KeyError, TypeError, ValueError) as err:  # a dict without weights where they belong
        raise CheckpointError(f'not a Pyramid ViG / PVG checkpoint: {path}: {err}') from err
    check_state_dict_fits(model, state_dict, str(path))
    model.load_state_dict(state_dict, strict=True)
