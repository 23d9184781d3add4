"""Backbones of the noisy-label packages, each with a feature-map, a pooled-feature and a logit output.

* :class:`PreActResNet18`: the CIFAR network of DivideMix/C2D in the exact layout of DivideMix's ``PreResNet.py``
  (He et al., "Identity Mappings in Deep Residual Networks", arXiv 1603.05027, as released with DivideMix,
  arXiv 2002.07394): a 3x3 stem conv-BN-ReLU (``conv1``, ``bn1``), four stages of two pre-activation basic blocks
  (64-128-256-512 channels, strides 1-2-2-2; block keys ``bn1 conv1 bn2 conv2`` and ``shortcut.0`` for the 1x1
  projection), **no final BN**, average pooling, linear head (``linear``). 11.17 M parameters for 10 classes, so a
  DivideMix, C2D or SimCLR checkpoint in that layout loads with ``strict=True``. ``width`` scales the channels (the
  embedded CPU defaults use width 8, i.e. 64-d features).
* :func:`resnet50_noisy`: torchvision's ResNet-50 (the Clothing1M backbone of DivideMix), ImageNet or SSL weights
  loaded from a local file.

Both expose the same API (see shared/noisy/README.md, "Model API"):

* ``forward_feature_map(x) -> B x C x h x w``: the last feature map, right before global pooling;
* ``pool(fmap) -> B x C``: global average pooling;
* ``forward_features(x) = pool(forward_feature_map(x))``; ``forward_head(features) -> logits``;
* ``forward(x, return_features=False)``: logits, or ``(logits, pooled features)``;
* the attribute ``num_features`` (C).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FeatureClassifier",
    "PreActBlock",
    "PreActResNet18",
    "ResNet50Noisy",
    "build_backbone",
    "preact_resnet18",
    "resnet50_noisy",
]


class PreActBlock(nn.Module):
    """DivideMix's pre-activation basic block: a = ReLU(BN(x)); out = conv2(ReLU(BN(conv1(a)))) + shortcut(a).

    As in the released ``PreResNet.py`` the shortcut takes the pre-activated ``a`` (not ``x``), also when it is the
    identity (an empty ``nn.Sequential``); the projection is ``shortcut.0`` (1x1 conv, no BN).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class FeatureClassifier(nn.Module):
    """A feature extractor (``forward_features`` -> ``B x num_features``) with a linear head ``linear``; the
    interface the noisy-label trainers use (``forward(x, return_features=True)`` gives logits and features)."""

    linear: nn.Module
    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = self.forward_features(x)
        logits = self.forward_head(features)
        return (logits, features) if return_features else logits


class _FeatureClassifier(FeatureClassifier):
    """A backbone (``forward_feature_map`` -> last feature map) with global pooling and a linear head ``linear``."""

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map ``B x num_features x h x w``, right before global pooling."""
        raise NotImplementedError

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Global average pooling ``B x C x h x w -> B x C`` (DivideMix: ``avg_pool2d(out, 4)`` on the 4 x 4 map)."""
        return feature_map.mean(dim=(2, 3))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``B x num_features``."""
        return self.pool(self.forward_feature_map(x))


class PreActResNet18(_FeatureClassifier):
    """PreAct ResNet-18 for 32 x 32 inputs in DivideMix's key layout (any input size works: pooling is global).

    Args:
        num_classes: classifier outputs (0: no head, ``forward`` returns the features).
        width: channels of the first stage (64 in the paper; 8 for the CPU default).
        in_chans: input channels.
    """

    def __init__(self, num_classes: int = 10, width: int = 64, in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes = [width, 2 * width, 4 * width, 8 * width]
        layers, in_planes = [], width
        for i, p in enumerate(planes):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(PreActBlock(in_planes, p, stride), PreActBlock(p, p, 1)))
            in_planes = p
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.num_features = in_planes
        self.linear = nn.Linear(in_planes, num_classes) if num_classes > 0 else nn.Identity()

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def preact_resnet18(num_classes: int = 10, width: int = 64, **kwargs) -> PreActResNet18:
    """PreAct ResNet-18 (DivideMix ``PreResNet.py`` layout)."""
    return PreActResNet18(num_classes=num_classes, width=width, **kwargs)


class ResNet50Noisy(_FeatureClassifier):
    """torchvision ResNet-50 (``body``) with a feature output (2048-d) and a fresh ``num_classes`` head ``linear``
    (Clothing1M: 14)."""

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

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))


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
