"""Data of the MixTeacher experiments: COCO-format readers, the labeled/unlabeled batch sampler, VOC -> COCO json.

Layouts (``python -m shared.datasets info coco2017`` / ``info voc``)::

    COCO 2017                                        VOC07 + VOC12 (COCO-format jsons, as the released configs)
    <root>/train2017/*.jpg                           <root>/VOCdevkit/VOC2007/JPEGImages/*.jpg
    <root>/val2017/*.jpg                             <root>/VOCdevkit/VOC2012/JPEGImages/*.jpg
    <root>/unlabeled2017/*.jpg            (full)     <root>/annotations_json/voc07_trainval.json
    <root>/annotations/instances_{train,val}2017.json  <root>/annotations_json/voc12_trainval.json
    <root>/annotations/image_info_unlabeled2017.json   <root>/annotations_json/voc07_test.json
    <root>/annotations/semi_supervised/instances_train2017.{fold}@{percent}[-unlabeled].json

The partial splits are written by ``shared.datasets.coco_partial`` (STAC/SoftTeacher sampling) when missing; the
VOC jsons by :func:`voc_to_coco` (``python -m mixteacher.data voc --root <root>``). Category ids map to contiguous
labels 1..K in sorted id order (0 is background, torchvision's convention). Unlabeled sets are read from their
``images`` list only: annotations present in a ``-unlabeled`` split are never used.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from mixteacher.augment import ViewConfig, box_transform, make_view, transform_boxes
from mixteacher.config import PACKAGE, DataConfig
from shared.detection import CocoDetection, CocoImages, sharded_loader, synthetic_coco_root
from shared.distributed import DistContext

__all__ = [
    "BATCH_COUNTS",
    "COCO_LAYOUT",
    "VOC_CLASSES",
    "CocoDetection",
    "CocoImages",
    "SemiBatchSampler",
    "SemiSupervisedDataset",
    "build_datasets",
    "build_val_set",
    "partial_split_files",
    "released_labeled_count",
    "semi_collate",
    "val_loader",
    "voc_to_coco",
]

COCO_LAYOUT = (
    "<root>/train2017/*.jpg, <root>/val2017/*.jpg, <root>/annotations/instances_train2017.json, "
    "<root>/annotations/instances_val2017.json (+ unlabeled2017/ and annotations/"
    "image_info_unlabeled2017.json for COCO full; VOC: VOCdevkit/ + annotations_json/*.json)"
)
VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def _missing(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found: {path}. Expected the layout {COCO_LAYOUT}; see `python -m shared.datasets info "
        "coco2017` (or `info voc`), or set data.synthetic=true for the embedded synthetic set."
    )


class SemiSupervisedDataset(Dataset):
    """Labeled items (one labeled view) and unlabeled items (weak + strong view with the matrix weak -> strong),
    addressed by ``(kind, index, seed)`` from :class:`SemiBatchSampler`; augmentations are seeded by ``seed`` so a
    batch is a function of the iteration (exact resume, any number of workers)."""

    def __init__(
        self,
        labeled: CocoDetection,
        unlabeled: Sequence[CocoImages],
        labeled_view: ViewConfig,
        weak_view: ViewConfig,
        strong_view: ViewConfig,
    ):
        self.labeled = labeled
        self.unlabeled = list(unlabeled)
        self.offsets = [0]
        for part in self.unlabeled:
            self.offsets.append(self.offsets[-1] + len(part))
        self.labeled_view, self.weak_view, self.strong_view = labeled_view, weak_view, strong_view

    @property
    def num_unlabeled(self) -> int:
        return self.offsets[-1]

    def __len__(self) -> int:
        return len(self.labeled) + self.num_unlabeled

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        kind, index, seed = key
        g = torch.Generator().manual_seed(seed)
        if kind == 0:
            image, boxes, labels, image_id = self.labeled.load(index)
            view, matrix = make_view(image, self.labeled_view, g)
            boxes = transform_boxes(boxes, matrix, clip_to=tuple(view.shape[-2:])).float()
            keep = ((boxes[:, 2:] - boxes[:, :2]) >= 1).all(dim=1)
            return {
                "kind": 0,
                "image": view,
                "target": {"boxes": boxes[keep], "labels": labels[keep], "image_id": image_id},
            }
        part = next(i for i in range(len(self.unlabeled)) if index < self.offsets[i + 1])
        image, image_id = self.unlabeled[part].load(index - self.offsets[part])
        weak, m_weak = make_view(image, self.weak_view, g)
        strong, m_strong = make_view(image, self.strong_view, g)
        return {
            "kind": 1,
            "weak": weak,
            "strong": strong,
            "weak_to_strong": box_transform(m_weak, m_strong),
            "image_id": image_id,
        }


def semi_collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Lists of labeled images/targets and of weak/strong unlabeled views, (n, 3, 3) weak -> strong matrices."""
    labeled = [it for it in items if it["kind"] == 0]
    unlabeled = [it for it in items if it["kind"] == 1]
    return {
        "labeled_images": [it["image"] for it in labeled],
        "labeled_targets": [it["target"] for it in labeled],
        "weak_images": [it["weak"] for it in unlabeled],
        "strong_images": [it["strong"] for it in unlabeled],
        "weak_to_strong": torch.stack([it["weak_to_strong"] for it in unlabeled])
        if unlabeled
        else torch.zeros(0, 3, 3, dtype=torch.float64),
        "unlabeled_ids": [it["image_id"] for it in unlabeled],
    }


