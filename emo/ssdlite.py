"""EMO inside torchvision's SSDLite: the paper's COCO SSDLite setting (320 x 320).

Mirrors the official mmdet configs of zhangzjn/EMO, ``down-stream-tasks/mmdetection/configs/ssd_emo/
ssdlite_emo_{1M,2M,5M}_pretrain_coco.py`` (README, "SSDLite"):

* backbone ``out_indices=(3, 4)``: the outputs of stages 3 and 4 (strides 16 and 32, 20 x 20 and 10 x 10 at 320);
  ``frozen_stages=-1`` (nothing frozen) and ``norm_eval=True`` (every backbone BatchNorm in eval mode);
* window size 7 for EMO-1M/2M and 10 for EMO-5M (weights are unaffected);
* ``SSDNeck`` with ``use_depthwise=True``: four extra levels of 512, 256, 256, 128 channels, each a 1x1 conv to half
  the width, a 3x3 stride-2 depthwise conv and a 1x1 conv, every conv followed by BatchNorm (eps 1e-3, momentum 0.03)
  and ReLU6 (:class:`SSDLiteExtraBlock`); neck convs initialised with a truncated normal of std 0.03;
* ``SSDHead`` with ``use_depthwise=True`` = torchvision's :class:`~torchvision.models.detection.ssdlite.SSDLiteHead`
  (per level a 3x3 depthwise conv + BN + ReLU6, then a 1x1 conv), softmax over 80 classes + background, convs
  initialised with a normal of std 0.001;
* ``SSDAnchorGenerator`` (strides 16, 32, 64, 107, 160, 320, min sizes 48 ... 304, max sizes 100 ... 320, ratios
  2 and 3: six boxes per location) = torchvision's :class:`DefaultBoxGenerator` with the scales below and no
  clipping; box deltas with stds 0.1, 0.1, 0.2, 0.2; IoU 0.5 matching (each ground truth also keeps its best
  anchor), hard negative mining 3:1, smooth-L1 (beta 1) and cross entropy normalised by the positives;
* test: score > 0.02, NMS 0.45 per class, 200 detections per image.

:func:`build_ssdlite` builds the detector; :func:`build_ssdlite_detector` builds it from an
:class:`emo.config.SSDLiteConfig`; the training augmentation is :class:`emo.data.SSDAugmentedCoco`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import Any

import timm
import torch
import torch.nn as nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops.misc import Conv2dNormActivation

import emo.model  # noqa: F401  (registers the EMO models with timm)
from emo.config import SSDLiteConfig
from emo.detection import apply_frozen_stages
from emo.model import EMO
from emo.weights import load_official_checkpoint
from shared.detection_training import FrozenStagesBackbone

__all__ = [
    'SSDLITE_WINDOW_SIZES',
    'EMOSSDLiteBackbone',
    'SSDLiteExtraBlock',
    'build_ssdlite',
    'build_ssdlite_detector',
    'ssdlite_anchor_generator',
]

# window_sizes of the official SSDLite configs (7 for EMO-1M/2M, 10 for EMO-5M), as for RetinaNet
SSDLITE_WINDOW_SIZES = {'emo_1m': 7, 'emo_2m': 7, 'emo_5m': 10}
# mmdet's SSDAnchorGenerator of the configs, for a 320 x 320 input
SSDLITE_STRIDES = (16, 32, 64, 107, 160, 320)
SSDLITE_MIN_SIZES = (48, 100, 150, 202, 253, 304)
SSDLITE_MAX_SIZES = (100, 150, 202, 253, 304, 320)
_BN = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.03)


class SSDLiteExtraBlock(nn.Sequential):
    """One extra level of mmdet's ``SSDNeck(use_depthwise=True)``: 1x1 to ``out // 2``, 3x3/s2 depthwise, 1x1 to
    ``out``; each conv without bias, followed by BatchNorm and ReLU6."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        mid = out_channels // 2
        super().__init__(
            Conv2dNormActivation(in_channels, mid, 1, norm_layer=_BN, activation_layer=nn.ReLU6),
            Conv2dNormActivation(mid, mid, 3, stride, padding=1, groups=mid, norm_layer=_BN, activation_layer=nn.ReLU6),
            Conv2dNormActivation(mid, out_channels, 1, norm_layer=_BN, activation_layer=nn.ReLU6),
        )


class EMOSSDLiteBackbone(FrozenStagesBackbone):
    """EMO stages 3 and 4 + the SSDLite neck: six maps at strides 16, 32, 64, 128 (107 at 320), 256 and 512.

    Args:
        body: An EMO model (stages after 4, its norm and classifier are pruned here).
        extra_channels: Channels of the extra levels.
        frozen_stages: Freeze stage0 ... stage{frozen_stages}; -1 (the SSDLite configs) freezes nothing.
        norm_eval: Keep every BatchNorm of the EMO body in eval mode while training (the neck's are trained).
    """

    freeze = staticmethod(apply_frozen_stages)

    def __init__(
        self,
        body: EMO,
        extra_channels: Sequence[int] = (512, 256, 256, 128),
        frozen_stages: int = -1,
        norm_eval: bool = True,
    ):
        super().__init__()
        self.in_indices = [2, 3]  # stages 3 and 4 (the official out_indices 3 and 4)
        body.prune_intermediate_layers(self.in_indices, prune_norm=True, prune_head=True)
        self.body = body
        channels = [body.feature_info[i]['num_chs'] for i in self.in_indices]
        blocks = []
        for out in extra_channels:
            blocks.append(SSDLiteExtraBlock(channels[-1], out))
            channels.append(out)
        self.extra = nn.ModuleList(blocks)
        self.out_channels = channels
        for m in self.extra.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.03)
        self.set_frozen_stages(frozen_stages, norm_eval)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body.forward_intermediates(x, indices=self.in_indices, stop_early=True, intermediates_only=True)
        x = feats[-1]
        for block in self.extra:
            x = block(x)
            feats.append(x)
        return OrderedDict((str(i), f) for i, f in enumerate(feats))


