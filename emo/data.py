"""Data of the EMO experiments: the COCO 2017 splits of the RetinaNet recipe, read by ``shared.detection``.

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
1333 x 800, normalisation and padding happen inside torchvision's ``GeneralizedRCNNTransform``.
"""

from __future__ import annotations

from pathlib import Path

from emo.config import DetDataConfig
from shared.detection import CocoDetection

__all__ = ['MIN_TRAIN_IMAGE_SIZE', 'build_detection_datasets', 'coco_split']

#: mmdet's ``min_size=32`` of the RetinaNet configs: smaller training images are left out.
MIN_TRAIN_IMAGE_SIZE = 32


def coco_split(
    image_dir: str | Path, annotation_file: str | Path, train: bool = False, hflip: float = 0.0
) -> CocoDetection:
    """One COCO split read as the official RetinaNet configs read it (see the module docstring).

    Items are ``(image, target)``: a float (3, H, W) tensor in [0, 1] and ``{'boxes': (n, 4) xyxy float32,
    'labels': (n,) int64 in [0, K), 'image_id': int}``.
    """
    return CocoDetection(
        image_dir,
        annotation_file,
        train=train,
        label_offset=0,
        min_size=MIN_TRAIN_IMAGE_SIZE,
        drop_outside=True,
        hflip=hflip,
    )


def build_detection_datasets(cfg: DetDataConfig) -> tuple[CocoDetection, CocoDetection]:
    """Train and val sets in the COCO layout (the synthetic set is written first when ``cfg.synthetic``)."""
    if cfg.synthetic:
        from shared.synthetic import synthetic_root, write_coco_detection

        root = synthetic_root() / (
            f'coco_n{cfg.synthetic_train}_v{cfg.synthetic_val}_s{cfg.synthetic_image_size}_c{cfg.synthetic_categories}'
        )
        write_coco_detection(
            root,
            num_train=cfg.synthetic_train,
            num_val=cfg.synthetic_val,
            image_size=cfg.synthetic_image_size,
            num_categories=cfg.synthetic_categories,
            seed=0,
        )
    else:
        root = Path(cfg.root)
    train = coco_split(root / cfg.train_images, root / cfg.train_annotations, train=True, hflip=cfg.hflip)
    val = coco_split(root / cfg.val_images, root / cfg.val_annotations, train=False)
    if train.cat_ids != val.cat_ids:
        raise ValueError(f'categories differ between {train.annotation_file} and {val.annotation_file}')
    if len(train) == 0:
        raise ValueError(f'no training image with a usable box in {train.annotation_file}')
    return train, val
