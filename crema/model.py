"""CREMA's classifiers: the shared noisy-label backbones, a small MLP for the digits evidence, and the text models.

``VARIANTS`` maps a name to a builder and its defaults; :func:`create_model` builds one with overrides. Every model
has ``forward(x, return_features=False)`` -> logits (or ``(logits, pooled features)``).

=====================  ==============================================================  =====================
name                   what                                                            used by
=====================  ==============================================================  =====================
``preact_resnet18``    PreAct ResNet-18, width 64 (11.17 M params at C = 10)           CIFAR recipes
``preact_resnet18_w8``  the same at width 8                                             embedded default
``resnet50``           torchvision ResNet-50 (local ImageNet weights via ``pretrained``)  Clothing1M recipe
``digits_mlp``         MLP 3*8*8 -> 256 -> 256 -> C on the digits pixels               digits evidence
``text_bilstm``        embedding 64 + BiLSTM 64 (:class:`crema.text.TextBiLSTM`)       IMDB recipe
``text_cnn``           embedding 64 + CNN 3/4/5 x 64 (:class:`crema.text.TextCNN`)     text alternative
=====================  ==============================================================  =====================
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.noisy.models import FeatureClassifier, preact_resnet18, resnet50_noisy

__all__ = ["VARIANTS", "DigitsMLP", "create_model"]


class DigitsMLP(FeatureClassifier):
    """Two hidden ReLU layers on the flattened image (the fact sheet's "tiny MLP on the 64 pixels")."""

    def __init__(self, num_classes: int = 10, in_features: int = 3 * 8 * 8, hidden: int = 256):
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.num_features = hidden
        self.linear = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _preact(num_classes: int, width: int = 64, **_: Any) -> nn.Module:
    return preact_resnet18(num_classes=num_classes, width=width)


def _resnet50(num_classes: int, pretrained: str | Path | None = None, **_: Any) -> nn.Module:
    try:
        return resnet50_noisy(num_classes=num_classes, pretrained=pretrained)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as err:  # torch.load of a corrupt or foreign file
        if pretrained is None:
            raise
        raise ValueError(
            f"model.pretrained {pretrained}: cannot be loaded as the ImageNet weights (expected a torchvision resnet50 "
            f"state dict such as resnet50-0676ba61.pth; {type(err).__name__}: {str(err).splitlines()[0]})"
        ) from err


def _digits_mlp(num_classes: int, in_features: int = 192, hidden: int = 256, **_: Any) -> nn.Module:
    return DigitsMLP(num_classes, in_features, hidden)


def _text_bilstm(num_classes: int, vocab_size: int | None = None, **kwargs: Any) -> nn.Module:
    from crema.text import TextBiLSTM

    if vocab_size is None:
        raise ValueError("text models need vocab_size (the vocabulary built from the training reviews)")
    return TextBiLSTM(vocab_size, num_classes, **kwargs)


def _text_cnn(num_classes: int, vocab_size: int | None = None, **kwargs: Any) -> nn.Module:
    from crema.text import TextCNN

    if vocab_size is None:
        raise ValueError("text models need vocab_size (the vocabulary built from the training reviews)")
    return TextCNN(vocab_size, num_classes, **kwargs)


#: name -> (builder, default keyword arguments).
VARIANTS: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {
    "preact_resnet18": (_preact, {"width": 64}),
    "preact_resnet18_w8": (_preact, {"width": 8}),
    "resnet50": (_resnet50, {}),
    "digits_mlp": (_digits_mlp, {"hidden": 256}),
    "text_bilstm": (_text_bilstm, {"embed_dim": 64, "hidden": 64}),
    "text_cnn": (_text_cnn, {"embed_dim": 64, "filters": 64}),
}


def create_model(name: str, num_classes: int, **overrides: Any) -> nn.Module:
    """Build ``VARIANTS[name]`` for ``num_classes`` outputs; ``overrides`` replace its defaults (``None`` ignored)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; valid: {sorted(VARIANTS)}")
    builder, defaults = VARIANTS[name]
    kwargs = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
    return builder(num_classes, **kwargs)