def ssdlite_anchor_generator(image_size: int = 320) -> DefaultBoxGenerator:
    """The configs' ``SSDAnchorGenerator`` as torchvision default boxes (six per location, not clipped).

    Per level k: squares of side ``min_k`` and ``sqrt(min_k * max_k)`` and boxes ``min_k * sqrt(r)`` x
    ``min_k / sqrt(r)`` for r in 2, 1/2, 3, 1/3, centred at ``(i + 0.5) * stride_k``. The sizes are given for 320
    and scaled with ``image_size``.
    """
    scale = image_size / 320
    scales = [s / 320 for s in SSDLITE_MIN_SIZES] + [SSDLITE_MAX_SIZES[-1] / 320]
    # torchvision takes scales[k + 1] as the k-th max size: the configs' max sizes are the next min sizes
    steps = [round(s * scale) for s in SSDLITE_STRIDES]
    return DefaultBoxGenerator([[2, 3]] * len(SSDLITE_STRIDES), scales=scales, steps=steps, clip=False)


def build_ssdlite(
    variant: str = 'emo_1m',
    num_classes: int = 80,
    pretrained_backbone: str | None = None,
    window_size: int | Sequence[int] | None = None,
    frozen_stages: int = -1,
    norm_eval: bool = True,
    extra_channels: Sequence[int] = (512, 256, 256, 128),
    image_size: int = 320,
    **kwargs: Any,
) -> SSD:
    """Build torchvision's SSD with an EMO + SSDLite-neck backbone and SSDLite head as in the official configs.

    Args:
        variant: A registered EMO model name.
        num_classes: Foreground classes; the model predicts ``num_classes + 1`` scores (0 = background) and the
            targets' labels must lie in [1, num_classes].
        pretrained_backbone: Path to an official ImageNet checkpoint (``net.pth``), loaded strictly into the body
            (its ``norm``/``head`` keys ignored). None: random init.
        window_size: EW-MHSA window; None uses the official value (``SSDLITE_WINDOW_SIZES``, else 7).
        frozen_stages / norm_eval / extra_channels: See :class:`EMOSSDLiteBackbone`.
        image_size: Square input side (every image is resized to it, ratio not kept).
        kwargs: Passed to :class:`torchvision.models.detection.SSD` (``score_thresh``, ``nms_thresh``,
            ``detections_per_img``, ``topk_candidates``) or, when they start with ``backbone_``, to
            ``timm.create_model`` for the EMO body.
    """
    body_kwargs = {k[len('backbone_') :]: kwargs.pop(k) for k in list(kwargs) if k.startswith('backbone_')}
    body = timm.create_model(variant, **body_kwargs)
    if not isinstance(body, EMO):
        raise ValueError(f'{variant} is not an EMO model')
    body.set_window_size(window_size if window_size is not None else SSDLITE_WINDOW_SIZES.get(variant, 7))
    backbone = EMOSSDLiteBackbone(body, extra_channels, frozen_stages=frozen_stages, norm_eval=norm_eval)
    if pretrained_backbone is not None:
        load_official_checkpoint(backbone.body, pretrained_backbone, strict=True)
    anchors = ssdlite_anchor_generator(image_size)
    head = SSDLiteHead(backbone.out_channels, anchors.num_anchors_per_location(), num_classes + 1, _BN)
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.001)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    # torchvision's SSD resizes to image_size x image_size and normalises with the ImageNet mean/std, as mmdet's
    # test pipeline; iou_thresh 0.5 and positive_fraction 0.25 are the configs' assigner and neg_pos_ratio 3
    return SSD(
        backbone,
        anchors,
        (image_size, image_size),
        num_classes + 1,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        head=head,
        iou_thresh=0.5,
        positive_fraction=0.25,
        **kwargs,
    )


def build_ssdlite_detector(cfg: SSDLiteConfig, num_classes: int, load_pretrained: bool = True) -> SSD:
    """:func:`build_ssdlite` configured by ``cfg`` (the backbone checkpoint loaded when asked)."""
    kwargs: dict[str, Any] = {}
    if cfg.drop_path is not None:
        kwargs['backbone_drop_path_rate'] = cfg.drop_path
    return build_ssdlite(
        cfg.model,
        num_classes=num_classes,
        pretrained_backbone=cfg.pretrained_backbone if load_pretrained else None,
        window_size=cfg.window_size,
        frozen_stages=cfg.frozen_stages,
        norm_eval=cfg.norm_eval,
        extra_channels=cfg.extra_channels,
        image_size=cfg.data.image_size,
        score_thresh=cfg.score_thresh,
        nms_thresh=cfg.nms_thresh,
        detections_per_img=cfg.detections_per_img,
        topk_candidates=cfg.topk_candidates,
        **kwargs,
    )
