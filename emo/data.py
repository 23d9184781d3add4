"""Data of the EMO experiments: the COCO 2017 splits of the RetinaNet and SSDLite recipes (read by
``shared.detection``; :class:`SSDAugmentedCoco` adds SSD's augmentation) and ADE20K for DeepLabv3 / PSPNet
(:class:`ADE20KSegmentation`, with the synthetic scene set of :func:`write_synthetic_ade20k`).

ImageNet classification data is read by ``shared.classification`` (torchvision ``ImageFolder`` on
``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG`` with timm's transforms;
``shared.augment`` keeps the recipe's RandAugment working on current Pillow).

COCO layout (``python -m shared.datasets info coco2017``)::

    <root>/train2017/*.jpg
    <root>/val2017/*.jpg
    <root>/annotations/instances_train2017.json
    <root>/annotations/instances_val2017.json

The reader (:class:`shared.detection.CocoDetection`) is configured as mmdet 2.x's ``CocoDataset``, the framework of
the official EMO detection code: category ids are mapped to contiguous labels 0..K-1 in sorted id order (RetinaNet
has no background class); crowd boxes, ``ignore`` boxes, boxes without overlap with the image and boxes narrower or
lower than 1 pixel are dropped; the training set leaves out images without a usable box and images smaller than 32
pixels, and flips horizontally with probability ``hflip``. Images are float tensors in [0, 1]: resizing to
1333 x 800, normalisation and padding happen inside torchvision's ``GeneralizedRCNNTransform``. SSDLite reads the
same splits with labels 1..K (0 is SSD's background class).

ADE20K layout (``python -m shared.datasets info ade20k``)::

    <root>/ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_*.jpg
    <root>/ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_*.png

Labels follow mmseg's reduce-zero-label convention (:func:`reduce_zero_label`): 0 (other / unlabelled) is ignored
(255) and 1..150 become the classes 0..149.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from emo.config import CocoDataConfig, SegDataConfig, SSDLiteDataConfig
from shared.detection import CocoDetection

__all__ = [
    'MIN_TRAIN_IMAGE_SIZE',
    'ADE20KSegmentation',
    'IterationSampler',
    'SSDAugmentedCoco',
    'SegTrainTransform',
    'build_detection_datasets',
    'build_segmentation_datasets',
    'build_ssdlite_datasets',
    'coco_split',
    'reduce_zero_label',
    'write_synthetic_ade20k',
]

#: mmdet's ``min_size=32`` of the RetinaNet configs: smaller training images are left out.
MIN_TRAIN_IMAGE_SIZE = 32


def coco_split(
    image_dir: str | Path, annotation_file: str | Path, train: bool = False, hflip: float = 0.0, label_offset: int = 0
) -> CocoDetection:
    """One COCO split read as the official detection configs read it (see the module docstring).

    Items are ``(image, target)``: a float (3, H, W) tensor in [0, 1] and ``{'boxes': (n, 4) xyxy float32,
    'labels': (n,) int64 in [label_offset, label_offset + K), 'image_id': int}`` (``label_offset`` 0 for RetinaNet,
    1 for SSD, whose label 0 is the background).
    """
    return CocoDetection(
        image_dir,
        annotation_file,
        train=train,
        label_offset=label_offset,
        min_size=MIN_TRAIN_IMAGE_SIZE,
        drop_outside=True,
        hflip=hflip,
    )


def build_detection_datasets(
    cfg: CocoDataConfig, label_offset: int = 0, hflip: bool = True
) -> tuple[CocoDetection, CocoDetection]:
    """Train and val sets in the COCO layout (the synthetic set is written first when ``cfg.synthetic``).

    ``hflip=False`` leaves the flip to a later augmentation (:class:`SSDAugmentedCoco`)."""
    root = cfg.coco_root()
    train = coco_split(
        root / cfg.train_images,
        root / cfg.train_annotations,
        train=True,
        hflip=cfg.hflip if hflip else 0.0,
        label_offset=label_offset,
    )
    val = coco_split(root / cfg.val_images, root / cfg.val_annotations, train=False, label_offset=label_offset)
    if train.cat_ids != val.cat_ids:
        raise ValueError(f'categories differ between {train.annotation_file} and {val.annotation_file}')
    if len(train) == 0:
        raise ValueError(f'no training image with a usable box in {train.annotation_file}')
    return train, val


def build_ssdlite_datasets(cfg: SSDLiteDataConfig) -> tuple[SSDAugmentedCoco, CocoDetection]:
    """SSDLite's training set (labels from 1, SSD augmentation, repeated) and val set (labels from 1)."""
    train, val = build_detection_datasets(cfg, label_offset=1, hflip=False)
    return SSDAugmentedCoco(train, cfg), val


