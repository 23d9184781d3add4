"""EMO inside torchvision's RetinaNet with FPN: the paper's COCO RetinaNet 1x setting.

Mirrors the official mmdet configs of zhangzjn/EMO, ``down-stream-tasks/mmdetection/configs/retinanet_emo/
retinanet_emo_{1M,2M,5M}_fpn_1x_coco.py``, and their base ``_base_/models/retinanet_emo_fpn.py``:

* backbone ``out_indices=(1, 2, 3, 4)`` with FPN ``start_level=1``: the outputs of stages 2, 3 and 4 (strides 8, 16,
  32) feed the FPN laterals; stage 1 is computed but unused;
* FPN ``out_channels=256``, ``add_extra_convs='on_input'``, ``num_outs=5``: P6 = 3x3/s2 conv on C5 (the stage-4
  output), P7 = 3x3/s2 conv on P6 with no ReLU in between (mmdet's ``relu_before_extra_convs=False``);
* backbone ``frozen_stages=1`` (stage0 and stage1 frozen) and ``norm_eval=True`` (every BatchNorm in eval mode);
* window size 7 for EMO-1M/2M and 10 for EMO-5M (weights are unaffected);
* RetinaHead: 4 stacked 3x3 convs of 256, anchors ``octave_base_scale=4``, 3 scales per octave, ratios 0.5/1/2,
  strides 8-128; focal loss (alpha 0.25, gamma 2), L1 box loss on unit-std deltas, IoU thresholds 0.5/0.4;
  test: 1000 candidates per level, score > 0.05, NMS 0.5, 100 detections per image;
* images resized to (1333, 800) keep-ratio, ImageNet mean/std, padded to a multiple of 32.

:func:`build_detector` builds it from a :class:`emo.config.DetectionConfig`; :func:`evaluate` gives its COCO bbox
metrics (used by ``train_det.py`` after every epoch and by ``eval_det.py``).
"""

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork

import emo.model  # noqa: F401  (registers the EMO models with timm)
from emo.config import DetectionConfig
from emo.model import EMO
from emo.weights import load_official_checkpoint
from shared.detection import (
    CocoDetection,
    RetinaNetLossNorm,
    coco_detections,
    evaluate_detections,
    freeze_modules,
    init_fpn_mmdet,
)
from shared.detection_training import FrozenStagesBackbone
from shared.distributed import DistContext
from shared.training import AmpDtype, autocast

__all__ = [
    'RETINANET_WINDOW_SIZES',
    'EMOFPNBackbone',
    'LastLevelP6P7FromC5',
    'apply_frozen_stages',
    'build_detector',
    'build_retinanet',
    'evaluate',
]

# window_sizes of the official RetinaNet configs (the base config says 10; the 1M and 2M configs override it to 7)
RETINANET_WINDOW_SIZES = {'emo_1m': 7, 'emo_2m': 7, 'emo_5m': 10}


def apply_frozen_stages(body: EMO, frozen_stages: int, norm_eval: bool) -> None:
    """The official backbone's ``frozen_stages`` and ``norm_eval``: stage0 ... stage{frozen_stages} in eval mode
    with ``requires_grad=False`` (-1: none), and with ``norm_eval`` every BatchNorm of ``body`` in eval mode."""
    if not -1 <= frozen_stages <= 4:
        raise ValueError(f'frozen_stages must be in [-1, 4], got {frozen_stages}')
    freeze_modules([getattr(body, f'stage{i}') for i in range(frozen_stages + 1)], body if norm_eval else None)


class LastLevelP6P7FromC5(ExtraFPNBlock):
    """P6 from C5 and P7 from P6, without the ReLU that torchvision's ``LastLevelP6P7`` applies before P7."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)

    def forward(
        self,
        results: list[torch.Tensor],
        x: list[torch.Tensor],
        names: list[str],
    ) -> tuple[list[torch.Tensor], list[str]]:
        p6 = self.p6(x[-1])
        p7 = self.p7(p6)
        return [*results, p6, p7], [*names, 'p6', 'p7']


class EMOFPNBackbone(FrozenStagesBackbone):
    """EMO body + FPN, with the official backbone's ``frozen_stages`` and ``norm_eval`` behaviour.

    Args:
        body: An EMO model (its norm and classifier are pruned here).
        in_indices: Stage indices (0-3 = stages 1-4) feeding the FPN laterals.
        out_channels: FPN channels.
        frozen_stages: Freeze stage0 ... stage{frozen_stages} (parameters and norm statistics); -1 freezes nothing.
        norm_eval: Keep every BatchNorm of the body in eval mode while training.
    """

    freeze = staticmethod(apply_frozen_stages)

    def __init__(
        self,
        body: EMO,
        in_indices: Sequence[int] = (1, 2, 3),
        out_channels: int = 256,
        frozen_stages: int = 1,
        norm_eval: bool = True,
    ):
        super().__init__()
        self.in_indices = list(in_indices)
        body.prune_intermediate_layers(self.in_indices, prune_norm=True, prune_head=True)
        self.body = body
        in_channels = [body.feature_info[i]['num_chs'] for i in self.in_indices]
        self.fpn = FeaturePyramidNetwork(
            in_channels, out_channels, extra_blocks=LastLevelP6P7FromC5(in_channels[-1], out_channels)
        )
        init_fpn_mmdet(self.fpn)
        self.out_channels = out_channels
        self.set_frozen_stages(frozen_stages, norm_eval)

    def forward(self, x: torch.Tensor) -> 'OrderedDict[str, torch.Tensor]':
        feats = self.body.forward_intermediates(x, indices=self.in_indices, stop_early=True, intermediates_only=True)
        return self.fpn(OrderedDict((str(i), f) for i, f in zip(self.in_indices, feats)))


def retinanet_anchor_generator(
    strides: Sequence[int] = (8, 16, 32, 64, 128),
    octave_base_scale: float = 4.0,
    scales_per_octave: int = 3,
    ratios: Sequence[float] = (0.5, 1.0, 2.0),
) -> AnchorGenerator:
    """mmdet's RetinaNet anchors: sizes octave_base_scale * stride * 2^(k / scales_per_octave), unrounded."""
    sizes = tuple(
        tuple(octave_base_scale * stride * 2 ** (k / scales_per_octave) for k in range(scales_per_octave))
        for stride in strides
    )
    return AnchorGenerator(sizes, (tuple(ratios),) * len(strides))


