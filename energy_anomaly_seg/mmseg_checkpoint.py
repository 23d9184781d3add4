"""Loading the authors' mmsegmentation checkpoints (strict), and ImageNet ResNetV1c backbones.

SLEEG initialises from ``load_from='./results/deeplabv3/iter_40000.pth'``: a DeepLabv3-R101-d8 trained by the
authors with mmseg 0.27 (``configs/exps/deeplabv3.py``); their trained SLEEG models (Google Drive, see the README)
add the ``patch_head.*`` OoD head. Both are mmcv runner files ``{"meta": ..., "state_dict": ..., "optimizer": ...}``
whose ``state_dict`` keys are exactly this package's module names (:mod:`energy_anomaly_seg.model` mirrors mmseg's
ResNetV1c / ASPPHead / FCNHead), e.g.::

    backbone.stem.0.weight            backbone.layer3.22.bn3.running_var     decode_head.image_pool.1.conv.weight
    decode_head.aspp_modules.3.bn.bias   decode_head.bottleneck.conv.weight  decode_head.conv_seg.weight
    auxiliary_head.convs.0.conv.weight   patch_head.convs.2.bn.weight        patch_head.conv_seg.bias

The loader is strict: every key of the model must be present with the right shape (only ``patch_head.*`` may be
absent when loading a segmentor-only file, and then the head keeps its initialisation), and no unknown key is
accepted. Files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["load_backbone_pretrained", "load_mmseg_checkpoint", "read_checkpoint", "unwrap_state_dict"]

_WRAPPERS = ("module.", "_orig_mod.")


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the safe unpickler refused something (e.g. a numpy object in mmcv's meta)
        raise RuntimeError(
            f"could not load {path} with torch.load(weights_only=True): {err}\n"
            "If the file is an mmcv checkpoint whose 'meta' holds non-tensor objects, extract the weights once in an "
            "environment you trust (for instance with mmcv's own checkpoint loader) and save only its tensors: "
            "torch.save(checkpoint['state_dict'], DST); then pass DST here"
        ) from err


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state_dict inside an mmcv runner file (``state_dict``), this package's checkpoints (``model``) or a plain
    state_dict, with DDP / torch.compile prefixes removed."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"expected a dict checkpoint, got {type(checkpoint).__name__}")
    for key in ("state_dict", "model"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            checkpoint = checkpoint[key]
            break
    out = {}
    for k, v in checkpoint.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"state_dict entry {k!r} is a {type(v).__name__}, not a tensor")
        for prefix in _WRAPPERS:
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def _check(
    model_state: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    optional_prefixes: tuple[str, ...],
    source: str,
) -> set[str]:
    """Raise on unexpected keys, missing keys (outside `optional_prefixes`) or shape mismatches; return the
    optional keys that were missing."""
    missing = set(model_state) - set(state)
    optional_missing = {k for k in missing if k.startswith(optional_prefixes)}
    missing -= optional_missing
    unexpected = set(state) - set(model_state)
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(model_state[k].shape)}"
        for k in sorted(set(state) & set(model_state))
        if state[k].shape != model_state[k].shape
    ]
    problems = []
    for what, keys in (("missing", sorted(missing)), ("unexpected", sorted(unexpected)), ("wrong shape", wrong_shape)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{len(keys)} {what} key(s): {shown}")
    if problems:
        raise KeyError(f"{source} does not match the model (strict loading): " + "; ".join(problems))
    return optional_missing


def load_mmseg_checkpoint(
    model: nn.Module, checkpoint: str | Path | Mapping[str, Any], allow_missing_ood_head: bool = True
) -> dict[str, Any]:
    """Strictly load an mmseg-layout checkpoint (segmentor, or segmentor + ``patch_head``) into `model`.

    Args:
        model: a :class:`~energy_anomaly_seg.model.SLEEG` (or :class:`~energy_anomaly_seg.model.DeepLabV3`).
        checkpoint: a path, or an already loaded dict.
        allow_missing_ood_head: accept a file without ``patch_head.*`` (the authors' segmentor ``iter_40000.pth``);
            the OoD head then keeps its initialisation.

    Returns:
        ``{"loaded_keys": int, "ood_head_loaded": bool, "meta": dict}``.

    Raises:
        KeyError: any missing (other than an allowed OoD head), unexpected or wrongly shaped key, listed.
    """
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "checkpoint"
    raw = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    state = unwrap_state_dict(raw)
    model_state = model.state_dict()
    optional = ("patch_head.",) if allow_missing_ood_head else ()
    missing_head = _check(model_state, state, optional, source)
    model.load_state_dict({**{k: model_state[k] for k in missing_head}, **state}, strict=True)
    meta = raw.get("meta", {}) if isinstance(raw, Mapping) else {}
    return {"loaded_keys": len(state), "ood_head_loaded": not missing_head, "meta": meta}


def load_backbone_pretrained(model: nn.Module, checkpoint: str | Path | Mapping[str, Any]) -> int:
    """Load an ImageNet ResNetV1c classifier (open-mmlab ``resnetXX_v1c`` layout: ``stem.*``, ``layer*``, ``fc.*``)
    into ``model.backbone``; ``fc.*`` is dropped, everything else must match. Returns the number of tensors loaded."""
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "checkpoint"
    raw = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    state = {k.removeprefix("backbone."): v for k, v in unwrap_state_dict(raw).items() if not k.startswith("fc.")}
    backbone = model.backbone
    _check(backbone.state_dict(), state, (), source)
    backbone.load_state_dict(state, strict=True)
    return len(state)


def main(argv: list[str] | None = None) -> None:
    """``python -m energy_anomaly_seg.mmseg_checkpoint SRC [--variant NAME]``: check that an mmseg checkpoint loads
    strictly into the SLEEG model and report what it holds."""
    from energy_anomaly_seg.model import VARIANTS, create_model

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("--variant", default="deeplabv3_r101_d8", choices=sorted(VARIANTS))
    parser.add_argument("--num_classes", type=int, default=19)
    args = parser.parse_args(argv)
    info = load_mmseg_checkpoint(create_model(args.variant, num_classes=args.num_classes), args.checkpoint)
    print(
        f"{args.checkpoint}: {info['loaded_keys']} tensors loaded strictly into sleeg_{args.variant}; "
        f"OoD head {'loaded' if info['ood_head_loaded'] else 'absent (segmentor-only file)'}"
    )


if __name__ == "__main__":
    main()
