"""Data of the Calibrated Teacher experiments: the sparsely annotated train set with its two views, the val set with
full annotations, the per-iteration batch sampler and the embedded synthetic COCO set (README, Recipes).

Layout (``python -m shared.datasets info coco2017``)::

    <root>/train2017/*.jpg  <root>/val2017/*.jpg
    <root>/annotations/instances_{train,val}2017.json          full annotations (val: evaluation; train: the check)
    <root>/annotations/<sparse json>                           e.g. coco_missing_50p.json (sparse.SPARSE_SETTINGS)

Every training image is sparsely annotated (no separate unlabeled pool). Each item carries the sparse boxes in the
weak and strong views and, for analysis only (never in a loss), the annotations that the sparse file dropped, so
the precision of kept pseudo boxes can be measured. Category ids map to contiguous labels in sorted id order,
counted from 0 (RetinaNet, FCOS) or 1 (Faster R-CNN).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from calibrated_teacher.config import PACKAGE, DataConfig
from calibrated_teacher.sparse import kept_ratio, write_sparse_split
from calibrated_teacher.views import make_view, transform_boxes, view_to_view
from shared.detection import COCO_LAYOUT, CocoDetection, sharded_loader, synthetic_coco_root
from shared.distributed import DistContext

__all__ = [
    "IterationSampler",
    "SparseTrainSet",
    "build_datasets",
    "build_val_set",
    "dataset_root",
    "sparse_collate",
    "val_loader",
]


def _dropped(full_boxes: torch.Tensor, full_labels: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor):
    """The full annotations without a twin (same label, same box to 0.01 px) among the sparse ones."""
    if len(boxes) == 0:
        return full_boxes, full_labels
    same = ((full_boxes[:, None] - boxes[None]).abs() < 0.01).all(-1) & (full_labels[:, None] == labels[None])
    keep = ~same.any(1)
    return full_boxes[keep], full_labels[keep]


class SparseTrainSet(Dataset):
    """Sparse training images, each as a weak and a strong view, addressed by ``(index, seed)`` from
    :class:`IterationSampler` (augmentations seeded by ``seed``: a batch is a function of the iteration)."""

    def __init__(self, sparse: CocoDetection, full: CocoDetection, data: DataConfig):
        self.sparse, self.full, self.data = sparse, full, data

    def __len__(self) -> int:
        return len(self.sparse)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        g = torch.Generator().manual_seed(seed)
        image, boxes, labels, image_id = self.sparse.load(index)
        full_boxes, full_labels = self.full.boxes(image_id)
        dropped_boxes, dropped_labels = _dropped(full_boxes, full_labels, boxes, labels)
        d = self.data
        weak, m_weak = make_view(image, d.short_range, d.max_size, d.hflip, colour=False, g=g)
        strong, m_strong = make_view(image, d.short_range, d.max_size, d.hflip, colour=True, g=g)
        return {
            "weak": weak,
            "strong": strong,
            "weak_to_strong": view_to_view(m_weak, m_strong),
            "weak_target": {"boxes": transform_boxes(boxes, m_weak), "labels": labels},
            "strong_target": {"boxes": transform_boxes(boxes, m_strong), "labels": labels, "image_id": image_id},
            "dropped": {"boxes": transform_boxes(dropped_boxes, m_strong), "labels": dropped_labels},
        }


def sparse_collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Lists per key, the (n, 3, 3) weak -> strong matrices stacked."""
    out = {k: [it[k] for it in items] for k in items[0]}
    out["weak_to_strong"] = torch.stack(out["weak_to_strong"])
    return out


