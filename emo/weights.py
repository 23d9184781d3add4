"""Loading the official EMO checkpoints.

The released weights are ``resources/EMO_{1M,2M,5M,6M}/net.pth`` in https://github.com/zhangzjn/EMO. Their keys
are the ones of :class:`emo.model.EMO` (no remapping); the files are read with ``torch.load(weights_only=True)``.
Accepted layouts:

* a flat state_dict (what the official downstream backbones load);
* the official trainer's ``{'net': ..., 'net_E': ...}``: ``net_E`` is the EMA model, and the published accuracies
  are EMA evaluations, so it is preferred (``use_ema=False`` picks ``net``);
* timm/torchvision-style ``{'state_dict' | 'state_dict_ema' | 'model' | 'model_ema': ...}``;
* this repository's training checkpoints ``{'model': ..., 'ema': ..., 'optimizer': ...}`` (``emo.train``), EMA
  preferred;
* keys prefixed by ``module.`` (DDP) or ``_orig_mod.`` (torch.compile).
"""
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = ['OFFICIAL_CHECKPOINTS', 'checkpoint_filter_fn', 'load_official_checkpoint', 'unwrap_state_dict']

OFFICIAL_CHECKPOINTS = {
    f'emo_{size}': f'https://github.com/zhangzjn/EMO/raw/main/resources/EMO_{size.upper()}/net.pth'
    for size in ('1m', '2m', '5m', '6m')
}

_WRAPPER_PREFIXES = ('module.', '_orig_mod.')
# (EMA key, raw key) of the trainer layouts: the official trainer, timm's train.py, timm-style 'model_ema', and
# this repository's training checkpoints (shared.classification, emo.train_det)
_WRAPPER_LAYOUTS = (('net_E', 'net'), ('state_dict_ema', 'state_dict'), ('model_ema', 'model'), ('ema', 'model'))


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def unwrap_state_dict(checkpoint: Mapping[str, Any], use_ema: bool = True) -> dict[str, torch.Tensor]:
    """Return the model state_dict held by ``checkpoint`` (see the module docstring for the layouts)."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'expected a dict checkpoint, got {type(checkpoint).__name__}')
    # a layout is recognised by its EMA key first (``{'model', 'ema'}`` and ``{'model', 'model_ema'}`` share 'model')
    layout = next((pair for pair in _WRAPPER_LAYOUTS if pair[0] in checkpoint), None)
    layout = layout or next((pair for pair in _WRAPPER_LAYOUTS if pair[1] in checkpoint), None)
    if layout is not None:
        ema_key, key = layout
        picked = checkpoint.get(ema_key) if use_ema else None
        checkpoint = picked if picked is not None else checkpoint.get(key)
        if checkpoint is None:
            raise KeyError(f'checkpoint has {ema_key!r} but neither a usable {ema_key!r} nor {key!r}')
    return {_strip_prefixes(k): v for k, v in checkpoint.items()}


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: unwrap an official checkpoint (EMA preferred) for ``model``.

    Classification keys the model does not have (``norm.*`` / ``head.*`` of a backbone without them) are dropped,
    as the official downstream backbones do; every other key is passed through for a strict load.
    """
    state_dict = unwrap_state_dict(state_dict)
    model_keys = model.state_dict().keys()
    return {
        k: v for k, v in state_dict.items()
        if k in model_keys or not k.startswith(('norm.', 'head.'))
    }


def load_official_checkpoint(
        model: nn.Module,
        path: str | Path,
        use_ema: bool = True,
        strict: bool = True,
) -> nn.modules.module._IncompatibleKeys:
    """Load an official EMO checkpoint file into ``model`` (an :class:`emo.model.EMO`).

    Args:
        model: Target model; a backbone without ``norm``/``head`` ignores those keys.
        path: Local ``net.pth`` (see ``OFFICIAL_CHECKPOINTS`` for where each is published).
        use_ema: Prefer the EMA weights (``net_E``) of a trainer checkpoint.
        strict: Passed to ``load_state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f'checkpoint {path} not found; the official weights are published at '
            f'{", ".join(OFFICIAL_CHECKPOINTS.values())}')
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    state_dict = checkpoint_filter_fn(unwrap_state_dict(checkpoint, use_ema=use_ema), model)
    return model.load_state_dict(state_dict, strict=strict)
