"""Backbones of the noisy-label packages, each with a feature output.

* :class:`PreActResNet18`: the CIFAR network of DivideMix/C2D (He et al., "Identity Mappings in Deep Residual
  Networks", arXiv 1603.05027): 3x3 stem, four stages of two pre-activation basic blocks (64-128-256-512 channels,
  strides 1-2-2-2), BN-ReLU, global average pooling, linear head. 11.17 M parameters for 10 classes. ``width``
  scales the channels (the embedded CPU default uses width 8, i.e. 64-d features).
* :func:`resnet50_noisy`: torchvision's ResNet-50 (the Clothing1M backbone of DivideMix), ImageNet or SSL weights
  loaded from a local file.

Both expose ``forward_features(x) -> N x d`` (pooled), ``forward_head(f)`` and ``forward(x, return_features=False)``
and the attribute ``num_features``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PreActBlock", "PreActResNet18", "ResNet50Noisy", "build_backbone", "preact_resnet18", "resnet50_noisy"]


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a (1x1 conv) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class _FeatureClassifier(nn.Module):
    """A backbone (``forward_features`` -> pooled features) with a linear head ``self.linear``."""

    linear: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = self.forward_features(x)
        logits = self.forward_head(features)
        return (logits, features) if return_features else logits


class PreActResNet18(_FeatureClassifier):
    """PreAct ResNet-18 for 32 x 32 inputs (any size works: pooling is global).

    Args:
        num_classes: classifier outputs (0: no head, ``forward`` returns the features).
        width: channels of the first stage (64 in the paper; 8 for the CPU default).
        in_chans: input channels.
    """

    def __init__(self, num_classes: int = 10, width: int = 64, in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        planes = [width, 2 * width, 4 * width, 8 * width]
        layers, in_planes = [], width
        for i, p in enumerate(planes):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(PreActBlock(in_planes, p, stride), PreActBlock(p, p, 1)))
            in_planes = p
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(in_planes)
        self.num_features = in_planes
        self.linear = nn.Linear(in_planes, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1)


def preact_resnet18(num_classes: int = 10, width: int = 64, **kwargs) -> PreActResNet18:
    """PreAct ResNet-18 (DivideMix ``PreResNet.py`` layout)."""
    return PreActResNet18(num_classes=num_classes, width=width, **kwargs)


class ResNet50Noisy(_FeatureClassifier):
    """torchvision ResNet-50 with a feature output (2048-d) and a fresh ``num_classes`` head (Clothing1M: 14)."""

    def __init__(self, num_classes: int = 14, pretrained: str | Path | None = None):
        super().__init__()
        from torchvision.models import resnet50

        body = resnet50()
        if pretrained is not None:
            from shared.noisy.simclr import load_ssl_checkpoint

            load_ssl_checkpoint(body, pretrained, strict_backbone=True)
        body.fc = nn.Identity()
        self.body = body
        self.num_features = 2048
        self.linear = nn.Linear(2048, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def resnet50_noisy(num_classes: int = 14, pretrained: str | Path | None = None) -> ResNet50Noisy:
    """ResNet-50 for Clothing1M; ``pretrained`` is a local ImageNet (torchvision keys) or SSL (MoCo) checkpoint."""
    return ResNet50Noisy(num_classes=num_classes, pretrained=pretrained)


def build_backbone(arch: str, num_classes: int, width: int = 64, pretrained: str | Path | None = None) -> nn.Module:
    """``"preact_resnet18"`` or ``"resnet50"``; ``pretrained`` (a local file) initialises the backbone."""
    if arch == "preact_resnet18":
        model = preact_resnet18(num_classes=num_classes, width=width)
        if pretrained is not None:
            from shared.noisy.simclr import load_ssl_checkpoint

            load_ssl_checkpoint(model, pretrained)
        return model
    if arch == "resnet50":
        return resnet50_noisy(num_classes=num_classes, pretrained=pretrained)
    raise ValueError(f"arch must be 'preact_resnet18' or 'resnet50', got {arch!r}")
