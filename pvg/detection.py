"""Pyramid ViG / PVG inside torchvision's Mask R-CNN with FPN: the papers' COCO Mask R-CNN 1x setting.

What the sources fix (README, Detection): the official detection code is mmdetection's Mask R-CNN with the backbone
swapped in, "the output features in each stage of Pyramid ViG as the input of FPN" (ViG issue #104) and "the same
settings as mmdetection official" (#233). So, as mmdet's ``mask_rcnn_r50_fpn_1x_coco.py``:

* backbone ``out_indices=(0, 1, 2, 3)``: the outputs of stages 1-4 (strides 4, 8, 16, 32) feed the FPN laterals;
* FPN ``out_channels=256``, ``num_outs=5``: P6 is a stride-2 max pool of P5 (torchvision's ``LastLevelMaxPool``);
* RPN anchors of size 8 x stride (32-512), ratios 0.5/1/2; 2000 pre-NMS / 1000 post-NMS proposals in training and
  1000 / 1000 in testing, NMS 0.7; RoIAlign 7 x 7 (boxes) and 14 x 14 (masks) with adaptive sampling
  (``sampling_ratio=0``) and mmcv's half-pixel alignment (``aligned=True``; ``roi_aligned: false`` gives
  torchvision's); 2-fc box head (1024), 4-conv mask head (256) + deconv, 28 x 28 masks;
* RoI sampling 512 per image with 25 % positives at IoU 0.5; test: score > 0.05, NMS 0.5, 100 per image, masks
  binarised at 0.5;
* images resized to (1333, 800) keep-ratio, normalised with ImageNet mean/std (mmdet's ``img_norm_cfg``), padded to
  a multiple of 32.

:func:`build_mask_rcnn` builds it, :func:`build_detector` from a :class:`pvg.config.MaskRCNNConfig`;
:func:`build_coco_datasets` reads the COCO splits with instance masks and :func:`evaluate` gives box and mask AP
(pycocotools, through ``shared.detection``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

import pvg.model  # noqa: F401  (registers the Pyramid ViG / PVG models with timm)
from pvg.config import MaskRCNNConfig, MaskRCNNDataConfig
from pvg.model import PyramidViG
from pvg.weights import load_official_checkpoint
from shared.detection import (
    CocoDetection,
    PyramidRoIAlign,
    coco_detections,
    evaluate_detections,
    freeze_modules,
    init_fpn_mmdet,
)
from shared.detection_training import DetectorParts, FrozenStagesBackbone
from shared.distributed import DistContext
from shared.training import AmpDtype, autocast

__all__ = [
    'MASK_RCNN',
    'PyramidViGFPN',
    'apply_frozen_stages',
    'build_coco_datasets',
    'build_detector',
    'build_mask_rcnn',
    'evaluate',
]

FPN_LEVELS = ('0', '1', '2', '3')  # the FPN outputs P2-P5 that the RoI heads pool from ('pool' = P6 is RPN only)


def apply_frozen_stages(body: PyramidViG, frozen_stages: int, norm_eval: bool) -> None:
    """mmdet's ``frozen_stages``: the stem and position embedding (0) and stages 1..``frozen_stages`` in eval mode
    with ``requires_grad=False`` (-1: none); with ``norm_eval`` every BatchNorm of ``body`` in eval mode."""
    if not -1 <= frozen_stages <= 4:
        raise ValueError(f'frozen_stages must be in [-1, 4], got {frozen_stages}')
    frozen: list[nn.Module] = []
    if frozen_stages >= 0:
        frozen.append(body.stem)
        body.pos_embed.requires_grad = False
        last = body.stage_ends[frozen_stages - 1] if frozen_stages > 0 else -1
        frozen += list(body.backbone[: last + 1])
    freeze_modules(frozen, body if norm_eval else None)


class PyramidViGFPN(FrozenStagesBackbone):
    """Pyramid ViG / PVG body + FPN over its four stage outputs (strides 4-32) + a max-pooled P6.

    Args:
        body: A :class:`pvg.model.PyramidViG` (its classification head is pruned here).
        out_channels: FPN channels.
        frozen_stages / norm_eval: See :func:`apply_frozen_stages`; re-applied on every ``train()``.
    """

    freeze = staticmethod(apply_frozen_stages)

    def __init__(self, body: PyramidViG, out_channels: int = 256, frozen_stages: int = -1, norm_eval: bool = True):
        super().__init__()
        self.in_indices = [0, 1, 2, 3]
        body.prune_intermediate_layers(self.in_indices, prune_head=True)
        self.body = body
        in_channels = [body.feature_info[i]['num_chs'] for i in self.in_indices]
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        init_fpn_mmdet(self.fpn)
        self.out_channels = out_channels
        self.set_frozen_stages(frozen_stages, norm_eval)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body.forward_intermediates(x, indices=self.in_indices, intermediates_only=True)
        return self.fpn(OrderedDict(zip(FPN_LEVELS, feats)))


def build_mask_rcnn(
    variant: str = 'pvg_s',
    num_classes: int = 80,
    pretrained_backbone: str | Path | None = None,
    frozen_stages: int = -1,
    norm_eval: bool = True,
    fpn_channels: int = 256,
    min_size: int = 800,
    max_size: int = 1333,
    image_mean: Sequence[float] = (0.485, 0.456, 0.406),
    image_std: Sequence[float] = (0.229, 0.224, 0.225),
    roi_sampling_ratio: int = 0,
    roi_aligned: bool = True,
    **kwargs: Any,
) -> MaskRCNN:
    """torchvision's Mask R-CNN with a Pyramid ViG / PVG + FPN backbone, configured as mmdet's Mask R-CNN 1x.

    Args:
        variant: A registered model of this package (``pvig_ti/s/m/b``, ``pvg_ti/s/m/b``, ``pvig_test``,
            ``pvg_test``).
        num_classes: Foreground classes (labels 1..num_classes; 0 is the background, as torchvision's heads).
        pretrained_backbone: An official Pyramid ViG release file or a ``pvg.train`` checkpoint, loaded strictly
            into the full classifier before its head is pruned. None: random initialisation.
        frozen_stages / norm_eval: See :func:`apply_frozen_stages`.
        fpn_channels: FPN, RPN and RoI head channels.
        min_size / max_size: Resize of ``GeneralizedRCNNTransform`` (mmdet's ``img_scale=(1333, 800)``).
        image_mean / image_std: Input normalisation (images in [0, 1]).
        roi_sampling_ratio: RoIAlign sampling points per bin (0: adaptive, as mmdet; torchvision's default is 2).
        roi_aligned: RoIAlign's half-pixel alignment of mmcv (mmdet's default); False: torchvision's unaligned one
            (``shared.detection.PyramidRoIAlign``).
        kwargs: Passed to :class:`torchvision.models.detection.MaskRCNN` (e.g. ``box_score_thresh``) or, when they
            start with ``backbone_``, to ``timm.create_model`` (e.g. ``backbone_drop_path_rate``).
    """
    body_kwargs = {k[len('backbone_') :]: kwargs.pop(k) for k in list(kwargs) if k.startswith('backbone_')}
    body = timm.create_model(variant, **body_kwargs)
    if not isinstance(body, PyramidViG):
        raise ValueError(f'{variant} is not a Pyramid ViG / PVG model')
    if pretrained_backbone is not None:
        load_official_checkpoint(body, pretrained_backbone)
    backbone = PyramidViGFPN(body, fpn_channels, frozen_stages=frozen_stages, norm_eval=norm_eval)
    anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    return MaskRCNN(
        backbone,
        num_classes + 1,
        min_size=min_size,
        max_size=max_size,
        image_mean=list(image_mean),
        image_std=list(image_std),
        rpn_anchor_generator=anchors,
        box_roi_pool=PyramidRoIAlign(list(FPN_LEVELS), 7, roi_sampling_ratio, aligned=roi_aligned),
        mask_roi_pool=PyramidRoIAlign(list(FPN_LEVELS), 14, roi_sampling_ratio, aligned=roi_aligned),
        **kwargs,
    )


def build_detector(cfg: MaskRCNNConfig, num_classes: int, load_pretrained: bool = True) -> MaskRCNN:
    """:func:`build_mask_rcnn` configured by ``cfg`` (the backbone checkpoint loaded when asked)."""
    if cfg.graph_mode not in ('fast', 'dense'):
        raise ValueError(f"graph_mode must be 'fast' or 'dense', got {cfg.graph_mode!r}")
    return build_mask_rcnn(
        cfg.model,
        num_classes=num_classes,
        pretrained_backbone=cfg.pretrained_backbone if load_pretrained else None,
        frozen_stages=cfg.frozen_stages,
        norm_eval=cfg.norm_eval,
        fpn_channels=cfg.fpn_channels,
        min_size=cfg.data.min_size,
        max_size=cfg.data.max_size,
        image_mean=cfg.image_mean,
        image_std=cfg.image_std,
        roi_sampling_ratio=cfg.roi_sampling_ratio,
        roi_aligned=cfg.roi_aligned,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        box_batch_size_per_image=cfg.roi_batch_size_per_image,
        box_score_thresh=cfg.box_score_thresh,
        box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.detections_per_img,
        backbone_drop_path_rate=cfg.drop_path,
        backbone_graph_mode=cfg.graph_mode,
    )


def build_coco_datasets(cfg: MaskRCNNDataConfig) -> tuple[CocoDetection, CocoDetection]:
    """Train and val splits with instance masks, labels from 1, read as mmdet's ``CocoDataset`` (train: images
    with a usable box, at least 32 px, boxes outside the image dropped; val: every image)."""
    root = cfg.coco_root()
    common = dict(label_offset=1, drop_outside=True, with_masks=True)
    train = CocoDetection(
        root / cfg.train_images, root / cfg.train_annotations, train=True, min_size=32, hflip=cfg.hflip, **common
    )
    val = CocoDetection(root / cfg.val_images, root / cfg.val_annotations, **common)
    if train.cat_ids != val.cat_ids:
        raise ValueError(f'categories differ between {train.annotation_file} and {val.annotation_file}')
    if len(train) == 0:
        raise ValueError(f'no training image with a usable box in {train.annotation_file}')
    return train, val


#: The detector of ``train_det.py`` / ``eval_det.py``: Mask R-CNN (:func:`build_detector`) on its COCO datasets.
MASK_RCNN = DetectorParts('mask_rcnn', build_detector, build_coco_datasets)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    dataset: CocoDetection,
    ctx: DistContext,
    amp: AmpDtype = 'off',
    mask_threshold: float = 0.5,
) -> dict[str, Any]:
    """COCO box metrics (top level) and mask metrics (``"segm"``) of a Mask R-CNN on ``dataset``, as fractions.

    Detections (boxes and RLE masks in original image coordinates, COCO category ids) are gathered from every rank
    and scored once with pycocotools; every rank returns the same dict."""
    model.eval()
    detections: list[dict[str, Any]] = []
    for images, targets in loader:
        images = [image.to(ctx.device, non_blocking=True) for image in images]
        with autocast(ctx.device, amp):
            outputs = model(images)
        detections += coco_detections(
            outputs, targets, dataset.cat_ids, dataset.label_offset, masks=True, mask_threshold=mask_threshold
        )
    return evaluate_detections(detections, dataset.coco, ctx, segm=True)
