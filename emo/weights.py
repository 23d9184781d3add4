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

Downloads (``timm.create_model("emo_1m", pretrained=True)`` without a local file) go through
:func:`download_official_checkpoint`: each variant is cached under its own name, ``<torch hub>/checkpoints/
emo_1m_in1k-76c4282d.pth``, and verified against the checksum the official repository publishes, the git object
id of each ``net.pth`` in its tree (``git ls-tree 703e0b7 resources``; the files were added in that commit and are
unchanged at 27d9b40). A file that does not match is deleted and reported; nothing unverified is loaded.
"""

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.hub
import torch.nn as nn

from shared.weights import pick_wrapped_state_dict, strip_wrapper_prefixes

__all__ = [
    'OFFICIAL_CHECKPOINTS',
    'OFFICIAL_CHECKPOINT_GIT_SHA1',
    'checkpoint_filter_fn',
    'download_official_checkpoint',
    'git_blob_sha1',
    'load_official_checkpoint',
    'official_cache_file_name',
    'unwrap_state_dict',
]

OFFICIAL_CHECKPOINTS = {
    f'emo_{size}': f'https://github.com/zhangzjn/EMO/raw/main/resources/EMO_{size.upper()}/net.pth'
    for size in ('1m', '2m', '5m', '6m')
}
# The commit of zhangzjn/EMO that added the four checkpoints (none has changed since, up to 27d9b40).
OFFICIAL_COMMIT = '703e0b711679f7c19a79ee62b413688655d76802'
# Git blob ids (SHA-1 of b'blob <size>\0' + file bytes) of resources/EMO_*/net.pth in the tree of OFFICIAL_COMMIT:
# the only checksum the source publishes. The files are plain git blobs (the repository has no LFS attributes).
OFFICIAL_CHECKPOINT_GIT_SHA1 = {
    'emo_1m': '76c4282de548fa76eca6011720b29d8f80ffa784',
    'emo_2m': '9ec7138d292ca9b2d07923aec05762f547db8cf2',
    'emo_5m': '3ea7450fa9c290c3c46f372c1f5cebe1198d1ce1',
    'emo_6m': '10a248725247cf18b51e449dbd1a220354457c99',
}

# (EMA key, raw key) of the trainer layouts: the official trainer, timm's train.py, timm-style 'model_ema', and
# this repository's training checkpoints (shared.classification, emo.train_det)
_WRAPPER_LAYOUTS = (('net_E', 'net'), ('state_dict_ema', 'state_dict'), ('model_ema', 'model'), ('ema', 'model'))


def unwrap_state_dict(checkpoint: Mapping[str, Any], use_ema: bool = True) -> dict[str, torch.Tensor]:
    """Return the model state_dict held by ``checkpoint`` (see the module docstring for the layouts)."""
    checkpoint, layout = pick_wrapped_state_dict(checkpoint, _WRAPPER_LAYOUTS, use_ema)
    if checkpoint is None:
        ema_key, key = layout
        raise KeyError(f'checkpoint has {ema_key!r} but neither a usable {ema_key!r} nor {key!r}')
    return {strip_wrapper_prefixes(k): v for k, v in checkpoint.items()}


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: unwrap an official checkpoint (EMA preferred) for ``model``.

    Classification keys the model does not have (``norm.*`` / ``head.*`` of a backbone without them) are dropped,
    as the official downstream backbones do; every other key is passed through for a strict load.
    """
    state_dict = unwrap_state_dict(state_dict)
    model_keys = model.state_dict().keys()
    return {k: v for k, v in state_dict.items() if k in model_keys or not k.startswith(('norm.', 'head.'))}


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
            f'{", ".join(OFFICIAL_CHECKPOINTS.values())}'
        )
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    state_dict = checkpoint_filter_fn(unwrap_state_dict(checkpoint, use_ema=use_ema), model)
    return model.load_state_dict(state_dict, strict=strict)


def git_blob_sha1(path: str | Path) -> str:
    """The git object id of a file's content (``git hash-object PATH``): SHA-1 of ``b'blob <size>\\0'`` + bytes."""
    path = Path(path)
    digest = hashlib.sha1(f'blob {path.stat().st_size}\0'.encode())
    with path.open('rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def official_cache_file_name(variant: str) -> str:
    """Cache file name of an official checkpoint: the variant, its tag and the first 8 digits of its checksum."""
    return f'{variant}_in1k-{OFFICIAL_CHECKPOINT_GIT_SHA1[variant][:8]}.pth'


def _checksum_error(variant: str, what: str, found: str) -> str:
    return (
        f'{what} has git SHA-1 {found}, but the official {variant} checkpoint {OFFICIAL_CHECKPOINTS[variant]} '
        f'has {OFFICIAL_CHECKPOINT_GIT_SHA1[variant]} (git ls-tree {OFFICIAL_COMMIT[:7]} resources/ in '
        'github.com/zhangzjn/EMO)'
    )


def download_official_checkpoint(
    variant: str,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Path of the verified official checkpoint of ``variant``, downloaded into the cache on first use.

    Args:
        variant: 'emo_1m', 'emo_2m', 'emo_5m' or 'emo_6m'.
        cache_dir: Folder of the cached files; default ``<torch.hub.get_dir()>/checkpoints`` (timm's cache).
        progress: Show a download progress bar.
    Raises:
        RuntimeError: The downloaded (or cached) file does not have the published checksum. A download that fails
            the check is deleted, a cached file that fails it is left for inspection and named in the message.
    """
    if variant not in OFFICIAL_CHECKPOINT_GIT_SHA1:
        raise KeyError(f'no official checkpoint for {variant!r}; known: {sorted(OFFICIAL_CHECKPOINT_GIT_SHA1)}')
    cache_dir = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / 'checkpoints'
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / official_cache_file_name(variant)
    expected = OFFICIAL_CHECKPOINT_GIT_SHA1[variant]
    if path.is_file():
        found = git_blob_sha1(path)
        if found != expected:
            raise RuntimeError(
                f'the cached checkpoint is corrupt or not the official one: '
                f'{_checksum_error(variant, str(path), found)}; delete it to download again'
            )
        return path
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', dir=cache_dir)
    os.close(fd)
    try:
        # looked up on the module at call time, so that tests can replace the download
        torch.hub.download_url_to_file(OFFICIAL_CHECKPOINTS[variant], tmp, None, progress=progress)
        found = git_blob_sha1(tmp)
        if found != expected:
            raise RuntimeError(
                'checksum mismatch, nothing was loaded or cached: '
                + _checksum_error(variant, f'the download for {path}', found)
            )
        os.replace(tmp, path)  # atomic: the cache never holds a partial or unverified file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
