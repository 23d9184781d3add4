"""EMO with DeepLabv3 or PSPNet heads: the paper's ADE20K semantic-segmentation setting (512 x 512, 80k iterations).

Mirrors the official mmseg configs of zhangzjn/EMO, ``down-stream-tasks/mmsegmentation/configs/{deeplabv3_emo,
pspnet_emo}/*_512x512_80k_ade20k.py`` and their bases ``_base_/models/{deeplabv3,pspnet}_emo.py`` (README,
"Semantic segmentation"):

* backbone ``out_indices=(1, 2, 3, 4)``, ``frozen_stages=-1``, ``norm_eval=False`` (SyncBN, trained); window 7 for
  EMO-1M/2M and 16 for EMO-5M (the base config's value); weights are unaffected;
* decode head on stage 4 (``in_index=3``, ``channels=256``): mmseg's ``ASPPHead`` (:class:`ASPPHead`: image pooling
  + a 1x1 and three 3x3 convs at dilations 12, 24, 36, concatenated, a 3x3 bottleneck) or ``PSPHead``
  (:class:`PSPHead`: pyramid pooling at 1, 2, 3, 6 bins, concatenated with the input, a 3x3 bottleneck); every conv
  without bias, followed by BatchNorm and ReLU; dropout 0.1 and a 1x1 classifier (normal init, std 0.01);
* auxiliary ``FCNHead`` on stage 3 (``in_index=2``, one 3x3 conv of 256 channels, no input concat, dropout 0.1),
  loss weight 0.4; both losses are cross entropy (ignore index 255) on logits upsampled bilinearly
  (``align_corners=False``) to the label size;
* test ``mode='whole'``: the logits of the whole (resized) image, upsampled to the original size.

:func:`build_segmentor` builds the model; :func:`predict_probabilities` is single- or multi-scale (+ flip) inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import emo.model  # noqa: F401  (registers the EMO models with timm)
from emo.model import EMO
from emo.weights import load_official_checkpoint

__all__ = [
    'SEG_HEADS',
    'SEG_WINDOW_SIZES',
    'ASPPHead',
    'EMOSegmentor',
    'FCNHead',
    'PSPHead',
    'build_segmentor',
    'predict_probabilities',
    'segmentation_loss',
]

# window_sizes of the official segmentation configs (the 1M/2M configs override the base's 16 with 7)
SEG_WINDOW_SIZES = {'emo_1m': 7, 'emo_2m': 7, 'emo_5m': 16}
IGNORE_INDEX = 255


class ConvBNReLU(nn.Sequential):
    """mmcv's ``ConvModule`` with a norm: conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1):
        padding = 0 if kernel_size == 1 else dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class _DecodeHead(nn.Module):
    """mmseg's ``BaseDecodeHead`` classifier: dropout then a 1x1 conv with bias (normal init, std 0.01)."""

    def __init__(self, channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False)