#: the rules of :class:`SemiBatchSampler` for the labeled count of a batch (``data.batch_counts``)
BATCH_COUNTS = ("released", "inner_binomial")


def released_labeled_count(drawn_labeled: int, batch_size: int) -> int:
    """The labeled count of a batch of ``batch_size`` in which ``drawn_labeled`` of the drawn kind indicators are
    labeled, as SoftTeacher's ``DistributedGroupSemiBalanceSampler(by_prob=True)`` computes it: no labeled item ->
    one, no unlabeled item -> one fewer labeled, then ``int(ratio * samples_per_gpu)`` of the normalised ratio."""
    counts = [drawn_labeled, batch_size - drawn_labeled]
    if counts[0] == 0:
        counts = [1, counts[1] - 1]
    elif counts[1] == 0:
        counts = [counts[0] - 1, 1]
    return int(counts[0] / sum(counts) * batch_size)  # float as released (sum(counts) == batch_size)


class SemiBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Per-GPU batches mixing labeled and unlabeled images (SoftTeacher's ``DistributedGroupSemiBalanceSampler``,
    ``by_prob=True``).

    Each iteration draws the labeled count of this rank's batch from the ``sample_ratio`` probabilities with at
    least one item of each kind. ``counts="released"`` (default) is the released rule: ``batch`` kind indicators
    drawn with probability ``p_labeled``, then a batch without a labeled (unlabeled) item gets one from the other
    kind, i.e. ``clamp(Binomial(batch, p_labeled), 1, batch - 1)``, including the released code's float step
    ``int(n / batch * batch)``, which truncates some counts of batches of 22 and more by one.
    ``counts="inner_binomial"`` is this package's earlier rule, ``1 + Binomial(batch - 2, p_labeled)`` (same mean
    for ``p = 1/2``, higher for ``p < 1/2``, lower for ``p > 1/2``; the evidence keeps it, README Fidelity note 6).
    With no unlabeled pool (or ratio 0) the batch is all labeled. Each kind is an endless stream of per-epoch
    permutations sharded over the ranks. Everything is a function of (``seed``, rank, iteration), so
    ``start_iter`` resumes exactly.

    Yields lists of ``(kind, index, augmentation seed)``, ``kind`` 0 = labeled, 1 = unlabeled.
    """

    def __init__(
        self,
        num_labeled: int,
        num_unlabeled: int,
        batch_size: int,
        sample_ratio: Sequence[float],
        num_iters: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        start_iter: int = 0,
        counts: str = "released",
    ):
        if num_labeled == 0:
            raise ValueError("no labeled image to train on")
        if counts not in BATCH_COUNTS:
            raise ValueError(f"counts must be one of {BATCH_COUNTS}, got {counts!r}")
        self.counts = counts
        self.sizes = (num_labeled, num_unlabeled)
        self.batch_size, self.num_iters, self.start_iter = batch_size, num_iters, start_iter
        self.world_size, self.rank, self.seed = world_size, rank, seed
        total = float(sum(sample_ratio))
        self.p_labeled = sample_ratio[0] / total if total > 0 else 1.0
        self.semi = num_unlabeled > 0 and self.p_labeled < 1.0 and batch_size >= 2
        self._perms: dict[int, tuple[int, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.num_iters - self.start_iter

    def _counts(self, g: torch.Generator) -> tuple[int, int]:
        if not self.semi:
            return self.batch_size, 0
        if self.counts == "inner_binomial":
            n_labeled = 1 + int((torch.rand(self.batch_size - 2, generator=g) < self.p_labeled).sum())
        else:
            n_labeled = released_labeled_count(
                int((torch.rand(self.batch_size, generator=g) < self.p_labeled).sum()), self.batch_size
            )
        return n_labeled, self.batch_size - n_labeled

    def _stream_index(self, kind: int, position: int) -> int:
        size = self.sizes[kind]
        per_rank = math.ceil(size / self.world_size)
        epoch, offset = divmod(position, per_rank)
        if self._perms.get(kind, (None,))[0] != epoch:  # one permutation per stream epoch, cached
            perm = torch.randperm(
                size, generator=torch.Generator().manual_seed(self.seed * 7919 + kind * 104729 + epoch)
            )
            self._perms[kind] = (epoch, perm.repeat(math.ceil(per_rank * self.world_size / size)))  # pad per rank
        return int(self._perms[kind][1][self.rank * per_rank + offset])

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        positions = [0, 0]
        for it in range(self.num_iters):
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + it) * 131 + self.rank)
            counts = self._counts(g)
            if it < self.start_iter:
                positions = [positions[0] + counts[0], positions[1] + counts[1]]
                continue
            batch = []
            for kind in (0, 1):
                for _ in range(counts[kind]):
                    batch.append(
                        (
                            kind,
                            self._stream_index(kind, positions[kind]),
                            int(torch.randint(2**31 - 1, (), generator=g)),
                        )
                    )
                    positions[kind] += 1
            yield batch


def partial_split_files(
    train_annotations: Path,
    percent: float,
    fold: int,
    seed_offset: int,
    split_dir: Path,
    is_main: bool = True,
    sampling: str = "softteacher",
) -> tuple[Path, Path]:
    """The (labeled, unlabeled) jsons of a partial split, written by ``shared.datasets.coco_partial`` unless files
    made from the same recipe (percent, fold, seed offset, sampling rule, and the source file's size and SHA-256)
    exist. ``sampling="stac"`` (with replacement) has its own files (``...@{percent}+stac.json``), so neither rule's
    split is read or overwritten as the other's."""
    from shared.datasets.coco_partial import ensure_partial_split, partial_split_paths

    if not is_main:
        labeled, unlabeled = partial_split_paths(train_annotations, percent, fold, split_dir, seed_offset, sampling)
        if not (labeled.is_file() and unlabeled.is_file()):
            raise FileNotFoundError(f"{labeled} missing: rank 0 writes it, start the run again")
        return labeled, unlabeled
    if not train_annotations.is_file():
        raise _missing(train_annotations, "train annotation file")
    return ensure_partial_split(train_annotations, percent, fold, seed_offset, split_dir, sampling)


def _views(data: DataConfig) -> tuple[ViewConfig, ViewConfig, ViewConfig]:
    base = ViewConfig(
        short_range=data.train_short_range, long_range=data.train_long_range, max_size=data.max_size, hflip=data.hflip
    )
    return (
        replace(base, colour=True),
        replace(base, short_range=data.weak_short_range, long_range=(0, 0)),
        replace(base, colour=True, geometric=True, erase=True),
    )


def _dataset_root(data: DataConfig, is_main: bool = True) -> Path:
    """The dataset root: ``data.root``, or the embedded synthetic set's folder (written by rank 0 when missing)."""
    if data.synthetic:
        root = synthetic_coco_root(PACKAGE, data, is_main, num_unlabeled=data.synthetic_unlabeled)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        return root
    root = Path(data.root)
    if not data.root or not root.is_dir():
        raise FileNotFoundError(
            f"dataset root {root!s} not found (data.root={data.root!r}). Expected the COCO 2017 layout: "
            "<root>/train2017/, val2017/, annotations/instances_{train,val}2017.json (VOC: VOCdevkit/ + "
            "annotations_json/); see `python -m shared.datasets info coco2017`."
        )
    return root


def _val_set(root: Path, data: DataConfig, categories: Sequence[int] | None) -> CocoDetection:
    return CocoDetection(
        root / data.val_images, root / data.val_annotations, label_offset=1, categories=categories, layout=COCO_LAYOUT
    )


def build_val_set(data: DataConfig, is_main: bool = True) -> CocoDetection:
    """The val set alone, as training reads it (labels 1..K), for evaluation: neither the train images, the train
    json, the partial split files nor an unlabeled pool are needed. Its categories are the val json's ids in sorted
    order; check them against the checkpoint's (``shared.detection.check_checkpoint_categories``): when they agree,
    this is the val set of :func:`build_datasets` (whose categories are the labeled split's)."""
    return _val_set(_dataset_root(data, is_main), data, None)


def build_datasets(data: DataConfig, is_main: bool = True) -> tuple[SemiSupervisedDataset, CocoDetection]:
    """(train set with its labeled and unlabeled parts, val set)."""
    root = _dataset_root(data, is_main)
    train_ann = root / data.train_annotations
    unlabeled: list[CocoImages] = []
    if data.percent is not None:
        split = (train_ann, data.percent, data.fold, data.seed_offset, root / data.split_dir)
        if is_main:  # rank 0 writes the split files when missing, the others wait and read them
            partial_split_files(*split, is_main=True, sampling=data.sampling)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        labeled_file, unlabeled_file = partial_split_files(*split, is_main=False, sampling=data.sampling)
        unlabeled.append(CocoImages(root / data.train_images, unlabeled_file))
    else:
        labeled_file = train_ann
    labeled = CocoDetection(root / data.train_images, labeled_file, train=True, label_offset=1, layout=COCO_LAYOUT)
    if len(data.unlabeled_images) != len(data.unlabeled_annotations):
        raise ValueError(
            "data.unlabeled_images and data.unlabeled_annotations need one entry each per pool, got "
            f"{data.unlabeled_images} and {data.unlabeled_annotations}"
        )
    for image_dir, image_list in zip(data.unlabeled_images, data.unlabeled_annotations):
        unlabeled.append(CocoImages(root / image_dir, root / image_list))
    val = _val_set(root, data, labeled.cat_ids)
    if len(labeled) == 0:
        raise ValueError(f"no labeled image with a usable box in {labeled_file}")
    return SemiSupervisedDataset(labeled, unlabeled, *_views(data)), val


def val_loader(dataset: CocoDetection, cfg: DataConfig, ctx: DistContext) -> DataLoader:
    """Every val image once over the ranks."""
    return sharded_loader(dataset, cfg.eval_batch_size, ctx, workers=min(cfg.workers, 2))


def voc_to_coco(voc_root: str | Path, year: str, split: str, out_file: str | Path, use_difficult: bool = False) -> Path:
    """Convert ``VOCdevkit/VOC{year}/Annotations`` of ``ImageSets/Main/{split}.txt`` to a COCO instances json.

    ``file_name`` is relative to the VOCdevkit folder (``VOC2007/JPEGImages/000005.jpg``), category ids 1..20 in
    ``VOC_CLASSES`` order, boxes converted from VOC's 1-based inclusive pixels to xywh (x - 1, y - 1, w, h);
    ``difficult`` objects become ``iscrowd=1`` (ignored by the loader and the evaluator) unless ``use_difficult``.
    """
    devkit = Path(voc_root)
    folder = devkit / f"VOC{year}"
    ids_file = folder / "ImageSets" / "Main" / f"{split}.txt"
    if not ids_file.is_file():
        raise FileNotFoundError(
            f"{ids_file} not found: expected <root>/VOCdevkit/VOC{year}/ with Annotations/, "
            "JPEGImages/ and ImageSets/Main/ (see `python -m shared.datasets info voc`)"
        )
    images, annotations = [], []
    for image_id, name in enumerate(ids_file.read_text().split(), start=1):
        root = ET.parse(folder / "Annotations" / f"{name}.xml").getroot()
        size = root.find("size")
        images.append(
            {
                "id": int(f"{year}{image_id:06d}"),
                "file_name": f"VOC{year}/JPEGImages/{name}.jpg",
                "width": int(size.findtext("width")),
                "height": int(size.findtext("height")),
            }
        )
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            difficult = int(obj.findtext("difficult") or 0)
            w, h = x1 - x0 + 1, y1 - y0 + 1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": images[-1]["id"],
                    "category_id": VOC_CLASSES.index(obj.findtext("name").strip()) + 1,
                    "bbox": [x0 - 1, y0 - 1, w, h],
                    "area": w * h,
                    "iscrowd": int(difficult and not use_difficult),
                }
            )
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "info": {"description": f"VOC{year} {split}"},
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(VOC_CLASSES)],
            }
        )
    )
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``voc --root DIR``: the folder holding ``VOCdevkit/``."""
    parser = argparse.ArgumentParser(prog="python -m mixteacher.data", description="Write the COCO-format VOC jsons.")
    parser.add_argument("command", choices=["voc"])
    parser.add_argument("--root", required=True, help="folder holding VOCdevkit/")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    """``python -m mixteacher.data voc --root data/voc``: write annotations_json/voc07_trainval, voc12_trainval,
    voc07_test."""
    root = Path(args.root)
    for year, split, name in (
        ("2007", "trainval", "voc07_trainval"),
        ("2012", "trainval", "voc12_trainval"),
        ("2007", "test", "voc07_test"),
    ):
        path = voc_to_coco(root / "VOCdevkit", year, split, root / "annotations_json" / f"{name}.json")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