class SSDAugmentedCoco(Dataset):
    """A COCO training split (labels from 1) with the SSD augmentation of the configs, repeated ``repeat_times``.

    Per image: mmdet ``Expand`` (zoom out by a ratio in ``expand_ratio`` onto a canvas of the ImageNet mean colour,
    probability ``expand_prob``) -> ``MinIoURandomCrop`` (a crop whose IoU with every kept box reaches a random
    choice of ``min_ious`` or the whole image, sides >= ``min_crop_size``, aspect 1/2 to 2) -> horizontal flip
    (``hflip``) -> photometric distortion (brightness, contrast, saturation, hue, channel order; each with
    probability 1/2). Boxes left without area are dropped. The resize to 320 x 320 happens inside the model.
    """

    def __init__(self, coco: CocoDetection, cfg: SSDLiteDataConfig):
        if coco.label_offset != 1:
            raise ValueError('SSDLite needs labels from 1 (0 is the background): read the split with label_offset=1')
        self.coco = coco
        self.repeat_times = cfg.repeat_times
        steps: list[Any] = []
        if cfg.expand_prob > 0:
            fill = {tv_tensors.Image: [0.485, 0.456, 0.406], 'others': 0}
            steps.append(v2.RandomZoomOut(fill=fill, side_range=tuple(cfg.expand_ratio), p=cfg.expand_prob))
        if cfg.min_ious:
            # an option >= 1 keeps the image uncropped (mmdet's mode 1)
            steps.append(v2.RandomIoUCrop(min_scale=cfg.min_crop_size, sampler_options=[*cfg.min_ious, 2.0]))
        if cfg.hflip > 0:
            steps.append(v2.RandomHorizontalFlip(cfg.hflip))
        if cfg.photometric:
            steps.append(v2.RandomPhotometricDistort(p=0.5))
        steps.append(v2.SanitizeBoundingBoxes(min_size=1.0))
        self.transform = v2.Compose(steps)

    @property
    def cat_ids(self) -> list[int]:
        return self.coco.cat_ids

    @property
    def category_names(self) -> list[str]:
        return self.coco.category_names

    @property
    def num_classes(self) -> int:
        return self.coco.num_classes

    def __len__(self) -> int:
        return len(self.coco) * self.repeat_times

    def aspect_groups(self) -> list[int]:
        """One group: every image becomes a 320 x 320 square."""
        return [0] * len(self)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, boxes, labels, image_id = self.coco.load(index % len(self.coco))
        image = tv_tensors.Image(image)
        boxes = tv_tensors.BoundingBoxes(boxes, format='XYXY', canvas_size=tuple(image.shape[-2:]))
        image, target = self.transform(image, {'boxes': boxes, 'labels': labels})
        return image.as_subclass(torch.Tensor), {
            'boxes': target['boxes'].as_subclass(torch.Tensor),
            'labels': target['labels'],
            'image_id': image_id,
        }


# --- ADE20K semantic segmentation (DeepLabv3 / PSPNet) ----------------------------------------------------------------

ADE20K_DIR = 'ADEChallengeData2016'
ADE20K_SPLITS = {'train': 'training', 'val': 'validation'}
IGNORE_INDEX = 255


def reduce_zero_label(label: torch.Tensor) -> torch.Tensor:
    """mmseg's ``reduce_zero_label=True``: ADE20K's 0 ('other' / unlabelled) -> ignore 255, 1..150 -> 0..149."""
    label = label.long()
    return torch.where(label == 0, torch.full_like(label, IGNORE_INDEX), label - 1)