def build_retinanet(
    variant: str = 'emo_1m',
    num_classes: int = 80,
    pretrained_backbone: str | None = None,
    window_size: int | Sequence[int] | None = None,
    frozen_stages: int = 1,
    norm_eval: bool = True,
    fpn_channels: int = 256,
    min_size: int = 800,
    max_size: int = 1333,
    detections_per_img: int = 100,
    loss_normalization: str = 'batch',
    **kwargs,
) -> RetinaNet:
    """Build torchvision's RetinaNet with an EMO + FPN backbone as in the official RetinaNet 1x configs.

    Args:
        variant: A registered EMO model name (``emo_1m``, ``emo_2m``, ``emo_5m``, ``emo_6m``, ``emo_test``).
        num_classes: Number of foreground classes; labels must lie in [0, num_classes) (80 for COCO with
            contiguous ids, as in mmdet).
        pretrained_backbone: Path to an official ImageNet checkpoint (``net.pth``), loaded strictly (its ``norm``
            and ``head`` keys are ignored, as in the official backbone). None: random init.
        window_size: EW-MHSA window size; None uses the official value (``RETINANET_WINDOW_SIZES``, else 7).
        frozen_stages / norm_eval: See :class:`EMOFPNBackbone`.
        fpn_channels: FPN and head channels.
        min_size / max_size: Resize of ``GeneralizedRCNNTransform`` (mmdet's ``img_scale=(1333, 800)``).
        detections_per_img: Detections kept per image after NMS (mmdet ``max_per_img``).
        loss_normalization: ``batch``: the focal and L1 losses of the process's images summed over their summed
            positives, as mmdet; ``image``: torchvision's per-image normalisation
            (``shared.detection.RetinaNetLossNorm``).
        kwargs: Passed to :class:`torchvision.models.detection.RetinaNet` (e.g. ``score_thresh``) or, when they
            start with ``backbone_``, to ``timm.create_model`` for the EMO body (e.g. ``backbone_drop_path_rate``).
    """
    body_kwargs = {k[len('backbone_') :]: kwargs.pop(k) for k in list(kwargs) if k.startswith('backbone_')}
    body = timm.create_model(variant, **body_kwargs)
    if not isinstance(body, EMO):
        raise ValueError(f'{variant} is not an EMO model')
    body.set_window_size(window_size if window_size is not None else RETINANET_WINDOW_SIZES.get(variant, 7))
    backbone = EMOFPNBackbone(
        body, in_indices=(1, 2, 3), out_channels=fpn_channels, frozen_stages=frozen_stages, norm_eval=norm_eval
    )
    if pretrained_backbone is not None:
        load_official_checkpoint(backbone.body, pretrained_backbone, strict=True)
    # torchvision's defaults already match the config (score 0.05, NMS 0.5, IoU 0.5/0.4, 1000 per level)
    return RetinaNetLossNorm(
        backbone,
        num_classes,
        loss_normalization=loss_normalization,
        min_size=min_size,
        max_size=max_size,
        anchor_generator=retinanet_anchor_generator(),
        detections_per_img=detections_per_img,
        **kwargs,
    )


def build_detector(cfg: DetectionConfig, num_classes: int, load_pretrained: bool = True) -> RetinaNet:
    """:func:`build_retinanet` configured by ``cfg`` (the backbone checkpoint loaded when asked)."""
    kwargs: dict[str, Any] = {}
    if cfg.drop_path is not None:
        kwargs['backbone_drop_path_rate'] = cfg.drop_path
    pretrained = cfg.pretrained_backbone if load_pretrained else None
    return build_retinanet(
        cfg.model,
        num_classes=num_classes,
        loss_normalization=cfg.loss_normalization,
        pretrained_backbone=pretrained,
        window_size=cfg.window_size,
        frozen_stages=cfg.frozen_stages,
        norm_eval=cfg.norm_eval,
        fpn_channels=cfg.fpn_channels,
        min_size=cfg.data.min_size,
        max_size=cfg.data.max_size,
        detections_per_img=cfg.detections_per_img,
        score_thresh=cfg.score_thresh,
        **kwargs,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, dataset: CocoDetection, ctx: DistContext, amp: AmpDtype = 'off'
) -> dict[str, Any]:
    """COCO bbox metrics of a torchvision detector (RetinaNet, SSD) on ``dataset`` (fractions, as
    ``shared.metrics.coco_evaluate`` returns them); predicted labels count from ``dataset.label_offset``.

    Detections (boxes in original image coordinates, xywh, COCO category ids) are gathered from every rank and
    evaluated once with pycocotools; every rank returns the same dict.
    """
    model.eval()
    detections: list[dict[str, Any]] = []
    for images, targets in loader:
        images = [image.to(ctx.device, non_blocking=True) for image in images]
        with autocast(ctx.device, amp):
            outputs = model(images)
        detections += coco_detections(outputs, targets, dataset.cat_ids, dataset.label_offset)
    return evaluate_detections(detections, dataset.coco, ctx)
