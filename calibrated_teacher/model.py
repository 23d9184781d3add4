"""Detectors of Calibrated Teacher: torchvision RetinaNet (the released detector, with the Focal IoU Weight hook),
FCOS and Faster R-CNN (the detector-agnostic pseudo-label path), on a ResNet-FPN or MobileNetV2-FPN backbone.

Calibrated Teacher for Sparsely Annotated Object Detection, AAAI 2023 (arXiv 2303.07582).

* ResNet-50/101 caffe style (stride on the first 1x1 conv of a block, BGR 0-255 input minus the caffe mean
  [103.53, 116.28, 123.675], std 1) with frozen BN and the stem + stage 1 frozen, FPN P3-P5 plus P6/P7 from C5
  (mmdet ``add_extra_convs='on_input'``), as the released ``retinanet_r101_fpn`` config.
* MobileNetV2-FPN (ImageNet weights that ship offline) for the evidence runs, torchvision input normalisation; the
  FPN inputs are ``DetectorConfig.mobilenet_levels`` (the evidence: features 3/6/13/17 -> P2-P5, + P6/P7).
* :class:`SparseRetinaNet`: RetinaNet whose loss receives the anchors and the decoded predicted boxes, so that the
  classification loss of negative anchors can be weighted by FIoU (:func:`calibrated_teacher.losses.
  fiou_anchor_weights`), its losses normalised per batch as mmdetection or per image as torchvision
  (``detector.loss_normalization``); targets may hold any number of extra hard (pseudo) boxes.

``create_model(name, num_classes)`` builds one of :data:`VARIANTS`; ``build_detector(num_classes, cfg)`` any
:class:`DetectorConfig`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torchvision.models import mobilenet_v2, resnet50, resnet101
from torchvision.models.detection import FCOS, FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from calibrated_teacher.config import DetectorConfig
from calibrated_teacher.losses import FIoUParams, fiou_anchor_weights
from shared.checkpoint import load_checkpoint
from shared.detection import FrozenBN, RetinaNetLossNorm
from shared.pretrained import imagenet_mobilenet_v2

__all__ = [
    "VARIANTS",
    "DetectionTransform",
    "SparseRetinaNet",
    "build_detector",
    "create_model",
    "keep_input_size",
    "label_offset",
]

CAFFE_MEAN = (103.53, 116.28, 123.675)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

#: the small torchvision-native detectors (evidence, tests) keep torchvision's per-image loss normalisation
_TINY = {
    "backbone": "mobilenet_v2",
    "width_mult": 0.25,
    "caffe_style": False,
    "fpn_channels": 32,
    "loss_normalization": "image",
}
_MNV2 = {"backbone": "mobilenet_v2", "caffe_style": False, "fpn_channels": 64, "loss_normalization": "image"}
#: name -> DetectorConfig. ``*_tiny`` are the test variants (random init is allowed for them only).
VARIANTS: dict[str, DetectorConfig] = {
    "retinanet_r101_fpn": DetectorConfig(),
    "retinanet_r50_fpn": DetectorConfig(backbone="resnet50"),
    "fcos_r50_fpn": DetectorConfig(arch="fcos", backbone="resnet50"),
    "faster_rcnn_r50_fpn": DetectorConfig(arch="faster_rcnn", backbone="resnet50"),
    "retinanet_mnv2_fpn": DetectorConfig(
        **_MNV2,
        head_norm="gn",
        mobilenet_levels=(3, 6, 13, 17),
        anchor_sizes=(8, 16, 32, 64, 128, 256),
        min_size=192,
        max_size=240,
    ),
    "retinanet_tiny": DetectorConfig(**_TINY, anchor_sizes=(16, 32, 64, 128, 256), min_size=128, max_size=160),
    "fcos_tiny": DetectorConfig(arch="fcos", **_TINY, anchor_sizes=(8, 16, 32, 64, 128), min_size=128, max_size=160),
    "faster_rcnn_tiny": DetectorConfig(
        arch="faster_rcnn", **_TINY, anchor_sizes=(16, 32, 64, 128, 256), min_size=128, max_size=160
    ),
}


def label_offset(cfg: DetectorConfig) -> int:
    """Label of the first category: 1 for Faster R-CNN (0 = background), 0 for RetinaNet and FCOS."""
    return 1 if cfg.arch == "faster_rcnn" else 0


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's transform with caffe-style input (BGR, 0-255, mean subtracted, std 1) and a switch that keeps
    the input size: training views and the teacher's weak view are resized by the data pipeline, evaluation images by
    this transform (``min_size`` / ``max_size``, the test scale)."""

    def __init__(self, min_size: int, max_size: int, caffe: bool):
        mean, std = (CAFFE_MEAN, (1.0, 1.0, 1.0)) if caffe else (IMAGENET_MEAN, IMAGENET_STD)
        super().__init__(min_size, max_size, list(mean), list(std))
        self.caffe = caffe
        self.keep_size = False

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if self.caffe:
            image = image[[2, 1, 0]] * 255.0
        return super().normalize(image)

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None) -> tuple:
        if self.training or self.keep_size:
            return image, target
        return super().resize(image, target)