class IterationSampler(Sampler[list[tuple[int, int]]]):
    """``batch_size`` images per rank and iteration: an endless stream of per-epoch permutations (seeded by
    ``seed`` and the epoch) sharded over the ranks, with one augmentation seed per image drawn from (``seed``,
    iteration, rank). Everything is a function of the iteration, so ``start_iter`` resumes exactly."""

    def __init__(
        self, size: int, batch_size: int, num_iters: int, world_size: int = 1, rank: int = 0, seed: int = 0,
        start_iter: int = 0,
    ):  # fmt: skip
        if size == 0:
            raise ValueError("no training image with a sparse annotation")
        self.size, self.batch_size, self.num_iters, self.start_iter = size, batch_size, num_iters, start_iter
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self._perm: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.num_iters - self.start_iter

    def _index(self, position: int) -> int:
        per_rank = math.ceil(self.size / self.world_size)
        epoch, offset = divmod(position, per_rank)
        if self._perm is None or self._perm[0] != epoch:
            perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
            self._perm = (epoch, perm.repeat(math.ceil(per_rank * self.world_size / self.size)))
        return int(self._perm[1][self.rank * per_rank + offset])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start_iter, self.num_iters):
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + it) * 131 + self.rank)
            seeds = torch.randint(2**31 - 1, (self.batch_size,), generator=g).tolist()
            yield [(self._index(it * self.batch_size + j), seeds[j]) for j in range(self.batch_size)]


def dataset_root(data: DataConfig, is_main: bool = True) -> Path:
    """The dataset root; the synthetic set is written first (rank 0) when ``data.synthetic``."""
    if data.synthetic:
        return synthetic_coco_root(PACKAGE, data, is_main)
    root = Path(data.root)
    if not data.root or not root.is_dir():
        raise FileNotFoundError(
            f"dataset root {root!s} not found (data.root={data.root!r}). Expected the COCO 2017 layout "
            f"{COCO_LAYOUT} plus the sparse json; see `python -m shared.datasets info coco2017` and README, Recipes."
        )
    return root


def sparse_file(data: DataConfig, root: Path) -> Path:
    """The sparse json: the released one, or a split written by the generator when asked for."""
    if data.sparse_drop_rate is None and not data.sparse_keep_one:
        return root / data.sparse_annotations
    tag = "keep1" if data.sparse_keep_one else f"drop{data.sparse_drop_rate:g}"
    return root / "annotations" / "sparse" / f"instances_train2017.{tag}.seed{data.sparse_seed}.json"


def _val_set(root: Path, data: DataConfig, label_offset: int, categories: Sequence[int] | None) -> CocoDetection:
    return CocoDetection(
        root / data.val_images,
        root / data.val_annotations,
        label_offset=label_offset,
        categories=categories,
        layout=COCO_LAYOUT,
    )


def build_datasets(
    data: DataConfig, label_offset: int, is_main: bool = True
) -> tuple[SparseTrainSet, CocoDetection, float]:
    """(sparse train set, full-annotation val set, kept-annotation ratio of the sparse file)."""
    root = dataset_root(data, is_main)
    full_file, sparse = root / data.full_annotations, sparse_file(data, root)
    if is_main and (data.sparse_drop_rate is not None or data.sparse_keep_one):
        write_sparse_split(full_file, sparse, data.sparse_drop_rate, data.sparse_keep_one, data.sparse_seed)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    ratio = kept_ratio(sparse, full_file, data.expected_kept_ratio)
    train = CocoDetection(root / data.train_images, sparse, train=True, label_offset=label_offset, layout=COCO_LAYOUT)
    full = CocoDetection(
        root / data.train_images, full_file, label_offset=label_offset, categories=train.cat_ids, layout=COCO_LAYOUT
    )
    val = _val_set(root, data, label_offset, train.cat_ids)
    return SparseTrainSet(train, full, data), val, ratio


def build_val_set(data: DataConfig, label_offset: int, is_main: bool = True) -> CocoDetection:
    """The full-annotation val set alone (evaluation needs neither the train images nor the train jsons), its
    categories those of the val json in sorted id order: check them against the checkpoint's
    (``shared.detection.check_checkpoint_categories``)."""
    root = dataset_root(data, is_main)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # the synthetic set is written by rank 0
    return _val_set(root, data, label_offset, None)


def val_loader(dataset: CocoDetection, data: DataConfig, ctx: DistContext) -> DataLoader:
    """Every val image once over the ranks."""
    return sharded_loader(dataset, data.eval_batch_size, ctx, workers=min(data.workers, 2))
