"""FRIH: Fine-grained Region-aware Image Harmonization, two stages on an iSSAM (or iDIH) base

Paper: `FRIH: Fine-Grained Region-Aware Image Harmonization` - https://arxiv.org/abs/2205.06448
(Peng et al., AAAI 2024). No official code exists.

Stage 1 (global, coarse harmonization) is iSSAM256 or iDIH256 of Sofiiuk et al., `Foreground-aware Semantic
Representations for Image Harmonization` (WACV 2021), re-implemented from the facts of saic-vul/image_harmonization
(`iharm/model/base/ssam_model.py`, `iharm/model/modeling/{unet,conv_autoencoder,basic_blocks}.py`,
`iharm/model/ops.py`, `iharm/mconfigs/base.py`). The module tree (and so the state_dict keys) mirrors that code:
iSSAM256 has 2,185,340 parameters (reference: 2.185 M), iDIH256 8,301,284 (reference: 8.301 M).

Stage 2 follows the paper's abstract; every layout detail is a design choice [HYP] (README, "Fidelity notes"),
each a field of `FRIHConfig`:

* the foreground is split into K colour submasks by batched K-means (`frih.submasks`), on the composite
  (`cluster_on="composite"`, the abstract's wording) or on the coarse output;
* K lightweight encoder-decoders (iSSAM-like UNets whose spatial-separated attention is driven by the submask),
  each fed concat(current image, submask k). Cascaded (module k refines module k-1's output) or parallel (all refine
  the coarse image); separate weights or one shared module;
* the fusion prediction module (FPM) reads the decoder features of every level of every module, upsamples them to
  full resolution, fuses them with 1x1 + 3x3 conv-BN-ReLU and predicts the final image with the iSSAM image-fusion
  head, blended through a learned sigmoid map with the composite (`fpm_blend="composite"`, as the iSSAM head), the
  coarse output or the last cascade output.

All networks work on ImageNet-normalised RGB (`normalize_image`) and return a dict whose "images" entry is the
prediction in the same normalised space.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from frih.submasks import kmeans_submasks
from shared.classification import IMAGENET_MEAN, IMAGENET_STD  # timm's constants, the torchvision values

__all__ = [
    "FRIH",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VARIANTS",
    "DIHHarmonizer",
    "FRIHConfig",
    "FusionPredictionModule",
    "SSAMHarmonizer",
    "SpatialSeparatedAttention",
    "build_model",
    "count_parameters",
    "create_model",
    "denormalize_image",
    "list_models",
    "normalize_image",
    "xavier_gluon_init_",
]


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return mean, std


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1], (B, 3, H, W) -> ImageNet-normalised (the networks' input and output space)."""
    mean, std = _stats(image)
    return (image - mean) / std


