"""Data of the EMO experiments: the COCO 2017 reader and mmdet's aspect-ratio grouped sampler for RetinaNet.

ImageNet classification data is read by ``shared.classification`` (torchvision ``ImageFolder`` on
``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG`` with timm's transforms;
``shared.augment`` keeps the recipe's RandAugment working on current Pillow).

COCO layout (``python -m shared.datasets info coco2017``)::

    <root>/train2017/*.jpg
    <root>/val2017/*.jpg
    <root>/annotations/instances_train2017.json
    <root>/annotations/instances_val2017.json

The reader follows mmdet 2.x's ``CocoDataset`` (the framework of the official EMO detection code): category ids are
mapped to contiguous labels 0..K-1 in sorted id order; crowd boxes, ``ignore`` boxes, boxes without overlap with the
image and boxes narrower or lower than 1 pixel are dropped; the training set leaves out images without a usable box
and images smaller than 32 pixels. Images are returned as float tensors in [0, 1]: resizing to 1333 x 800,
normalisation and padding happen inside torchvision's ``GeneralizedRCNNTransform``.
"""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset, Sampler
from torchvision.transforms.functional import pil_to_tensor

__all__ = [
    'COCO_LAYOUT',
    'CocoDetectionDataset',
    'GroupedDistributedSampler',
    'detection_collate',
]

COCO_LAYOUT = ('<root>/train2017/*.jpg, <root>/val2017/*.jpg, <root>/annotations/instances_train2017.json, '
               '<root>/annotations/instances_val2017.json')


def _missing(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f'{what} not found: {path}. Expected the COCO 2017 layout {COCO_LAYOUT} (see `python -m shared.datasets '
        f'info coco2017`), or set data.synthetic=true for the embedded synthetic set.')


class CocoDetectionDataset(Dataset):
    """Images and boxes of one COCO split (``instances_*.json`` + its image folder).

    Args:
        image_dir: Folder of the split's images (``<root>/val2017``).
        annotation_file: The split's ``instances_*.json``.
        train: Training split: leave out images without a usable box or smaller than ``min_size`` (mmdet's
            ``filter_empty_gt`` and ``min_size=32``); evaluation keeps every image.
        hflip: Probability of a horizontal flip (training augmentation; mmdet's ``RandomFlip(flip_ratio=0.5)``).
        min_size: Smallest image side kept for training.

    Items are ``(image, target)``: a float (3, H, W) tensor in [0, 1] and ``{'boxes': (n, 4) xyxy float32,
    'labels': (n,) int64 in [0, K), 'image_id': int}``.
    """

    def __init__(self, image_dir: str | Path, annotation_file: str | Path, train: bool = False, hflip: float = 0.0,
                 min_size: int = 32):
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        if not self.annotation_file.is_file():
            raise _missing(self.annotation_file, 'COCO annotation file')
        if not self.image_dir.is_dir():
            raise _missing(self.image_dir, 'COCO image folder')
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its loading progress
            try:
                self.coco = COCO(str(self.annotation_file))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f'{self.annotation_file} is not a COCO instances file: {err!r}') from err
        self.cat_ids = sorted(self.coco.getCatIds())
        self.category_names = [self.coco.cats[c]['name'] for c in self.cat_ids]
        self.label_of = {cat_id: label for label, cat_id in enumerate(self.cat_ids)}
        self.train = train
        self.hflip = hflip
        ids = sorted(self.coco.getImgIds())
        if train:
            ids = [i for i in ids if min(self.coco.imgs[i]['width'], self.coco.imgs[i]['height']) >= min_size
                   and len(self._boxes(i)[0]) > 0]
        self.ids = ids

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def aspect_groups(self) -> list[int]:
        """1 for landscape images (width > height), 0 otherwise: mmdet's grouping flag."""
        return [int(self.coco.imgs[i]['width'] > self.coco.imgs[i]['height']) for i in self.ids]

    def _boxes(self, image_id: int) -> tuple[list[list[float]], list[int]]:
        info = self.coco.imgs[image_id]
        width, height = info['width'], info['height']
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get('ignore', False) or ann.get('iscrowd', 0):
                continue
            x, y, w, h = ann['bbox']
            overlap_w = max(0.0, min(x + w, width) - max(x, 0.0))
            overlap_h = max(0.0, min(y + h, height) - max(y, 0.0))
            if overlap_w * overlap_h == 0 or ann.get('area', w * h) <= 0 or w < 1 or h < 1:
                continue
            if ann['category_id'] not in self.label_of:
                raise ValueError(f"{self.annotation_file}: annotation {ann.get('id')} has category_id "
                                 f"{ann['category_id']}, which is not in 'categories'")
            boxes.append([x, y, x + w, y + h])
            labels.append(self.label_of[ann['category_id']])
        return boxes, labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info['file_name']
        try:
            with Image.open(path) as img:
                image = img.convert('RGB')
        except (OSError, ValueError) as err:
            raise RuntimeError(f'cannot read image {path}: {err}') from err
        if image.size != (info['width'], info['height']):
            raise ValueError(f"{path} is {image.size[0]}x{image.size[1]} but {self.annotation_file} says "
                             f"{info['width']}x{info['height']}")
        tensor = pil_to_tensor(image).float().div_(255)
        boxes_list, labels = self._boxes(image_id)
        boxes = torch.tensor(boxes_list, dtype=torch.float32).reshape(-1, 4)
        if self.train and self.hflip > 0 and torch.rand(()).item() < self.hflip:
            tensor = tensor.flip(-1)
            boxes = torch.stack([info['width'] - boxes[:, 2], boxes[:, 1], info['width'] - boxes[:, 0], boxes[:, 3]],
                                dim=1)
        return tensor, {'boxes': boxes, 'labels': torch.tensor(labels, dtype=torch.int64), 'image_id': image_id}


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

    def __init__(self, groups: Sequence[int], samples_per_gpu: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0):
        if not groups:
            raise ValueError('GroupedDistributedSampler: empty dataset')
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
        return iter(indices[offset:offset + self.num_samples])
