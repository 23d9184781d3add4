"""COCO-format detection data and evaluation shared by the detection packages (emo's RetinaNet, mixteacher's Faster
R-CNN, calibrated_teacher, pvg's Mask R-CNN).

* :class:`CocoDetection`: images and boxes (and, with ``with_masks``, instance masks) of one ``instances_*.json``
  (mmdet's ``CocoDataset`` filtering).
* :class:`CocoImages`: only the images of a json (an unlabeled pool).
* :class:`CocoDataConfig`: the config block naming the COCO files, the embedded synthetic set and the batching.
* :class:`GroupedDistributedSampler`: mmdet's aspect-ratio grouped sampler.
* :func:`sharded_loader`: every evaluation image once over the ranks.
* :func:`coco_detections` + :func:`evaluate_detections`: model outputs -> COCO results (boxes, and RLE masks with
  ``masks=True``), gathered from every rank and scored once with pycocotools (bbox, and segm with ``segm=True``);
  :func:`coco_summary`: the paper-style one-line summary.
* :class:`FrozenBN`: torchvision's ``FrozenBatchNorm2d`` computed in place (the detectors' frozen backbones).
* Loop pieces: :func:`targets_to_device`, :func:`init_fpn_mmdet` (mmdet's FPN initialisation), :func:`freeze_modules` (a
  backbone's ``frozen_stages`` / ``norm_eval``) and
  :func:`check_checkpoint_categories` (a checkpoint's category ids against the evaluation annotations).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision.models.detection import RetinaNet
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, box_iou, roi_align, sigmoid_focal_loss
from torchvision.transforms.functional import pil_to_tensor

from shared.distributed import DistContext, all_gather_objects
from shared.metrics import coco_evaluate

__all__ = [
    "COCO_LAYOUT",
    "COCO_METRIC_KEYS",
    "CocoDataConfig",
    "CocoDetection",
    "CocoImages",
    "FrozenBN",
    "GroupedDistributedSampler",
    "PyramidRoIAlign",
    "RetinaNetLossNorm",
    "check_checkpoint_categories",
    "coco_detections",
    "coco_summary",
    "detection_collate",
    "encode_masks",
    "evaluate_detections",
    "freeze_modules",
    "init_fpn_mmdet",
    "load_coco",
    "normalize_loss",
    "read_image",
    "retinanet_box_loss_sums",
    "retinanet_class_loss_sums",
    "retinanet_matches",
    "sharded_loader",
    "synthetic_coco_root",
    "targets_to_device",
]

COCO_LAYOUT = (
    "<root>/train2017/*.jpg, <root>/val2017/*.jpg, <root>/annotations/instances_train2017.json, "
    "<root>/annotations/instances_val2017.json"
)
COCO_METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class CocoDataConfig:
    """Where the COCO-format data is and how it is batched (a package's detection configs subclass it and set their
    own defaults)."""

    root: str = field(default="", metadata={"help": "COCO root holding train2017/, val2017/, annotations/"})
    train_images: str = "train2017"
    train_annotations: str = "annotations/instances_train2017.json"
    val_images: str = "val2017"
    val_annotations: str = "annotations/instances_val2017.json"
    synthetic: bool = field(default=False, metadata={"help": "write/use the embedded synthetic COCO-format set"})
    synthetic_train: int = 24
    synthetic_val: int = 8
    synthetic_image_size: int = 192
    synthetic_categories: int = 6
    hflip: float = 0.5
    batch_size: int = field(default=4, metadata={"help": "images per process"})
    eval_batch_size: int = field(default=1, metadata={"help": "images per process at evaluation (mmdet: 1)"})
    workers: int = 4

    def coco_root(self) -> Path:
        """The COCO root (with ``synthetic``, the embedded synthetic set, written first if it is not there yet)."""
        return synthetic_coco_root("", self) if self.synthetic else Path(self.root)


def synthetic_coco_root(package: str, data: Any, is_main: bool = True, num_unlabeled: int | None = None) -> Path:
    """The embedded synthetic COCO-format set (``shared.synthetic.write_coco_detection``, seed 0) of ``data``'s
    ``synthetic_*`` sizes under the synthetic cache, its folder named after them (prefixed by ``package`` when
    given; ``_u<num_unlabeled>`` when an unlabeled pool is asked for). The main process writes it when it is not
    there yet; with several processes the caller synchronises."""
    from shared.synthetic import synthetic_root, write_coco_detection  # deferred: only synthetic runs need it

    prefix = f"{package}_" if package else ""
    pool = "" if num_unlabeled is None else f"_u{num_unlabeled}"
    root = synthetic_root() / (
        f"{prefix}coco_n{data.synthetic_train}_v{data.synthetic_val}{pool}_s{data.synthetic_image_size}"
        f"_c{data.synthetic_categories}"
    )
    if is_main:
        write_coco_detection(
            root,
            num_train=data.synthetic_train,
            num_val=data.synthetic_val,
            image_size=data.synthetic_image_size,
            num_categories=data.synthetic_categories,
            num_unlabeled=num_unlabeled or 0,
            seed=0,
        )
    return root


def _missing(path: Path, what: str, layout: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found: {path}. Expected the layout {layout} (see `python -m shared.datasets info coco2017`), "
        "or set data.synthetic=true for the embedded synthetic set."
    )


def load_coco(annotation_file: str | Path, layout: str = COCO_LAYOUT) -> COCO:
    """A pycocotools ``COCO`` of ``annotation_file``; a missing or malformed file is an error naming it."""
    annotation_file = Path(annotation_file)
    if not annotation_file.is_file():
        raise _missing(annotation_file, "COCO annotation file", layout)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its loading progress
        try:
            return COCO(str(annotation_file))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{annotation_file} is not a COCO instances file: {err!r}") from err


def is_xywh_box(box: Any) -> bool:
    """Whether ``box`` is a COCO ``bbox``: a list (or tuple) of 4 finite numbers [x, y, w, h]."""
    return (
        isinstance(box, (list, tuple))
        and len(box) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
    )


def read_image(path: Path, info: dict[str, Any]) -> torch.Tensor:
    """An RGB image as float (3, H, W) in [0, 1]; an unreadable file or a size other than the json's is an error."""
    try:
        with Image.open(path) as img:
            image = img.convert("RGB")
    except (OSError, ValueError) as err:
        raise RuntimeError(f"cannot read image {path}: {err}") from err
    if "width" in info and image.size != (info["width"], info["height"]):
        raise ValueError(
            f"{path} is {image.size[0]}x{image.size[1]} but its json says {info['width']}x{info['height']}"
        )
    return pil_to_tensor(image).float().div_(255)