@contextlib.contextmanager
def keep_input_size(model: nn.Module) -> Iterator[None]:
    """Inference on images already at their training scale (the teacher's weak view)."""
    transform = model.transform
    previous, transform.keep_size = transform.keep_size, True
    try:
        yield
    finally:
        transform.keep_size = previous


class SparseRetinaNet(RetinaNetLossNorm):
    """RetinaNet whose classification loss can weight negative anchors by the Focal IoU Weight, its losses normalised
    as ``loss_normalization`` says (``shared.detection.RetinaNetLossNorm``).

    ``self.fiou`` (a :class:`FIoUParams` or None) is set by the training loop for the iterations where FIoU is on.
    """

    fiou: FIoUParams | None = None

    def anchor_weights(self, targets, head_outputs, anchors, matched):
        return fiou_anchor_weights(targets, head_outputs, anchors, matched, self.box_coder, self.fiou)


def _freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a frozen one (``shared.detection.FrozenBN``, torchvision's FrozenBatchNorm2d
    computed in place) holding its statistics and affine parameters."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBN(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_batch_norm(child)
    return module


def _load_resnet_weights(resnet: nn.Module, path: str) -> None:
    """ImageNet ResNet weights from a local file (torchvision or mmdet/detectron2-caffe key names, optionally under
    ``state_dict``); every backbone weight must be provided (the classifier ``fc`` is not used)."""
    state = load_checkpoint(path)
    state = state.get("state_dict", state)
    state = {k.removeprefix("backbone."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    own = {k for k in resnet.state_dict() if not k.startswith("fc.")}
    missing = sorted(own - set(state))
    if missing:
        raise ValueError(f"{path} does not provide the ResNet weights {missing[:6]} ... ({len(missing)} missing)")
    resnet.load_state_dict({k: state[k] for k in own}, strict=False)


def _resnet_backbone(cfg: DetectorConfig, pretrained: str | None) -> BackboneWithFPN:
    norm = FrozenBN if cfg.frozen_bn else nn.BatchNorm2d
    resnet = (resnet101 if cfg.backbone == "resnet101" else resnet50)(norm_layer=norm)
    if cfg.caffe_style:  # caffe/detectron2 ResNet: the stride of a down-sampling block sits on its 1x1 conv
        for layer in (resnet.layer2, resnet.layer3, resnet.layer4):
            layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    if pretrained:
        _load_resnet_weights(resnet, pretrained)
    extra = LastLevelP6P7(2048 if cfg.p6p7_from_c5 else cfg.fpn_channels, cfg.fpn_channels)
    return _resnet_fpn_extractor(resnet, cfg.trainable_layers, [2, 3, 4], extra)


def _mobilenet_backbone(cfg: DetectorConfig, pretrained: str | None) -> BackboneWithFPN:
    if pretrained:
        if cfg.width_mult != 1.0:
            raise ValueError("the ImageNet MobileNetV2 weights are for width_mult 1.0")
        net = imagenet_mobilenet_v2(None if pretrained == "imagenet" else pretrained)
    else:
        net = mobilenet_v2(width_mult=cfg.width_mult)
    features = _freeze_batch_norm(net.features) if cfg.frozen_bn else net.features
    for p in features[0].parameters():  # the stem stays frozen, as ResNet's (mmdet frozen_stages=1)
        p.requires_grad_(False)
    levels = list(cfg.mobilenet_levels)
    if not levels or levels != sorted(set(levels)) or not all(1 <= i < len(features) for i in levels):
        raise ValueError(f"mobilenet_levels must be increasing indices in [1, {len(features) - 1}], got {levels}")
    in_channels = [features[i].out_channels for i in levels]
    if in_channels[-1] == cfg.fpn_channels and cfg.p6p7_from_c5:
        raise ValueError("p6p7_from_c5 needs fpn_channels different from the last stage's channels")
    extra = LastLevelP6P7(in_channels[-1] if cfg.p6p7_from_c5 else cfg.fpn_channels, cfg.fpn_channels)
    return_layers = {str(s): str(i) for i, s in enumerate(levels)}
    return BackboneWithFPN(features, return_layers, in_channels, cfg.fpn_channels, extra)


def _anchors(cfg: DetectorConfig, scales: tuple[float, ...], ratios: tuple[float, ...]) -> AnchorGenerator:
    sizes = tuple(tuple(int(s * k) for k in scales) for s in cfg.anchor_sizes)
    return AnchorGenerator(sizes, (ratios,) * len(sizes))


def build_detector(num_classes: int, cfg: DetectorConfig, pretrained_backbone: str | None = None) -> nn.Module:
    """A detector for ``num_classes`` categories (Faster R-CNN adds its background class) with the
    :class:`DetectionTransform` of ``cfg``; ``pretrained_backbone``: a local ImageNet file (``'imagenet'`` for the
    offline MobileNetV2), or None for random initialisation."""
    num_levels = len(cfg.mobilenet_levels) + 2 if cfg.backbone == "mobilenet_v2" else 5
    if len(cfg.anchor_sizes) != num_levels:
        raise ValueError(
            f"anchor_sizes {tuple(cfg.anchor_sizes)} needs one size per feature level ({num_levels}: the backbone's "
            "FPN levels + P6/P7)"
        )
    backbone = (_mobilenet_backbone if cfg.backbone == "mobilenet_v2" else _resnet_backbone)(cfg, pretrained_backbone)
    common: dict[str, Any] = {"min_size": cfg.min_size, "max_size": cfg.max_size}
    norm = functools.partial(nn.GroupNorm, 16) if cfg.head_norm == "gn" else None
    if cfg.arch == "retinanet":
        anchors = _anchors(cfg, (1.0, 2 ** (1 / 3), 2 ** (2 / 3)), (0.5, 1.0, 2.0))
        head = RetinaNetHead(cfg.fpn_channels, anchors.num_anchors_per_location()[0], num_classes, norm_layer=norm)
        model: nn.Module = SparseRetinaNet(
            backbone,
            num_classes,
            anchor_generator=anchors,
            head=head,
            fg_iou_thresh=cfg.fg_iou_thresh,
            bg_iou_thresh=cfg.bg_iou_thresh,
            score_thresh=cfg.score_thresh,
            nms_thresh=cfg.nms_thresh,
            detections_per_img=cfg.detections_per_img,
            loss_normalization=cfg.loss_normalization,
            **common,
        )
    elif cfg.arch == "fcos":
        model = FCOS(
            backbone,
            num_classes,
            anchor_generator=_anchors(cfg, (1.0,), (1.0,)),
            score_thresh=cfg.score_thresh,
            nms_thresh=cfg.nms_thresh,
            detections_per_img=cfg.detections_per_img,
            **common,
        )
    else:
        model = FasterRCNN(
            backbone,
            num_classes + 1,
            rpn_anchor_generator=_anchors(cfg, (1.0,), (0.5, 1.0, 2.0)),
            box_score_thresh=cfg.score_thresh,
            box_nms_thresh=cfg.nms_thresh,
            box_detections_per_img=cfg.detections_per_img,
            **common,
        )
    model.transform = DetectionTransform(cfg.min_size, cfg.max_size, caffe=cfg.caffe_style)
    return model


def create_model(name: str, num_classes: int, pretrained_backbone: str | None = None, **overrides: Any) -> nn.Module:
    """One of :data:`VARIANTS` with optional :class:`DetectorConfig` overrides."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}")
    return build_detector(num_classes, replace(VARIANTS[name], **overrides), pretrained_backbone)