class ADE20KSegmentation(Dataset):
    """One split of ADE20K in the official ``ADEChallengeData2016`` layout (``python -m shared.datasets info ade20k``).

    ``<root>/ADEChallengeData2016/images/{training,validation}/*.jpg`` with the label png of the same stem under
    ``annotations/{training,validation}/``. Labels are read with PIL and reduced (:func:`reduce_zero_label`), so
    classes are 0..149 and 255 is ignored. Items are ``(image, label, index)``: a float (3, H, W) tensor in [0, 1],
    an int64 (H, W) label map, and the item's index (``transform`` may change the first two). With ``transform``, the
    dataset is indexed by ``(index, seed)`` pairs (:class:`IterationSampler`) and ``transform(image, label,
    generator)`` draws its randomness from a generator seeded with ``seed``.
    """

    def __init__(self, root: str | Path, split: str = 'train', transform: Any = None):
        from shared.datasets import require_dataset

        if split not in ADE20K_SPLITS:
            raise ValueError(f'unknown ADE20K split {split!r}, expected one of {sorted(ADE20K_SPLITS)}')
        base = require_dataset('ade20k', root) / ADE20K_DIR
        self.image_dir = base / 'images' / ADE20K_SPLITS[split]
        self.label_dir = base / 'annotations' / ADE20K_SPLITS[split]
        self.images = sorted(self.image_dir.glob('*.jpg'))
        if not self.images:
            raise FileNotFoundError(f'no *.jpg image in {self.image_dir} (python -m shared.datasets info ade20k)')
        self.labels = [self.label_dir / f'{p.stem}.png' for p in self.images]
        missing = [p for p in self.labels if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f'{len(missing)} label png(s) missing, first: {missing[0]} (same stem as the image)'
            )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, reduced label) without augmentation; a file PIL cannot read is an error naming it."""
        from PIL import Image

        try:
            with Image.open(self.images[index]) as im:
                image = torch.from_numpy(np.asarray(im.convert('RGB')).copy()).permute(2, 0, 1).float() / 255
            with Image.open(self.labels[index]) as lab:
                if lab.mode not in ('L', 'P'):
                    raise ValueError(f'{self.labels[index]}: label png must be 8-bit (mode L or P), got {lab.mode}')
                label = torch.from_numpy(np.asarray(lab).copy())
        except OSError as e:
            raise OSError(f'cannot read {self.images[index]} or {self.labels[index]}: {e}') from e
        if label.shape != image.shape[-2:]:
            raise ValueError(f'{self.labels[index]}: label {tuple(label.shape)} vs image {tuple(image.shape[-2:])}')
        return image, reduce_zero_label(label)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.load(index)
        if self.transform is not None:
            if seed is None:
                raise ValueError('a transformed ADE20K set is indexed by (index, seed) pairs (IterationSampler)')
            image, label = self.transform(image, label, torch.Generator().manual_seed(seed))
        return image, label, index


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=gen).item()


def _coin(gen: torch.Generator, p: float = 0.5) -> bool:
    return torch.rand((), generator=gen).item() < p


class SegTrainTransform:
    """mmseg's ADE20K training pipeline: random rescale (keep ratio, ``scale`` x a ratio in ``ratio_range``), random
    crop with ``cat_max_ratio``, flip, photometric distortion, padding to the crop size (image with the ImageNet
    mean, which the model's normalisation maps to 0 as mmseg's pad after ``Normalize``; label with 255)."""

    def __init__(self, cfg: SegDataConfig):
        self.scale, self.ratio_range = tuple(cfg.scale), tuple(cfg.ratio_range)
        self.crop, self.cat_max_ratio = cfg.crop_size, cfg.cat_max_ratio
        self.hflip, self.photometric = cfg.hflip, cfg.photometric

    def _crop_box(self, label: torch.Tensor, gen: torch.Generator) -> tuple[int, int]:
        h, w = label.shape
        top = left = 0
        for _ in range(10):  # mmseg RandomCrop: up to 10 tries for a crop no single class dominates
            top = int(torch.randint(0, max(h - self.crop, 0) + 1, (), generator=gen))
            left = int(torch.randint(0, max(w - self.crop, 0) + 1, (), generator=gen))
            if self.cat_max_ratio >= 1:
                break
            patch = label[top : top + self.crop, left : left + self.crop]
            counts = torch.bincount(patch[patch != IGNORE_INDEX].flatten())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return top, left

    def _distort(self, image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """mmseg ``PhotoMetricDistortion``: brightness +-32, contrast x[0.5, 1.5] (before or after the colour
        steps), saturation x[0.5, 1.5], hue +-18 degrees; each with probability 1/2."""
        from torchvision.transforms.v2 import functional as TF

        if _coin(gen):
            image = (image + _uniform(gen, -32, 32) / 255).clamp(0, 1)
        contrast_first = _coin(gen)
        alpha = _uniform(gen, 0.5, 1.5) if _coin(gen) else None
        if contrast_first and alpha is not None:
            image = (image * alpha).clamp(0, 1)
        if _coin(gen):
            image = TF.adjust_saturation(image, _uniform(gen, 0.5, 1.5))
        if _coin(gen):
            image = TF.adjust_hue(image, _uniform(gen, -18, 18) / 360)
        if not contrast_first and alpha is not None:
            image = (image * alpha).clamp(0, 1)
        return image

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch.nn.functional as F

        h, w = label.shape
        ratio = _uniform(gen, *self.ratio_range)
        factor = min(self.scale[0] * ratio / max(h, w), self.scale[1] * ratio / min(h, w))
        size = (max(int(h * factor + 0.5), 1), max(int(w * factor + 0.5), 1))
        image = F.interpolate(image[None], size=size, mode='bilinear', align_corners=False)[0]
        label = F.interpolate(label[None, None].float(), size=size, mode='nearest')[0, 0].long()
        top, left = self._crop_box(label, gen)
        image = image[:, top : top + self.crop, left : left + self.crop]
        label = label[top : top + self.crop, left : left + self.crop]
        if _coin(gen, self.hflip):
            image, label = image.flip(-1), label.flip(-1)
        if self.photometric:
            image = self._distort(image, gen)
        pad_h, pad_w = self.crop - label.shape[0], self.crop - label.shape[1]
        if pad_h > 0 or pad_w > 0:
            mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
            canvas = mean.expand(3, self.crop, self.crop).clone()
            canvas[:, : image.shape[1], : image.shape[2]] = image
            padded = torch.full((self.crop, self.crop), IGNORE_INDEX, dtype=label.dtype)
            padded[: label.shape[0], : label.shape[1]] = label
            image, label = canvas, padded
        return image.contiguous(), label.contiguous()


class IterationSampler(torch.utils.data.Sampler):
    """``(index, seed)`` pairs for iterations ``start_iter`` ... ``max_iters - 1`` of an iteration-based run.

    Global sample g (iteration ``g // global_batch``) is item ``perm_e[g % n]`` of the permutation of epoch
    ``e = g // n`` (a generator seeded with ``seed + e``), with the augmentation seed ``seed * 1_000_003 + g``. Rank r
    of ``world_size`` takes its ``batch_size`` contiguous samples of each iteration. The stream depends only on the
    iteration, so a resumed run sees the same data (and augmentation) as an uninterrupted one, whatever the workers.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        max_iters: int,
        start_iter: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if num_items <= 0:
            raise ValueError('IterationSampler: empty dataset')
        self.n, self.batch_size, self.max_iters, self.start_iter = num_items, batch_size, max_iters, start_iter
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def __len__(self) -> int:
        return max(self.max_iters - self.start_iter, 0) * self.batch_size

    def __iter__(self):
        global_batch = self.batch_size * self.world_size
        epoch, perm = -1, None
        for it in range(self.start_iter, self.max_iters):
            for j in range(self.batch_size):
                g = it * global_batch + self.rank * self.batch_size + j
                if g // self.n != epoch:
                    epoch = g // self.n
                    perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
                yield perm[g % self.n], self.seed * 1_000_003 + g


def build_segmentation_datasets(cfg: SegDataConfig) -> tuple[ADE20KSegmentation, ADE20KSegmentation]:
    """ADE20K train (with :class:`SegTrainTransform`) and val sets; the synthetic set is written first when
    ``cfg.synthetic``."""
    if cfg.synthetic:
        from shared.synthetic import synthetic_root

        root = synthetic_root() / (
            f'ade20k_n{cfg.synthetic_train}_v{cfg.synthetic_val}_s{cfg.synthetic_image_size}_c{cfg.synthetic_classes}'
        )
        write_synthetic_ade20k(
            root, cfg.synthetic_train, cfg.synthetic_val, cfg.synthetic_image_size, cfg.synthetic_classes
        )
    else:
        root = Path(cfg.root)
    return ADE20KSegmentation(root, 'train', SegTrainTransform(cfg)), ADE20KSegmentation(root, 'val')


def _draw_scene(rng: np.random.Generator, height: int, width: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: a 'sky' / 'ground' split, then rectangles and ellipses of object classes, each class with its own
    colour and texture frequency; 2-pixel outlines get the unlabelled value 0. Labels are 1..num_classes."""
    palette = np.random.default_rng(12345).integers(30, 226, size=(num_classes + 1, 3))
    label = np.zeros((height, width), dtype=np.uint8)
    horizon = int(rng.uniform(0.3, 0.6) * height)
    label[:horizon], label[horizon:] = 1, 2
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(int(rng.integers(2, 6))):
        cls = int(rng.integers(3, num_classes + 1))
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.1, 0.9) * width
        ry, rx = rng.uniform(0.08, 0.25) * height, rng.uniform(0.08, 0.25) * width
        if rng.random() < 0.5:
            inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            edge = inside & ((np.abs(yy - cy) > ry - 2) | (np.abs(xx - cx) > rx - 2))
        else:
            r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
            inside, edge = r <= 1, (r <= 1) & (r > (1 - 2 / min(ry, rx)) ** 2)
        label[inside] = cls
        label[edge] = 0
    colour = palette[label].astype(np.float32)
    texture = np.sin((xx + yy) * (0.2 + 0.05 * label) + rng.uniform(0, 6.28))[..., None] * 18
    image = np.clip(colour + texture + rng.normal(0, 10, colour.shape), 0, 255).astype(np.uint8)
    return image, label


def write_synthetic_ade20k(
    root: str | Path,
    num_train: int = 48,
    num_val: int = 12,
    image_size: int = 128,
    num_classes: int = 8,
    seed: int = 0,
) -> Path:
    """Write a synthetic scene-parsing set in the official layout under ``root/ADEChallengeData2016`` (jpg images,
    8-bit png labels with 0 = unlabelled and 1..num_classes the classes, ADE20K's file names); deterministic,
    cached (a matching call returns at once). Images are ``image_size`` high and 1 to 1.5 times as wide."""
    from PIL import Image

    from shared.synthetic import write_cached

    if num_classes < 3 or num_classes > 254:
        raise ValueError(f'num_classes must be in [3, 254], got {num_classes}')

    def write(folder: Path) -> None:
        rng = np.random.default_rng(seed)
        for split, count, prefix in (('training', num_train, 'ADE_train'), ('validation', num_val, 'ADE_val')):
            image_dir = folder / ADE20K_DIR / 'images' / split
            label_dir = folder / ADE20K_DIR / 'annotations' / split
            image_dir.mkdir(parents=True)
            label_dir.mkdir(parents=True)
            for i in range(1, count + 1):
                width = int(image_size * rng.uniform(1.0, 1.5))
                image, label = _draw_scene(rng, image_size, width, num_classes)
                Image.fromarray(image).save(image_dir / f'{prefix}_{i:08d}.jpg', quality=95)
                Image.fromarray(label, mode='L').save(label_dir / f'{prefix}_{i:08d}.png')
        (folder / ADE20K_DIR / 'objectInfo150.txt').write_text(
            'Idx\tName\n' + ''.join(f'{c}\tsynthetic_class_{c}\n' for c in range(1, num_classes + 1))
        )

    params = {
        'generator': 'emo.synthetic_ade20k',
        'version': 1,
        'train': num_train,
        'val': num_val,
        'size': image_size,
        'classes': num_classes,
        'seed': seed,
    }
    return write_cached(root, params, write)