def denormalize_image(image: torch.Tensor) -> torch.Tensor:
    """Inverse of `normalize_image` (no clamping)."""
    mean, std = _stats(image)
    return image * std + mean


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (buffers such as the fixed Gaussian kernel are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def xavier_gluon_init_(
    module: nn.Module, magnitude: float = 1.0, rnd_type: str = "gaussian", blur_init: str = "gaussian"
) -> nn.Module:
    """MXNet-Gluon Xavier init as used by saic-vul (`initializer.XavierGluon`, factor "avg").

    Conv/transposed-conv/linear weights ~ N(0, sqrt(magnitude / ((fan_in + fan_out) / 2))) (or the uniform of the
    same bound), biases 0; norm layers weight 1, bias 0. iSSAM uses magnitude 1.0, iDIH 2.0.

    `blur_init="released"` reproduces a side effect of saic-vul's `model.apply(XavierGluon)`: the SSAM block's
    Gaussian-blur kernel (a buffer named `weight` of a module the initializer also matches) is overwritten with the
    same Xavier draw, i.e. N(0, sqrt(magnitude / 49)) for the (1, 1, 7, 7) kernel, a random signed "blur". The
    default "gaussian" keeps the true Gaussian (README, "Fidelity notes").
    """
    if blur_init not in ("gaussian", "released"):
        raise ValueError(f"blur_init must be 'gaussian' or 'released', got {blur_init!r}")
    for m in module.modules():
        if isinstance(m, GaussianBlur):
            if blur_init == "released":
                fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
                scale = math.sqrt(magnitude / ((fan_in + fan_out) / 2.0))
                with torch.no_grad():
                    if rnd_type == "uniform":
                        m.weight.uniform_(-scale, scale)
                    else:
                        m.weight.normal_(0.0, scale)
            continue
        if isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
            scale = math.sqrt(magnitude / ((fan_in + fan_out) / 2.0))
            if rnd_type == "gaussian":
                nn.init.normal_(m.weight, 0.0, scale)
            elif rnd_type == "uniform":
                nn.init.uniform_(m.weight, -scale, scale)
            else:
                raise ValueError(f"rnd_type must be 'gaussian' or 'uniform', got {rnd_type!r}")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


# --------------------------------------------------------------------------------------------------------------------
# Building blocks (names follow the saic-vul module tree)
# --------------------------------------------------------------------------------------------------------------------


class ConvBlock(nn.Module):
    """Conv2d -> BatchNorm2d (or identity) -> activation, held in `block` (saic `ConvBlock`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        norm: bool = True,
        activation: Callable[[], nn.Module] = nn.ReLU,
        bias: bool = True,
    ):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias),
            nn.BatchNorm2d(out_channels) if norm else nn.Identity(),
            activation(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _relu() -> nn.Module:
    return nn.ReLU(inplace=True)


class UNetDoubleConv(nn.Module):
    """Two 3x3 ConvBlocks (stride 1, padding 1, bias) with ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: bool):
        super().__init__()
        self.block = nn.Sequential(
            ConvBlock(in_channels, out_channels, norm=norm, activation=_relu),
            ConvBlock(out_channels, out_channels, norm=norm, activation=_relu),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ChannelAttention(nn.Module):
    """Channel gate: concat(global avg-pool, global max-pool) -> Linear(2C, max(C/16, 8)) -> ReLU -> Linear ->
    sigmoid."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.global_pools = nn.ModuleList([nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)])
        mid = max(in_channels // 16, 8)
        self.attention_transform = nn.Sequential(
            nn.Linear(len(self.global_pools) * in_channels, mid),
            nn.ReLU(),
            nn.Linear(mid, in_channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([pool(x) for pool in self.global_pools], dim=1).flatten(1)
        return self.attention_transform(pooled)[..., None, None] * x


class GaussianBlur(nn.Module):
    """Fixed normalised Gaussian (7x7, sigma 1, padding 3) as a depthwise conv; the kernel is a buffer `weight`."""

    def __init__(self, channels: int = 1, kernel_size: int = 7, sigma: float = 1.0, padding: int = 3):
        super().__init__()
        coords = torch.arange(kernel_size, dtype=torch.float32) - (kernel_size - 1) / 2
        g = torch.exp(-(coords**2) / (2 * sigma**2))
        kernel = g[:, None] * g[None, :]
        kernel = (kernel / kernel.sum()).expand(channels, 1, kernel_size, kernel_size).contiguous()
        self.register_buffer("weight", kernel)
        self.padding = padding
        self.groups = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), padding=self.padding, groups=self.groups)


class SpatialSeparatedAttention(nn.Module):
    """S2AM block of iSSAM: out = m~ (fg + mix) + (1 - m~) bg, with m~ the bilinearly resized, 7x7-blurred mask.

    fg = learning block (two bias-free 3x3 conv-BN-ReLU, C -> mid_k C -> C) applied to the foreground-gated input;
    bg and mix are channel-gated inputs.
    """

    def __init__(self, in_channels: int, mid_k: float = 0.5):
        super().__init__()
        self.background_gate = ChannelAttention(in_channels)
        self.foreground_gate = ChannelAttention(in_channels)
        self.mix_gate = ChannelAttention(in_channels)
        mid = int(mid_k * in_channels)
        self.learning_block = nn.Sequential(
            ConvBlock(in_channels, mid, norm=True, activation=_relu, bias=False),
            ConvBlock(mid, in_channels, norm=True, activation=_relu, bias=False),
        )
        self.mask_blurring = GaussianBlur(1, 7, 1.0, padding=3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = self.mask_blurring(
            F.interpolate(mask.to(x.dtype), size=x.shape[-2:], mode="bilinear", align_corners=True)
        )
        background = self.background_gate(x)
        foreground = self.learning_block(self.foreground_gate(x))
        mix = self.mix_gate(x)
        return mask * (foreground + mix) + (1 - mask) * background


class UNetDownBlock(nn.Module):
    """DoubleConv, then (optionally) 2x2 max-pooling; returns (skip features, pooled features)."""

    def __init__(self, in_channels: int, out_channels: int, norm: bool, pool: bool):
        super().__init__()
        self.convs = UNetDoubleConv(in_channels, out_channels, norm)
        self.pooling = nn.MaxPool2d(2, 2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.convs(x)
        return x, self.pooling(x)


class UNetUpBlock(nn.Module):
    """Bilinear x2 (align_corners) + 3x3 conv-ReLU, concat with the skip (skip first), optional SSAM, DoubleConv+BN."""

    def __init__(self, in_channels: int, out_channels: int, attention_mid_k: float | None):
        super().__init__()
        self.upconv = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            ConvBlock(in_channels, out_channels, norm=False, activation=_relu),
        )
        self.convs = UNetDoubleConv(2 * out_channels, out_channels, norm=True)
        self.attention = (
            SpatialSeparatedAttention(2 * out_channels, attention_mid_k) if attention_mid_k is not None else None
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([skip, self.upconv(x)], dim=1)
        if self.attention is not None:
            x = self.attention(x, mask)
        return self.convs(x)


class UNetEncoder(nn.Module):
    """`depth` DoubleConv blocks, channels ch * 2^i (capped), BN from block `batchnorm_from`; the last block does not
    pool. Returns the block outputs deepest first."""

    def __init__(self, depth: int, ch: int, in_channels: int = 4, batchnorm_from: int = 2, max_channels: int = 512):
        super().__init__()
        if depth < 2:
            raise ValueError(f"UNet depth must be >= 2, got {depth}")
        self.depth = depth
        chans = [min(ch * 2**i, max_channels) for i in range(depth)]
        self.block_channels = chans
        self.block0 = UNetDownBlock(in_channels, chans[0], norm=batchnorm_from == 0, pool=True)
        self.block1 = UNetDownBlock(chans[0], chans[1], norm=0 <= batchnorm_from <= 1, pool=depth > 2)
        self.blocks_connected = nn.ModuleDict(
            {
                f"block{i}": UNetDownBlock(chans[i - 1], chans[i], norm=0 <= batchnorm_from <= i, pool=i < depth - 1)
                for i in range(2, depth)
            }
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        out, x = self.block0(x)
        outputs.append(out)
        out, x = self.block1(x)
        outputs.append(out)
        for i in range(2, self.depth):
            out, x = self.blocks_connected[f"block{i}"](x)
            outputs.append(out)
        return outputs[::-1]


def _add_fusion_head(owner: nn.Module, channels: int, attention: bool = True) -> None:
    """iSSAM's image-fusion head as attributes of `owner`, under saic-vul's key names: `conv_attention` (conv1x1 to
    1 channel, only with `attention`) and `to_rgb` (conv1x1 to 3 channels). Applied by :func:`_fuse_image`."""
    if attention:
        owner.conv_attention = nn.Conv2d(channels, 1, kernel_size=1)
    owner.to_rgb = nn.Conv2d(channels, 3, kernel_size=1)


def _fuse_image(owner: nn.Module, x: torch.Tensor, image: torch.Tensor, attention: bool = True) -> torch.Tensor:
    """Image fusion: A = sigmoid(3 conv_attention(x)), out = A * image + (1 - A) * to_rgb(x) (normalised space);
    without `attention`, to_rgb(x) alone."""
    rgb = owner.to_rgb(x)
    if not attention:
        return rgb
    gate = torch.sigmoid(3.0 * owner.conv_attention(x))
    return gate * image + (1.0 - gate) * rgb


class UNetDecoder(nn.Module):
    """(depth - 1) up blocks with SSAM from up block `attend_from` on, then the image-fusion head.

    Image fusion: A = sigmoid(3 conv1x1(x)), out = A * input_image + (1 - A) * conv1x1_rgb(x) (normalised space).
    """

    def __init__(
        self,
        depth: int,
        encoder_channels: list[int],
        attend_from: int = 2,
        attention_mid_k: float = 0.5,
        image_fusion: bool = True,
    ):
        super().__init__()
        chans = list(encoder_channels)
        in_ch = chans.pop()
        self.up_blocks = nn.ModuleList()
        self.level_channels: list[int] = []
        for d in range(depth - 1):
            out_ch = chans.pop() if chans else in_ch // 2
            attend = 0 <= attend_from <= d
            self.up_blocks.append(UNetUpBlock(in_ch, out_ch, attention_mid_k if attend else None))
            self.level_channels.append(out_ch)
            in_ch = out_ch
        self.image_fusion = image_fusion
        _add_fusion_head(self, in_ch, image_fusion)

    def forward_features(self, encoder_outputs: list[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every up block, coarsest first (the last one feeds the head)."""
        x = encoder_outputs[0]
        feats = []
        for block, skip in zip(self.up_blocks, encoder_outputs[1:]):
            x = block(x, skip, mask)
            feats.append(x)
        return feats

    def forward_head(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return _fuse_image(self, x, image, self.image_fusion)


def _check_size(x: torch.Tensor, divisor: int, name: str) -> None:
    h, w = x.shape[-2:]
    if h % divisor or w % divisor:
        raise ValueError(
            f"{name}: input size {h}x{w} must be a multiple of {divisor}; pad it first "
            "(frih.inference.pad_to_multiple, or use frih.inference.Harmonizer)"
        )


class SSAMHarmonizer(nn.Module):
    """iSSAM (improved S2AM): a UNet on concat(image, mask) with spatial-separated attention and image fusion.

    iSSAM256 = SSAMHarmonizer(depth=4, ch=32, batchnorm_from=2, attend_from=2, attention_mid_k=0.5): 2,185,340
    parameters. Input sides must be multiples of `size_divisor` = 2^(depth - 1).
    """

    def __init__(
        self,
        depth: int = 4,
        ch: int = 32,
        in_channels: int = 4,
        batchnorm_from: int = 2,
        attend_from: int = 2,
        attention_mid_k: float = 0.5,
        image_fusion: bool = True,
        max_channels: int = 512,
    ):
        super().__init__()
        self.depth = depth
        self.size_divisor = 2 ** (depth - 1)
        self.encoder = UNetEncoder(depth, ch, in_channels, batchnorm_from, max_channels)
        self.decoder = UNetDecoder(depth, self.encoder.block_channels, attend_from, attention_mid_k, image_fusion)
        self.level_channels = self.decoder.level_channels

    def forward_features(self, image: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        _check_size(image, self.size_divisor, type(self).__name__)
        return self.decoder.forward_features(self.encoder(torch.cat([image, mask], dim=1)), mask)

    def forward_head(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        return self.decoder.forward_head(features[-1], image)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        """image: (B, 3, H, W) normalised; mask: (B, 1, H, W) in [0, 1]. Returns {"images", "features"}."""
        feats = self.forward_features(image, mask)
        return {"images": self.forward_head(feats, image), "features": feats}


class MaskedChannelAttention(nn.Module):
    """iDIH's optional SE gate: concat(max-pool over fg, max-pool over bg, global avg) -> MLP -> sigmoid."""

    def __init__(self, in_channels: int):
        super().__init__()
        mid = max(in_channels // 16, 8)
        self.attention_transform = nn.Sequential(
            nn.Linear(3 * in_channels, mid),
            nn.ReLU(inplace=True),
            nn.Linear(mid, in_channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = F.interpolate(mask.to(x.dtype), size=x.shape[-2:], mode="bilinear", align_corners=True)
        pooled = torch.cat(
            [(x * mask).flatten(2).amax(2), (x * (1.0 - mask)).flatten(2).amax(2), x.flatten(2).mean(2)], dim=1
        )
        return self.attention_transform(pooled)[..., None, None] * x


class SEDeconvBlock(nn.Module):
    """ConvTranspose2d(4, stride 2) -> BN -> ELU, optionally followed by the masked channel attention."""

    def __init__(self, in_channels: int, out_channels: int, padding: int, with_se: bool):
        super().__init__()
        self.block = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=padding),
            nn.BatchNorm2d(out_channels),
            nn.ELU(),
        )
        self.se = MaskedChannelAttention(out_channels) if with_se else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        return self.se(x, mask) if self.se is not None else x


class DIHHarmonizer(nn.Module):
    """iDIH (improved Deep Image Harmonization): stride-2 conv encoder, transposed-conv decoder with additive skips.

    iDIH256 = DIHHarmonizer(depth=7, ch=64, batchnorm_from=2, image_fusion=True): 8,301,284 parameters. The last
    encoder block has padding 0, so input sides must be multiples of `size_divisor` = 2^(depth + 1) (saic-vul's
    `PadToDivisor`), 256 for depth 7.
    """

    def __init__(
        self,
        depth: int = 7,
        ch: int = 64,
        in_channels: int = 4,
        batchnorm_from: int = 2,
        attend_from: int = -1,
        image_fusion: bool = True,
        max_channels: int = 512,
    ):
        super().__init__()
        self.depth = depth
        self.size_divisor = 2 ** (depth + 1)
        elu = nn.ELU
        enc = nn.Module()
        enc.block0 = ConvBlock(in_channels, ch, 4, 2, 1, norm=batchnorm_from == 0, activation=elu)
        enc.block1 = ConvBlock(ch, ch, 4, 2, 1, norm=0 <= batchnorm_from <= 1, activation=elu)
        chans = [ch, ch]
        out_ch = ch
        enc.blocks_connected = nn.ModuleDict()
        for i in range(2, depth):
            in_ch = out_ch
            if i % 2 == 0:
                out_ch = min(2 * out_ch, max_channels)
            enc.blocks_connected[f"block{i}"] = ConvBlock(
                in_ch, out_ch, 4, 2, int(i < depth - 1), norm=0 <= batchnorm_from <= i, activation=elu
            )
            chans.append(out_ch)
        self.encoder = enc
        dec = nn.Module()
        dec.deconv_blocks = nn.ModuleList()
        rest = list(chans)
        in_ch = rest.pop()
        self.level_channels: list[int] = []
        for d in range(depth):
            out_ch = rest.pop() if rest else in_ch // 2
            dec.deconv_blocks.append(
                SEDeconvBlock(in_ch, out_ch, padding=0 if d == 0 else 1, with_se=0 <= attend_from <= d)
            )
            self.level_channels.append(out_ch)
            in_ch = out_ch
        self.image_fusion = image_fusion
        _add_fusion_head(dec, in_ch, image_fusion)
        self.decoder = dec

    def forward_features(self, image: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        _check_size(image, self.size_divisor, type(self).__name__)
        enc = self.encoder
        outputs = [enc.block0(torch.cat([image, mask], dim=1))]
        outputs.append(enc.block1(outputs[-1]))
        for i in range(2, self.depth):
            outputs.append(enc.blocks_connected[f"block{i}"](outputs[-1]))
        outputs = outputs[::-1]
        x = outputs[0]
        feats = []
        blocks = self.decoder.deconv_blocks
        for block, skip in zip(blocks[:-1], outputs[1:]):
            x = block(x, mask) + skip
            feats.append(x)
        feats.append(blocks[-1](x, mask))
        return feats

    def forward_head(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        return _fuse_image(self.decoder, features[-1], image, self.image_fusion)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        feats = self.forward_features(image, mask)
        return {"images": self.forward_head(feats, image), "features": feats}


# --------------------------------------------------------------------------------------------------------------------
# FRIH stage 2
# --------------------------------------------------------------------------------------------------------------------


class FusionPredictionModule(nn.Module):
    """FPM [HYP]: fuse the decoder features of all K modules at all levels into the final image.

    Equivalent to: upsample every feature map bilinearly to full resolution, concatenate them (K * sum(level
    channels)), 1x1 conv + BN + ReLU, 3x3 conv + BN + ReLU, image-fusion head. Because the 1x1 conv and bilinear
    upsampling are both linear and commute, the 1x1 conv is applied per level at the level's own resolution before
    upsampling (same function, a fraction of the cost).
    """

    def __init__(self, level_channels: list[int], num_modules: int, channels: int = 64):
        super().__init__()
        self.level_proj = nn.ModuleList([nn.Conv2d(num_modules * c, channels, 1, bias=False) for c in level_channels])
        self.proj_bias = nn.Parameter(torch.zeros(channels))
        self.proj_norm = nn.BatchNorm2d(channels)
        self.fuse = ConvBlock(channels, channels, 3, 1, 1, norm=True, activation=_relu)
        _add_fusion_head(self, channels)

    def forward(self, module_features: list[list[torch.Tensor]], blend_image: torch.Tensor) -> torch.Tensor:
        size = blend_image.shape[-2:]
        x = None
        for level, proj in enumerate(self.level_proj):
            y = proj(torch.cat([feats[level] for feats in module_features], dim=1))
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            x = y if x is None else x + y
        x = F.relu(self.proj_norm(x + self.proj_bias[None, :, None, None]), inplace=True)
        x = self.fuse(x)
        return _fuse_image(self, x, blend_image)


@dataclass
class FRIHConfig:
    """Architecture of a harmonization network. `arch` = "issam" / "idih" builds stage 1 alone; "frih" builds both
    stages. Defaults: the paper-sized FRIH (iSSAM256 stage 1, K = 3 cascaded ch-39 modules, FPM 64),
    12,004,951 parameters. Fields marked [HYP] are design choices (README "Fidelity notes")."""

    arch: Literal["frih", "issam", "idih"] = "frih"
    stage1: Literal["issam", "idih"] = "issam"
    stage1_depth: int | None = None  # None: 4 (iSSAM) / 7 (iDIH)
    stage1_ch: int | None = None  # None: 32 (iSSAM) / 64 (iDIH)
    num_clusters: int = 3  # K [HYP]
    cascade: Literal["cascaded", "parallel"] = "cascaded"  # [HYP]
    share_weights: bool = False  # [HYP]
    cluster_on: Literal["composite", "coarse"] = "composite"  # [HYP]; the abstract says "composite image"
    module_depth: int = 4  # [HYP]
    module_ch: int = 39  # [HYP] sized so that the total is close to 11.98 M
    module_attention: bool = True  # [HYP] SSAM driven by the submask in each module's last up block
    compose_submasks: bool = False  # [HYP] out_k = M_k * out_k + (1 - M_k) * in_k
    fpm_ch: int = 64  # [HYP]
    fpm_blend: Literal["composite", "coarse", "last"] = "composite"  # [HYP] image the FPM fusion head blends with
    kmeans_iters: int = 10  # [HYP]
    stage2_gate_bias: float = 0.0  # [HYP] init bias of the stage-2 fusion gates; 0 = saic-vul's init (gate 0.5),
    # 1 -> sigmoid(3) = 0.95 passes each module's input through at the start
    mask_threshold: float = 0.5  # foreground = mask > threshold for the clustering
    use_fpm: bool = True  # False: the ablation "FRIH without the FPM" (final = the last module's output)
    stop_gradient: bool = False  # [HYP] True: stage 2 reads a detached coarse image, so stage 1 learns only from
    # its own (coarse) loss; False (paper reading): end-to-end
    blur_init: Literal["gaussian", "released"] = "gaussian"  # SSAM mask-blur kernel at init (README, Fidelity notes)


def _stage1_kwargs(cfg: FRIHConfig) -> tuple[type[nn.Module], dict[str, Any], float]:
    if cfg.stage1 == "issam":
        return (
            SSAMHarmonizer,
            {
                "depth": cfg.stage1_depth or 4,
                "ch": cfg.stage1_ch or 32,
                "batchnorm_from": 2,
                "attend_from": (cfg.stage1_depth or 4) - 2,
                "attention_mid_k": 0.5,
                "image_fusion": True,
            },
            1.0,
        )
    return (
        DIHHarmonizer,
        {"depth": cfg.stage1_depth or 7, "ch": cfg.stage1_ch or 64, "batchnorm_from": 2, "image_fusion": True},
        2.0,
    )


class FRIH(nn.Module):
    """FRIH: global stage 1 + K region-aware cascaded refinement modules + fusion prediction module.

    forward(image, mask) returns {"images": final, "coarse": stage-1 output, "module_images": [K outputs],
    "submasks": (B, K, H, W)}, all images in the normalised space.
    """

    def __init__(self, cfg: FRIHConfig):
        super().__init__()
        if cfg.num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {cfg.num_clusters}")
        self.cfg = cfg
        stage1_cls, stage1_kwargs, _ = _stage1_kwargs(cfg)
        self.stage1 = stage1_cls(**stage1_kwargs)
        n_modules = 1 if cfg.share_weights else cfg.num_clusters
        attend_from = cfg.module_depth - 2 if cfg.module_attention else -1
        self.refiners = nn.ModuleList(
            [
                SSAMHarmonizer(
                    depth=cfg.module_depth,
                    ch=cfg.module_ch,
                    in_channels=4,
                    batchnorm_from=2,
                    attend_from=attend_from,
                    attention_mid_k=0.5,
                    image_fusion=True,
                )
                for _ in range(n_modules)
            ]
        )
        levels = self.refiners[0].level_channels
        self.fpm = FusionPredictionModule(levels, cfg.num_clusters, cfg.fpm_ch) if cfg.use_fpm else None
        self.size_divisor = max(self.stage1.size_divisor, self.refiners[0].size_divisor)

    def split_regions(self, image: torch.Tensor, coarse: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """K-means submasks (B, K, H, W) of the composite (or of the coarse output), on 0-255 RGB, no gradient."""
        source = image if self.cfg.cluster_on == "composite" else coarse
        rgb = denormalize_image(source.detach().float()).clamp(0, 1) * 255.0
        return kmeans_submasks(
            rgb, mask, self.cfg.num_clusters, self.cfg.kmeans_iters, self.cfg.mask_threshold
        ).submasks.to(image.dtype)

    def has_unused_parameters(self, coarse_weight: float, module_weight: float) -> bool:
        """True when some parameter gets no gradient from a loss on the full forward (DDP then needs
        find_unused_parameters=True), given which outputs enter the loss: the final output always (FRIHLoss computes
        it at any weight), the coarse output iff `coarse_weight` and every module output iff `module_weight` are
        non-zero (the :class:`frih.losses.FRIHLoss` weights). Derived from what each output depends on:

        - stage 1 feeds the final output unless `stop_gradient` detaches it, so it is unused iff `stop_gradient` and
          no coarse term;
        - module k's features feed the FPM (when there is one); its image feeds the per-module term, module k+1's
          input (cascaded, k < K-1), the final output (no FPM, k = K-1) and the FPM blend ("last", k = K-1). A module
          whose image feeds nothing leaves its image head unused, and also its feature path without an FPM;
        - with `share_weights` one refiner runs every module, unused only where no module image is used.
        """
        cfg, k_last = self.cfg, self.cfg.num_clusters - 1
        if cfg.stop_gradient and not coarse_weight:
            return True
        if module_weight:
            return False  # every module image enters the loss; the FPM (if any) feeds the final output

        def image_used(k: int) -> bool:
            if cfg.cascade == "cascaded" and k < k_last:
                return True  # the next module's input, whose outputs are used (below, by induction)
            return k == k_last and (self.fpm is None or cfg.fpm_blend == "last")

        used = [image_used(k) for k in range(cfg.num_clusters)]
        return not any(used) if cfg.share_weights else not all(used)

    def forward(self, image: torch.Tensor, mask: torch.Tensor, stage1_only: bool = False) -> dict[str, Any]:
        """`stage1_only`: run stage 1 alone and return {"images": coarse} (the in-run warm start of train.py)."""
        _check_size(image, self.size_divisor, "FRIH")
        coarse = self.stage1(image, mask)["images"]
        if stage1_only:
            return {"images": coarse}
        stage2_input = coarse.detach() if self.cfg.stop_gradient else coarse
        submasks = self.split_regions(image, coarse, mask)
        current = stage2_input
        module_images, module_features = [], []
        for k in range(self.cfg.num_clusters):
            refiner = self.refiners[0 if self.cfg.share_weights else k]
            source = current if self.cfg.cascade == "cascaded" else stage2_input
            sub = submasks[:, k : k + 1]
            out = refiner(source, sub)
            refined = out["images"]
            if self.cfg.compose_submasks:
                refined = sub * refined + (1 - sub) * source
            module_images.append(refined)
            module_features.append(out["features"])
            current = refined
        if self.fpm is None:
            final = current
        else:
            blend = {"composite": image, "coarse": stage2_input, "last": current}[self.cfg.fpm_blend]
            final = self.fpm(module_features, blend)
        return {"images": final, "coarse": coarse, "module_images": module_images, "submasks": submasks}


def build_model(cfg: FRIHConfig, init: bool = True) -> nn.Module:
    """Build the network `cfg` describes; `init` applies saic-vul's Xavier-Gluon init (iSSAM parts magnitude 1,
    iDIH parts magnitude 2) and sets the stage-2 fusion-gate biases to `cfg.stage2_gate_bias`. FRIH's stage 1 is
    initialised from the RNG state at the call, exactly as `arch="issam"` / `"idih"` would be from that state."""
    if cfg.arch == "issam":
        cfg = replace(cfg, stage1="issam")
    elif cfg.arch == "idih":
        cfg = replace(cfg, stage1="idih")
    stage1_cls, stage1_kwargs, magnitude = _stage1_kwargs(cfg)
    if cfg.arch in ("issam", "idih"):
        model = stage1_cls(**stage1_kwargs)
        return xavier_gluon_init_(model, magnitude, blur_init=cfg.blur_init) if init else model
    rng_state = torch.get_rng_state()
    model = FRIH(cfg)
    if init:
        # stage 1 gets exactly the weights the stage-1 network built alone from the same RNG state would get, so
        # FRIH and its base baseline start from the same initialisation (README, Fidelity notes 20)
        torch.set_rng_state(rng_state)
        twin = xavier_gluon_init_(stage1_cls(**stage1_kwargs), magnitude, blur_init=cfg.blur_init)
        model.stage1.load_state_dict(twin.state_dict())
        del twin
        xavier_gluon_init_(model.refiners, 1.0, blur_init=cfg.blur_init)
        gates = [r.decoder.conv_attention for r in model.refiners]
        if model.fpm is not None:
            xavier_gluon_init_(model.fpm, 1.0)
            gates.append(model.fpm.conv_attention)
        with torch.no_grad():
            for gate in gates:
                gate.bias.fill_(cfg.stage2_gate_bias)
    return model


#: The networks this package offers, by name: the stage-1 baselines, FRIH on either base, and a tiny test variant.
VARIANTS: dict[str, FRIHConfig] = {
    "issam256": FRIHConfig(arch="issam"),  # iSSAM256 (WACV 2021, `improved_ssam256`): 2,185,340 parameters
    "idih256": FRIHConfig(arch="idih"),  # iDIH256 (WACV 2021, `improved_dih256`): 8,301,284 parameters
    # FRIH on iSSAM256, K = 3 cascaded modules (depth 4, ch 39), FPM 64: 12,004,951 parameters (paper: 11.98 M)
    "frih256": FRIHConfig(),
    # FRIH on iDIH256 (the other reading of the 11.98 M budget): K = 3 cascaded ch-24 modules, FPM 32: 12,020,564
    "frih_idih256": FRIHConfig(stage1="idih", module_ch=24, fpm_ch=32),
    # tiny FRIH (iSSAM ch 8 stage 1, K = 3 ch-8 modules, FPM 16) for tests; the embedded default's architecture
    "frih_tiny": FRIHConfig(stage1_ch=8, module_ch=8, fpm_ch=16),
}


def list_models() -> list[str]:
    """The names :func:`create_model` accepts."""
    return sorted(VARIANTS)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """`create_model("frih256", num_clusters=4)`: the variant `name` of :data:`VARIANTS` with FRIHConfig fields
    overridden, built (and initialised) by :func:`build_model`."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    valid = {f.name for f in fields(FRIHConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown FRIHConfig field(s) {unknown}; valid: {sorted(valid)}")
    return build_model(replace(VARIANTS[name], **overrides))