class CocoDetection(Dataset):
    """Images and boxes of one COCO split (``instances_*.json`` + its image folder), mmdet ``CocoDataset`` filtering.

    Args:
        image_dir: folder of the split's images.
        annotation_file: the split's ``instances_*.json``.
        train: leave out images without a usable box (``filter_empty_gt``) and, with ``min_size``, images whose
            shorter side is below it; evaluation keeps every image.
        label_offset: label of the first category: 0 for heads without a background class (RetinaNet), 1 for
            Faster R-CNN (0 = background).
        categories: category ids in label order (default: every id of the json, sorted).
        min_size: smallest image side kept for training (mmdet ``min_size=32`` in RetinaNet configs; 0: none).
        drop_outside: also drop boxes with no overlap with the image or a non-positive ``area`` (mmdet's
            ``_parse_ann_info``); boxes under 1 px wide or high and crowd/ignore boxes are always dropped.
        hflip: probability of a horizontal flip in ``__getitem__`` (training; mmdet ``RandomFlip``).
        layout: the expected layout, named in missing-file errors.
        with_masks: also give each kept box its instance mask (pycocotools ``annToMask`` of the annotation's
            polygons or RLE), flipped with the image.

    Items are ``(image, target)``: a float (3, H, W) tensor in [0, 1] and ``{"boxes": (n, 4) xyxy float32,
    "labels": (n,) int64, "image_id": int}``, plus ``"masks": (n, H, W) uint8`` in {0, 1} with ``with_masks``.
    """

    def __init__(
        self,
        image_dir: str | Path,
        annotation_file: str | Path,
        train: bool = False,
        label_offset: int = 0,
        categories: Sequence[int] | None = None,
        min_size: int = 0,
        drop_outside: bool = False,
        hflip: float = 0.0,
        layout: str = COCO_LAYOUT,
        with_masks: bool = False,
    ):
        self.image_dir, self.annotation_file = Path(image_dir), Path(annotation_file)
        self.coco = load_coco(self.annotation_file, layout)
        self.with_masks = with_masks
        if not self.image_dir.is_dir():
            raise _missing(self.image_dir, "COCO image folder", layout)
        self.cat_ids = list(categories) if categories is not None else sorted(self.coco.getCatIds())
        self.category_names = [self.coco.cats[c]["name"] if c in self.coco.cats else str(c) for c in self.cat_ids]
        self.label_offset = label_offset
        self.label_of = {c: i + label_offset for i, c in enumerate(self.cat_ids)}
        self.train, self.hflip, self.drop_outside = train, hflip, drop_outside
        ids = sorted(self.coco.getImgIds())
        if train:
            imgs = self.coco.imgs
            ids = [i for i in ids if min(imgs[i]["width"], imgs[i]["height"]) >= min_size and len(self.boxes(i)[0])]
        self.ids = ids

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def aspect_groups(self) -> list[int]:
        """1 for landscape images (width > height), 0 otherwise: mmdet's grouping flag."""
        return [int(self.coco.imgs[i]["width"] > self.coco.imgs[i]["height"]) for i in self.ids]

    def boxes(self, image_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The usable boxes (xyxy float32) and labels of an image."""
        boxes, labels, _ = self._usable(image_id)
        return boxes, labels

    def masks(self, image_id: int) -> torch.Tensor:
        """The instance masks (n, H, W) uint8 of the usable boxes of an image, in the order of :meth:`boxes`; an
        annotation without ``segmentation`` is an error naming it."""
        anns = self._usable(image_id)[2]
        info = self.coco.imgs[image_id]
        for ann in anns:
            if not ann.get("segmentation"):
                raise ValueError(f"{self.annotation_file}: annotation {ann.get('id')} has no 'segmentation'")
        if not anns:
            return torch.zeros(0, info["height"], info["width"], dtype=torch.uint8)
        return torch.from_numpy(np.stack([self.coco.annToMask(ann) for ann in anns]).astype(np.uint8))

    def _usable(self, image_id: int) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
        """Boxes, labels and annotation dicts of the usable annotations of an image."""
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0) and not a.get("ignore")]
        for ann in anns:
            box = ann.get("bbox")
            if not is_xywh_box(box):
                raise ValueError(
                    f"{self.annotation_file}: annotation {ann.get('id')} has bbox {box!r}, not [x, y, w, h] numbers"
                )
            if ann.get("category_id") not in self.label_of:
                raise ValueError(
                    f"{self.annotation_file}: annotation {ann.get('id')} has category_id "
                    f"{ann.get('category_id')}, which is not in 'categories'"
                )
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64)
        keep = (xywh[:, 2] >= 1) & (xywh[:, 3] >= 1)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        if self.drop_outside:
            info = self.coco.imgs[image_id]
            inside_w = boxes[:, 2].clamp(max=info["width"]) - boxes[:, 0].clamp(min=0)
            inside_h = boxes[:, 3].clamp(max=info["height"]) - boxes[:, 1].clamp(min=0)
            area = torch.tensor([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], dtype=torch.float64)
            keep &= (inside_w.clamp(min=0) * inside_h.clamp(min=0) > 0) & (area > 0)
        return boxes[keep], labels[keep], [ann for ann, k in zip(anns, keep.tolist()) if k]

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(image, boxes, labels, image id) without augmentation."""
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        boxes, labels = self.boxes(image_id)
        return read_image(self.image_dir / info["file_name"], info), boxes, labels, image_id

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, boxes, labels, image_id = self.load(index)
        target: dict[str, Any] = {"boxes": boxes, "labels": labels, "image_id": image_id}
        if self.with_masks:
            target["masks"] = self.masks(image_id)
        if self.train and self.hflip > 0 and torch.rand(()).item() < self.hflip:
            width = image.shape[-1]
            image = image.flip(-1)
            target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
            if self.with_masks:
                target["masks"] = target["masks"].flip(-1)
        return image, target


class CocoImages(Dataset):
    """The images of a COCO json (``images`` list only, annotations ignored): an unlabeled pool."""

    def __init__(
        self,
        image_dir: str | Path,
        annotation_file: str | Path,
        exclude_ids: set[int] | None = None,
        layout: str = COCO_LAYOUT,
    ):
        self.image_dir, self.annotation_file = Path(image_dir), Path(annotation_file)
        if not self.annotation_file.is_file():
            raise _missing(self.annotation_file, "image list json", layout)
        if not self.image_dir.is_dir():
            raise _missing(self.image_dir, "image folder", layout)
        try:
            with open(self.annotation_file) as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{self.annotation_file} is not a COCO image list (unreadable JSON: {err})") from err
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list) or not all(isinstance(im, dict) and "id" in im for im in images):
            raise ValueError(f"{self.annotation_file} is not a COCO image list (no 'images' list of dicts with an id)")
        self.images = [im for im in images if not exclude_ids or im["id"] not in exclude_ids]

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        info = self.images[index]
        return read_image(self.image_dir / info["file_name"], info), info["id"]


