"""SLEEG: a frozen DeepLabv3 segmentor with a trainable OoD head on its stage-4 features.

Paper: `Self-supervised Likelihood Estimation with Energy Guidance for Anomaly Segmentation in Urban Scenes`
- https://arxiv.org/abs/2302.06815 (Tu et al., AAAI 2024).

Re-implemented from the facts of the released mmsegmentation-0.27 code (github.com/yuanpengtu/SLEEG,
`configs/exps/deeplabv3_mst.py`, `core/modeling/codec.py`) and of mmsegmentation's ResNetV1c / ASPPHead / FCNHead.
Module and parameter names follow mmsegmentation, so the authors' checkpoints load key-for-key
(:mod:`energy_anomaly_seg.mmseg_checkpoint`):

* ``backbone``: ResNetV1c, i.e. a ResNet with the deep stem (three 3x3 convs 3->32->32->64, ``stem.{0,3,6}`` convs and
  ``stem.{1,4,7}`` BNs), 'pytorch' style (stride on the 3x3 conv), strides (1, 2, 1, 1) and dilations (1, 1, 2, 4)
  with ``contract_dilation`` (the first block of a dilated stage uses half the dilation), i.e. output stride 8.
* ``decode_head``: DeepLabv3 ASPPHead (image pooling branch + 1x1 + three 3x3 atrous branches at 12/24/36, 3x3
  bottleneck, Dropout2d 0.1, 1x1 ``conv_seg`` to 19 classes) on the 2048-channel stage-4 features.
* ``auxiliary_head``: FCNHead (one 3x3 Conv-BN-ReLU 1024->256, Dropout2d 0.1, ``conv_seg``) on stage 3.
* ``patch_head`` (the OoD head h_theta): FCNHead with three 3x3 Conv-BN-ReLU blocks 2048->256->256->256, Dropout2d 0.1
  and a 1x1 classifier to 2 logits (index 0 normal, 1 anomaly), reading the *backbone* stage-4 features.

The segmentor (backbone, decode and auxiliary heads) is frozen with its BatchNorm layers in eval mode; only the OoD
head trains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn

__all__ = [
    "SLEEG",
    "VARIANTS",
    "ASPPHead",
    "BasicBlock",
    "Bottleneck",
    "ConvModule",
    "DeepLabV3",
    "FCNHead",
    "ResNetV1c",
    "count_parameters",
    "create_deeplabv3",
    "create_model",
]


class ConvModule(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU with mmcv's submodule names ``conv`` / ``bn`` / ``activate``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block as mmseg builds it: the dilation applies to ``conv1`` only (``conv2`` is a plain 3x3)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet bottleneck, 'pytorch' style: the stride and the dilation sit on the 3x3 ``conv2``."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_ARCH: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNetV1c(nn.Module):
    """ResNet-V1c (deep stem) returning the four stage outputs, mmseg's ``ResNetV1c`` layout.

    Args:
        depth: 18, 34, 50 or 101.
        stem_channels: output channels of the deep stem (its first two convs have half of it).
        base_channels: width of the first stage (stage i has ``base_channels * 2**i`` planes).
        strides: stride of each stage.
        dilations: dilation of each stage; with ``contract_dilation`` the first block of a stage with dilation d > 1
            uses d // 2.
    """

    def __init__(
        self,
        depth: int = 101,
        stem_channels: int = 64,
        base_channels: int = 64,
        strides: Sequence[int] = (1, 2, 1, 1),
        dilations: Sequence[int] = (1, 1, 2, 4),
        contract_dilation: bool = True,
    ):
        super().__init__()
        if depth not in _ARCH:
            raise ValueError(f"unsupported ResNet depth {depth}; expected one of {sorted(_ARCH)}")
        block, stage_blocks = _ARCH[depth]
        half = stem_channels // 2
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, padding=1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, stem_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem_channels
        self.out_channels: list[int] = []
        for i, num_blocks in enumerate(stage_blocks):
            planes = base_channels * 2**i
            layer = self._make_layer(block, inplanes, planes, num_blocks, strides[i], dilations[i], contract_dilation)
            self.add_module(f"layer{i + 1}", layer)
            inplanes = planes * block.expansion
            self.out_channels.append(inplanes)

    @staticmethod
    def _make_layer(
        block: type[nn.Module],
        inplanes: int,
        planes: int,
        num_blocks: int,
        stride: int,
        dilation: int,
        contract_dilation: bool,
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        first_dilation = dilation // 2 if (dilation > 1 and contract_dilation) else dilation
        layers = [block(inplanes, planes, stride=stride, dilation=first_dilation, downsample=downsample)]
        inplanes = planes * block.expansion
        layers += [block(inplanes, planes, stride=1, dilation=dilation) for _ in range(1, num_blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.stem(x))
        outs = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            outs.append(x)
        return outs


class ASPPHead(nn.Module):
    """DeepLabv3 head (Chen et al. 2017) with mmseg's names: ``image_pool``, ``aspp_modules``, ``bottleneck``,
    ``conv_seg``. The dilation-1 branch is a 1x1 conv, the others 3x3 atrous convs."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        dilations: Sequence[int] = (1, 12, 24, 36),
        dropout_ratio: float = 0.1,
        in_index: int = 3,
    ):
        super().__init__()
        self.in_index = in_index
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(in_channels, channels, 1))
        self.aspp_modules = nn.ModuleList(
            ConvModule(in_channels, channels, 1 if d == 1 else 3, padding=0 if d == 1 else d, dilation=d)
            for d in dilations
        )
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3, padding=1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[self.in_index]
        pooled = F.interpolate(self.image_pool(x), size=x.shape[2:], mode="bilinear", align_corners=False)
        out = torch.cat([pooled, *(m(x) for m in self.aspp_modules)], dim=1)
        return self.conv_seg(self.dropout(self.bottleneck(out)))