class ASPPHead(_DecodeHead):
    """DeepLabv3's atrous spatial pyramid pooling head (mmseg ``ASPPHead``)."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        dilations: Sequence[int] = (1, 12, 24, 36),
        dropout: float = 0.1,
    ):
        super().__init__(channels, num_classes, dropout)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_channels, channels, 1))
        self.aspp = nn.ModuleList(ConvBNReLU(in_channels, channels, 1 if d == 1 else 3, d) for d in dilations)
        self.bottleneck = ConvBNReLU((len(dilations) + 1) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [_upsample(self.image_pool(x), x.shape[-2:])] + [branch(x) for branch in self.aspp]
        return self.classify(self.bottleneck(torch.cat(outs, dim=1)))


class PSPHead(_DecodeHead):
    """PSPNet's pyramid pooling head (mmseg ``PSPHead``): the input concatenated with its pooled, projected and
    upsampled versions, then a 3x3 bottleneck."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ):
        super().__init__(channels, num_classes, dropout)
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(in_channels, channels, 1)) for s in pool_scales
        )
        self.bottleneck = ConvBNReLU(in_channels + len(pool_scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x] + [_upsample(branch(x), x.shape[-2:]) for branch in self.ppm]
        return self.classify(self.bottleneck(torch.cat(outs, dim=1)))


class FCNHead(_DecodeHead):
    """The auxiliary head (mmseg ``FCNHead``, ``num_convs=1``, ``concat_input=False``)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__(channels, num_classes, dropout)
        self.convs = ConvBNReLU(in_channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.convs(x))


SEG_HEADS = ('deeplabv3', 'pspnet')


class EMOSegmentor(nn.Module):
    """mmseg's ``EncoderDecoder``: EMO body, decode head on stage 4, auxiliary FCN head on stage 3.

    ``forward`` takes images in [0, 1] (normalised inside with the ImageNet mean/std, as mmseg's ``Normalize``) and
    returns the decode head's logits at 1/32 of the input; in training mode it returns ``(decode, auxiliary)``.
    """

    def __init__(self, body: EMO, decode_head: nn.Module, auxiliary_head: nn.Module | None):
        super().__init__()
        self.in_indices = [2, 3]
        body.prune_intermediate_layers(self.in_indices, prune_norm=True, prune_head=True)
        self.body = body
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        self.register_buffer('mean', torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        x = (images - self.mean) / self.std
        c3, c4 = self.body.forward_intermediates(x, indices=self.in_indices, stop_early=True, intermediates_only=True)
        decode = self.decode_head(c4)
        if not self.training:
            return decode
        return decode, self.auxiliary_head(c3) if self.auxiliary_head is not None else None


def build_segmentor(
    variant: str = 'emo_1m',
    head: str = 'deeplabv3',
    num_classes: int = 150,
    pretrained_backbone: str | None = None,
    window_size: int | Sequence[int] | None = None,
    channels: int = 256,
    aux_channels: int = 256,
    auxiliary: bool = True,
    dropout: float = 0.1,
    dilations: Sequence[int] = (1, 12, 24, 36),
    pool_scales: Sequence[int] = (1, 2, 3, 6),
    **backbone_kwargs: Any,
) -> EMOSegmentor:
    """Build an EMO segmentor as the official DeepLabv3 / PSPNet ADE20K configs.

    Args:
        variant: A registered EMO model name.
        head: ``deeplabv3`` (ASPP) or ``pspnet`` (pyramid pooling).
        num_classes: Classes (150 for ADE20K with reduce-zero-label).
        pretrained_backbone: Official ImageNet checkpoint (``net.pth``), loaded strictly into the body. None: random.
        window_size: EW-MHSA window; None uses the official value (``SEG_WINDOW_SIZES``, else 16).
        channels / aux_channels: Width of the decode and auxiliary heads (256 / 256 in the configs).
        auxiliary: Build the auxiliary FCN head (only used by the training loss).
        dropout: Dropout before each classifier.
        dilations / pool_scales: ASPP dilations / PPM bins.
        backbone_kwargs: Passed to ``timm.create_model`` (e.g. ``drop_path_rate``).
    """
    if head not in SEG_HEADS:
        raise ValueError(f'unknown segmentation head {head!r}, expected one of {SEG_HEADS}')
    body = timm.create_model(variant, **backbone_kwargs)
    if not isinstance(body, EMO):
        raise ValueError(f'{variant} is not an EMO model')
    body.set_window_size(window_size if window_size is not None else SEG_WINDOW_SIZES.get(variant, 16))
    if pretrained_backbone is not None:
        load_official_checkpoint(body, pretrained_backbone, strict=True)
    c3, c4 = body.feature_info[2]['num_chs'], body.feature_info[3]['num_chs']
    if head == 'deeplabv3':
        decode: nn.Module = ASPPHead(c4, channels, num_classes, dilations, dropout)
    else:
        decode = PSPHead(c4, channels, num_classes, pool_scales, dropout)
    aux = FCNHead(c3, aux_channels, num_classes, dropout) if auxiliary else None
    return EMOSegmentor(body, decode, aux)


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, avg_non_ignore: bool = False, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """mmseg's decode-head loss: logits upsampled (bilinear) to the label size, pixel-wise cross entropy.

    ``avg_non_ignore=False`` (mmseg's default up to and including the EMO release) averages over every pixel, the
    ignored ones counting as zero; ``True`` averages over the labelled pixels only.
    """
    if labels.ndim != 3 or logits.ndim != 4 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f'logits (N, K, h, w) and labels (N, H, W) expected, got {tuple(logits.shape)} and {tuple(labels.shape)}'
        )
    logits = _upsample(logits, labels.shape[-2:])
    loss = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction='none')
    if avg_non_ignore:
        return loss.sum() / (labels != ignore_index).sum().clamp(min=1)
    return loss.mean()


@torch.no_grad()
def predict_probabilities(
    model: EMOSegmentor,
    image: torch.Tensor,
    out_size: Sequence[int],
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    base_size: tuple[int, int] = (2048, 512),
) -> torch.Tensor:
    """Class probabilities (1, K, *out_size) of one image, mmseg ``whole`` inference (``aug_test`` when several
    scales or ``flip``).

    For each ratio r of ``scales`` the image is resized keeping its ratio so that it fits ``(long, short) =
    (base_size[0] * r, base_size[1] * r)`` (mmseg's ``Resize(img_scale=(2048, 512))`` with ``img_ratios``); with
    ``flip`` its mirror image is added. The softmax of each pass, upsampled to ``out_size`` (and flipped back), is
    averaged.

    Args:
        model: An :class:`EMOSegmentor` in eval mode.
        image: (3, H, W) or (1, 3, H, W) image in [0, 1] at its original size.
        out_size: Output (height, width): the label map's size.
    """
    if image.ndim == 3:
        image = image[None]
    h, w = image.shape[-2:]
    total = None
    passes = 0
    for ratio in scales:
        scale = min(base_size[0] * ratio / max(h, w), base_size[1] * ratio / min(h, w))
        size = (int(h * scale + 0.5), int(w * scale + 0.5))
        resized = _upsample(image, size) if size != (h, w) else image
        for flipped in (False, True) if flip else (False,):
            x = resized.flip(-1) if flipped else resized
            prob = _upsample(model(x), out_size).softmax(dim=1)
            prob = prob.flip(-1) if flipped else prob
            total = prob if total is None else total + prob
            passes += 1
    return total / passes