def detection_collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list, list]:
    """Lists of images and targets (torchvision detection models take lists)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


class GroupedDistributedSampler(Sampler[int]):
    """mmdet's ``DistributedGroupSampler``: every batch holds images of one aspect group (landscape or not).

    Per epoch, with a generator seeded by ``seed + epoch``: each group is shuffled and padded by repetition to a
    multiple of ``samples_per_gpu * num_replicas``, the concatenation is cut into batches of ``samples_per_gpu`` whose
    order is shuffled, and rank r takes the r-th contiguous share. Use with ``DataLoader(batch_size=samples_per_gpu,
    shuffle=False)``. One process is ``num_replicas=1, rank=0``.
    """

    def __init__(
        self, groups: Sequence[int], samples_per_gpu: int, num_replicas: int = 1, rank: int = 0, seed: int = 0
    ):
        if not groups:
            raise ValueError("GroupedDistributedSampler: empty dataset")
        self.groups = torch.as_tensor(list(groups), dtype=torch.int64)
        self.samples_per_gpu = samples_per_gpu
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        chunk = samples_per_gpu * num_replicas
        self.total_size = sum(math.ceil(int(n) / chunk) * chunk for n in torch.bincount(self.groups) if n > 0)
        self.num_samples = self.total_size // num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        chunk = self.samples_per_gpu * self.num_replicas
        indices: list[int] = []
        for group in torch.unique(self.groups).tolist():
            members = torch.nonzero(self.groups == group).flatten()
            members = members[torch.randperm(len(members), generator=gen)].tolist()
            padded = math.ceil(len(members) / chunk) * chunk
            indices += (members * math.ceil(padded / len(members)))[:padded]
        batches = torch.randperm(len(indices) // self.samples_per_gpu, generator=gen).tolist()
        indices = [indices[b * self.samples_per_gpu + j] for b in batches for j in range(self.samples_per_gpu)]
        offset = self.num_samples * self.rank
        return iter(indices[offset : offset + self.num_samples])


def sharded_loader(dataset: Dataset, batch_size: int, ctx: DistContext, workers: int = 0) -> DataLoader:
    """Every image of ``dataset`` exactly once over the ranks (rank r takes images r, r + world_size, ...).

    The loader has its own generator, so creating its iterator draws nothing from the global RNG (exact resume)."""
    shard = Subset(dataset, list(range(ctx.rank, len(dataset), ctx.world_size)))
    return DataLoader(
        shard,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=detection_collate,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator(),
    )


def encode_masks(masks: torch.Tensor, threshold: float = 0.5) -> list[dict[str, Any]]:
    """COCO RLEs (``{"size": [H, W], "counts": str}``) of (n, H, W) or (n, 1, H, W) masks: probabilities are
    binarised at ``threshold`` (mmdet's ``mask_thr_binary``: ``>= threshold``), uint8/bool masks taken as they are."""
    if masks.dim() == 4:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"encode_masks: expected (n, H, W) or (n, 1, H, W) masks, got shape {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return []
    binary = masks >= threshold if masks.is_floating_point() else masks.bool()
    rles = mask_utils.encode(np.asfortranarray(binary.permute(1, 2, 0).cpu().numpy().astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def coco_detections(
    outputs: Sequence[dict[str, torch.Tensor]],
    targets: Sequence[dict[str, Any]],
    cat_ids: Sequence[int],
    label_offset: int = 0,
    masks: bool = False,
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """COCO results (xywh boxes, COCO category ids) of a batch of torchvision-style outputs (xyxy boxes, labels
    counted from ``label_offset``). With ``masks``, each result also holds ``"segmentation"``: the RLE of the
    output's ``"masks"`` (Mask R-CNN's pasted (n, 1, H, W) probabilities, binarised at ``mask_threshold``)."""
    detections = []
    for output, target in zip(outputs, targets):
        boxes = output["boxes"].float().cpu()
        boxes[:, 2:] -= boxes[:, :2]
        cats = [cat_ids[int(label) - label_offset] for label in output["labels"].cpu()]
        results = [
            {"image_id": target["image_id"], "category_id": c, "bbox": b, "score": s}
            for b, s, c in zip(boxes.tolist(), output["scores"].float().cpu().tolist(), cats)
        ]
        if masks:
            if "masks" not in output:
                raise ValueError("coco_detections(masks=True): the model output has no 'masks'")
            for result, rle in zip(results, encode_masks(output["masks"], mask_threshold), strict=True):
                result["segmentation"] = rle
        detections += results
    return detections


def evaluate_detections(
    detections: list[dict[str, Any]], coco: COCO, ctx: DistContext, segm: bool = False
) -> dict[str, Any]:
    """Gather every rank's detections, score them once with pycocotools on rank 0 and give every rank the result
    (bbox metrics as fractions, as :func:`shared.metrics.coco_evaluate`, plus ``num_detections``). With ``segm``
    (detections from ``coco_detections(..., masks=True)``), ``"segm"`` holds the mask metrics in the same form;
    the ground truth is copied for them, so ``coco`` is left unchanged."""
    if ctx.distributed:
        detections = [d for part in all_gather_objects(detections) for d in part]
    result: list[Any] = [None]
    if ctx.is_main:
        result[0] = coco_evaluate(coco, detections)
        if segm:
            result[0]["segm"] = coco_evaluate(coco.dataset, detections, iou_type="segm")
    if ctx.distributed:
        dist.broadcast_object_list(result, src=0)
    metrics = result[0]
    metrics["num_detections"] = len(detections)
    return metrics


def coco_summary(metrics: dict[str, Any], keys: Sequence[str] = COCO_METRIC_KEYS) -> str:
    """``AP 34.4  AP50 54.2 ...`` in percent, as the papers' tables (``n/a`` for a NaN entry)."""
    return "  ".join(f"{k} {100 * metrics[k]:.1f}" if metrics[k] == metrics[k] else f"{k} n/a" for k in keys)


def targets_to_device(
    images: list[torch.Tensor], targets: list[dict[str, Any]], device: torch.device
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """A detection batch (as :func:`detection_collate` gives it) on ``device``: the images and every tensor of the
    targets."""
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
    return images, targets


def init_fpn_mmdet(fpn: nn.Module) -> None:
    """mmdet's FPN initialisation (Xavier uniform weights, zero biases of every conv) rather than torchvision's
    ``kaiming_uniform_(a=1)``."""
    for m in fpn.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


class PyramidRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` with RoIAlign's ``aligned`` switch.

    ``aligned=True`` is mmcv's ``RoIAlign`` default, hence mmdetection 2.x's (the released detectors of MixTeacher
    and PVG): a box's corners are shifted by half a pixel before sampling (Detectron2's pixel model), and no minimum
    RoI size of one feature pixel is imposed. ``aligned=False`` is torchvision's, and then this module is torchvision's
    own. A RoI goes to level floor(4 + log2(sqrt(area) / 224) + 1e-6), clamped to the pyramid (torchvision's
    ``LevelMapper``; the same rule as mmdetection's ``finest_scale`` 56 for P2-P5); each level's scale is inferred
    from its size relative to the largest image of the batch, as torchvision does."""

    def __init__(
        self, featmap_names: list[str], output_size: int | tuple[int, int], sampling_ratio: int, aligned: bool = True
    ):
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.aligned = aligned

    def forward(
        self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        if not self.aligned:
            return super().forward(x, boxes, image_shapes)
        features = [v for k, v in x.items() if k in self.featmap_names]
        largest = max(h for h, _ in image_shapes)
        scales = [2.0 ** round(math.log2(f.shape[-2] / largest)) for f in features]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
        if len(features) == 1:
            levels = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
        else:
            k_min, k_max = -math.log2(scales[0]), -math.log2(scales[-1])
            size = torch.sqrt(torch.cat([(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) for b in boxes]))
            k = torch.floor(self.canonical_level + torch.log2(size / self.canonical_scale) + 1e-6)
            levels = k.clamp(min=k_min, max=k_max).to(torch.int64) - int(k_min)
        out = rois.new_zeros((len(rois), features[0].shape[1], *self.output_size), dtype=features[0].dtype)
        for level, (feature, scale) in enumerate(zip(features, scales)):
            index = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[index], self.output_size, scale, self.sampling_ratio, aligned=True)
            out.index_put_((index,), pooled.to(out.dtype))
        return out


def retinanet_matches(
    matcher: Any, targets: list[dict[str, torch.Tensor]], anchors: list[torch.Tensor]
) -> list[torch.Tensor]:
    """torchvision RetinaNet's anchor assignment: per image, each anchor's target index, -1 for background, -2 between
    the thresholds (ignored); every anchor is background in an image without boxes."""
    matched = []
    for anchors_i, target in zip(anchors, targets):
        if target["boxes"].numel() == 0:
            matched.append(torch.full((len(anchors_i),), -1, dtype=torch.int64, device=anchors_i.device))
        else:
            matched.append(matcher(box_iou(target["boxes"], anchors_i)))
    return matched


def retinanet_class_loss_sums(
    targets: list[dict[str, torch.Tensor]],
    cls_logits: torch.Tensor,
    matched_idxs: list[torch.Tensor],
    anchor_weights: list[torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], list[int]]:
    """Per image, the sigmoid focal loss (alpha 0.25, gamma 2) summed over the anchors that are not ignored, each
    anchor's loss times its ``anchor_weights`` entry when given, and the number of positives."""
    sums, counts = [], []
    for i, (target, logits, matched) in enumerate(zip(targets, cls_logits, matched_idxs)):
        foreground = matched >= 0
        goal = torch.zeros_like(logits)
        goal[foreground, target["labels"][matched[foreground]]] = 1.0
        valid = matched != -2
        if anchor_weights is None:
            sums.append(sigmoid_focal_loss(logits[valid], goal[valid], reduction="sum"))
        else:
            per_anchor = sigmoid_focal_loss(logits, goal, reduction="none").sum(-1) * anchor_weights[i]
            sums.append(per_anchor[valid].sum())
        counts.append(int(foreground.sum()))
    return sums, counts


def retinanet_box_loss_sums(
    targets: list[dict[str, torch.Tensor]],
    regression: torch.Tensor,
    anchors: list[torch.Tensor],
    matched_idxs: list[torch.Tensor],
    box_coder: Any,
) -> tuple[list[torch.Tensor], list[int]]:
    """Per image, the L1 loss summed over the positive anchors' encoded box deltas (RetinaNet's ``L1Loss`` in
    mmdetection, torchvision's default), and the number of positives."""
    sums, counts = [], []
    for target, regression_i, anchors_i, matched in zip(targets, regression, anchors, matched_idxs):
        foreground = torch.where(matched >= 0)[0]
        goal = box_coder.encode_single(target["boxes"][matched[foreground]], anchors_i[foreground])
        sums.append(nn.functional.l1_loss(regression_i[foreground], goal, reduction="sum"))
        counts.append(foreground.numel())
    return sums, counts


def normalize_loss(sums: Sequence[torch.Tensor], counts: Sequence[int], normalization: str) -> torch.Tensor:
    """Per-image loss sums normalised by the positives: ``image`` (torchvision's RetinaNet) averages sum_i / max(1,
    n_i) over the images; ``batch`` (mmdetection's ``avg_factor``, per process) is sum_i sum_i / sum_i max(1, n_i)."""
    if normalization == "image":
        return sum(s / max(1, n) for s, n in zip(sums, counts)) / len(sums)
    if normalization == "batch":
        return sum(sums) / sum(max(1, n) for n in counts)
    raise ValueError(f"loss normalization must be 'image' or 'batch', got {normalization!r}")


class RetinaNetLossNorm(RetinaNet):
    """torchvision's RetinaNet (sigmoid focal classification, L1 box regression) with the normalisation of its losses
    chosen by ``loss_normalization``: ``image`` is torchvision's own (bitwise), ``batch`` mmdetection's (the summed
    losses of the process's images over their summed positives, each image counting at least one). A subclass may
    weight each anchor's classification loss (:meth:`anchor_weights`)."""

    def __init__(self, *args: Any, loss_normalization: str = "image", **kwargs: Any):
        super().__init__(*args, **kwargs)
        if loss_normalization not in ("image", "batch"):
            raise ValueError(f"loss_normalization must be 'image' or 'batch', got {loss_normalization!r}")
        loss_type = getattr(self.head.regression_head, "_loss_type", "l1")
        if loss_type != "l1":
            raise ValueError(f"RetinaNetLossNorm computes the L1 box loss; the regression head asks for {loss_type!r}")
        self.loss_normalization = loss_normalization

    def anchor_weights(
        self, targets: list[dict], head_outputs: dict[str, torch.Tensor], anchors: list[torch.Tensor], matched: list
    ) -> list[torch.Tensor] | None:
        """Per image, a weight per anchor on its classification loss (None: torchvision's unweighted loss)."""
        return None

    def compute_loss(self, targets, head_outputs, anchors):
        matched = retinanet_matches(self.proposal_matcher, targets, anchors)
        weights = self.anchor_weights(targets, head_outputs, anchors, matched)
        cls_sums, counts = retinanet_class_loss_sums(targets, head_outputs["cls_logits"], matched, weights)
        box_coder = self.head.regression_head.box_coder
        box_sums, _ = retinanet_box_loss_sums(targets, head_outputs["bbox_regression"], anchors, matched, box_coder)
        return {
            "classification": normalize_loss(cls_sums, counts, self.loss_normalization),
            "bbox_regression": normalize_loss(box_sums, counts, self.loss_normalization),
        }


class FrozenBN(FrozenBatchNorm2d):
    """torchvision's ``FrozenBatchNorm2d`` (same buffers, same state-dict keys, bitwise the same output and input
    gradient) computed in place: ``x * scale + shift`` allocates two activation-sized tensors, this none. With
    MobileNetV2's 6x expanded activations at 800 x 1216 the frozen BNs were ~1/8 of a training step's time, and
    scaling in place takes ~1/6 off the teacher's pseudo-labelling (mixteacher README, Performance).

    The input must be a tensor nothing else reads afterwards: in every backbone here it is the output of the
    convolution before it, which the convolution's backward does not need (autograd would refuse the in-place
    write otherwise)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + self.eps).rsqrt()
        shift = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
        if x.dtype != scale.dtype:  # autocast: promoted to float32, as torchvision's is
            return (x * scale).add_(shift)
        return x.mul_(scale).add_(shift)


def freeze_modules(modules: Sequence[nn.Module], norm_eval_in: nn.Module | None = None) -> None:
    """mmdet's ``frozen_stages``: each of ``modules`` in eval mode with ``requires_grad=False``; then, with
    ``norm_eval_in`` (mmdet's ``norm_eval``), every BatchNorm inside it in eval mode."""
    for module in modules:
        module.eval()
        for param in module.parameters():
            param.requires_grad = False
    if norm_eval_in is not None:
        for m in norm_eval_in.modules():
            if isinstance(m, _BatchNorm):
                m.eval()


def check_checkpoint_categories(checkpoint: Mapping[str, Any], path: str | Path, val_set: CocoDetection) -> None:
    """The checkpoint's category ids (``checkpoint['categories']['ids']``, in label order) must be the evaluation
    annotations' ones; a checkpoint without them is not checked."""
    stored_ids = checkpoint.get("categories", {}).get("ids")
    if stored_ids is not None and list(stored_ids) != val_set.cat_ids:
        raise ValueError(
            f"{path} was trained on category ids {stored_ids}, but {val_set.annotation_file} has {val_set.cat_ids}"
        )