class FCNHead(nn.Module):
    """FCN head: ``num_convs`` 3x3 Conv-BN-ReLU blocks (``convs``), Dropout2d, 1x1 ``conv_seg`` (concat_input False).

    Used as the auxiliary head (1 conv on stage 3) and as SLEEG's OoD head (3 convs on stage 4, 2 classes).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        num_convs: int = 1,
        dropout_ratio: float = 0.1,
        in_index: int = 3,
    ):
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        self.in_index = in_index
        self.convs = nn.Sequential(
            *(ConvModule(in_channels if i == 0 else channels, channels, 3, padding=1) for i in range(num_convs))
        )
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        x = feats if isinstance(feats, torch.Tensor) else feats[self.in_index]
        return self.conv_seg(self.dropout(self.convs(x)))


class DeepLabV3(nn.Module):
    """DeepLabv3 (ASPP) on a ResNetV1c backbone with an auxiliary FCN head, as mmseg's ``EncoderDecoder``.

    ``forward_features`` returns the four backbone stages, ``forward_head`` the 1/8-resolution logits of the decode
    head, ``forward`` the logits upsampled (bilinear, align_corners=False) to the input size.
    """

    def __init__(
        self,
        depth: int = 101,
        num_classes: int = 19,
        stem_channels: int = 64,
        base_channels: int = 64,
        aspp_channels: int = 512,
        aspp_dilations: Sequence[int] = (1, 12, 24, 36),
        aux_channels: int = 256,
        dropout_ratio: float = 0.1,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = ResNetV1c(depth, stem_channels=stem_channels, base_channels=base_channels)
        c3, c4 = self.backbone.out_channels[2], self.backbone.out_channels[3]
        self.feature_channels = c4
        self.decode_head = ASPPHead(c4, aspp_channels, num_classes, aspp_dilations, dropout_ratio, in_index=3)
        self.auxiliary_head = FCNHead(
            c3, aux_channels, num_classes, num_convs=1, dropout_ratio=dropout_ratio, in_index=2
        )

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(x)

    def forward_head(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.decode_head(feats)

    def forward_aux(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.auxiliary_head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.forward_head(self.forward_features(x))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)


class SLEEG(DeepLabV3):
    """DeepLabv3 segmentor (frozen, BN in eval mode) + the 2-class OoD head ``patch_head`` (SLEEG's h_theta).

    Args:
        ood_channels: width of the OoD head's three Conv-BN-ReLU blocks (256 in the paper).
        ood_num_convs: number of Conv-BN-ReLU blocks (3 in the paper).
        freeze_segmentor: freeze backbone/decode/auxiliary heads (requires_grad False) and keep their BN (and, unless
            ``segmentor_dropout_in_train``, their dropout) in eval mode.
        segmentor_dropout_in_train: keep the frozen decode head's Dropout2d active in training mode, as the released
            code does (it only switches BN to eval). Off by default: the energy used for refinement is deterministic.
        **kwargs: the :class:`DeepLabV3` arguments.
    """

    segment_part = ("backbone", "decode_head", "auxiliary_head")

    def __init__(
        self,
        ood_channels: int = 256,
        ood_num_convs: int = 3,
        freeze_segmentor: bool = True,
        segmentor_dropout_in_train: bool = False,
        **kwargs,
    ):
        dropout_ratio = kwargs.get("dropout_ratio", 0.1)
        super().__init__(**kwargs)
        self.patch_head = FCNHead(
            self.feature_channels, ood_channels, 2, num_convs=ood_num_convs, dropout_ratio=dropout_ratio, in_index=3
        )
        self.freeze_segmentor = freeze_segmentor
        self.segmentor_dropout_in_train = segmentor_dropout_in_train
        if freeze_segmentor:
            self._freeze_segmentor()

    def segmentor_modules(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.segment_part]

    def _freeze_segmentor(self) -> None:
        for module in self.segmentor_modules():
            for p in module.parameters():
                p.requires_grad_(False)

    def set_segmentor_trainable(self, trainable: bool) -> None:
        """Unfreeze the segmentor (to train it first, as the embedded default does) or freeze it again."""
        self.freeze_segmentor = not trainable
        for module in self.segmentor_modules():
            for p in module.parameters():
                p.requires_grad_(trainable)
        self.train(self.training)

    def train(self, mode: bool = True) -> SLEEG:
        super().train(mode)
        if mode and self.freeze_segmentor:
            for module in self.segmentor_modules():
                module.eval()
            if self.segmentor_dropout_in_train:
                self.decode_head.dropout.train(True)
        return self

    def forward_ood(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """OoD-head logits (B, 2, H/8, W/8) on the stage-4 features."""
        return self.patch_head(feats)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Segmentation and OoD logits at 1/8 resolution: ``{"seg_logits", "ood_logits", "features"}``."""
        feats = self.forward_features(x)
        return {"seg_logits": self.forward_head(feats), "ood_logits": self.forward_ood(feats), "features": feats}


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (not buffers) of `module`."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# name -> DeepLabV3 / SLEEG arguments (README, Quick start). deeplabv3_r101_d8 is the paper's segmentor (19 Cityscapes
# classes); r50_d8 and r18_d8 are mmseg's ResNet-50 / ResNet-18 DeepLabv3 (r18: ASPP 128, aux 64); r18_d8_tiny is the
# embedded default (ResNet-18 layout at a quarter of the width, trainable from scratch on two CPU cores in about a
# minute); r18_d8_test is for unit tests only.
VARIANTS: dict[str, dict] = {
    "deeplabv3_r101_d8": dict(
        depth=101, stem_channels=64, base_channels=64, aspp_channels=512, aux_channels=256, ood_channels=256
    ),
    "deeplabv3_r50_d8": dict(
        depth=50, stem_channels=64, base_channels=64, aspp_channels=512, aux_channels=256, ood_channels=256
    ),
    "deeplabv3_r18_d8": dict(
        depth=18, stem_channels=64, base_channels=64, aspp_channels=128, aux_channels=64, ood_channels=256
    ),
    "deeplabv3_r18_d8_tiny": dict(
        depth=18, stem_channels=16, base_channels=16, aspp_channels=32, aux_channels=16, ood_channels=32
    ),
    "deeplabv3_r18_d8_test": dict(
        depth=18, stem_channels=8, base_channels=8, aspp_channels=8, aux_channels=8, ood_channels=8
    ),
}


def _variant(name: str) -> dict:
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; expected one of {sorted(VARIANTS)}")
    return {"num_classes": 19, **VARIANTS[name]}


def create_model(name: str, **overrides) -> SLEEG:
    """The SLEEG model (segmentor + OoD head) of the variant `name` of :data:`VARIANTS`; `overrides` replace the
    variant's arguments (e.g. ``num_classes``, ``segmentor_dropout_in_train``, any :class:`SLEEG` argument)."""
    return SLEEG(**{**_variant(name), **overrides})


def create_deeplabv3(name: str, **overrides) -> DeepLabV3:
    """The segmentor alone (no OoD head) of the variant `name`, for ``train_segmentor.py``; its state dict has the
    keys of :func:`create_model`'s segmentor."""
    kwargs = {k: v for k, v in _variant(name).items() if k != "ood_channels"}
    return DeepLabV3(**{**kwargs, **overrides})


def _register(variant: str) -> Callable[..., SLEEG]:
    def fn(pretrained: bool = False, **kwargs) -> SLEEG:
        if pretrained:
            raise ValueError(
                "no published weights are registered with timm; load the authors' mmseg checkpoint "
                "with energy_anomaly_seg.load_mmseg_checkpoint(model, PATH)"
            )
        for timm_key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # create_model's extras
            kwargs.pop(timm_key, None)
        return create_model(variant, **kwargs)

    fn.__name__ = f"sleeg_{variant}"
    fn.__doc__ = f"SLEEG with the {variant} segmentor ({VARIANTS[variant]})."
    fn.__module__ = __name__
    return fn


sleeg_deeplabv3_r101_d8 = register_model(_register("deeplabv3_r101_d8"))
sleeg_deeplabv3_r50_d8 = register_model(_register("deeplabv3_r50_d8"))
sleeg_deeplabv3_r18_d8 = register_model(_register("deeplabv3_r18_d8"))
sleeg_deeplabv3_r18_d8_tiny = register_model(_register("deeplabv3_r18_d8_tiny"))
sleeg_deeplabv3_r18_d8_test = register_model(_register("deeplabv3_r18_d8_test"))
