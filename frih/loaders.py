"""The data loaders of train.py and eval.py, built from a :class:`frih.config.DataConfig`: the iHarmony4 root (or the
cached synthetic tree in the same layout), the shuffled training loader and the test loader."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from frih.config import DataConfig
from frih.data import EvalTransform, IHarmony4Dataset, TrainTransform, collate
from frih.synthetic import ensure_synthetic_iharmony4
from shared.distributed import DistContext, barrier, seed_worker

__all__ = ["build_eval_loader", "build_train_loader", "resolve_data_root"]


def resolve_data_root(data: DataConfig, is_main: bool = True) -> Path:
    """The configured iHarmony4 root, or the cached synthetic tree (generated on rank 0 on first use)."""
    if data.root is not None:
        return Path(data.root)
    settings = {
        "image_size": data.synthetic_size,
        "num_real_per_subset": data.synthetic_num_real,
        "seed": data.synthetic_seed,
        "root": data.synthetic_root,
        "kind": data.synthetic_kind,
    }
    if is_main:
        root = ensure_synthetic_iharmony4(**settings)
    barrier()
    if not is_main:
        root = ensure_synthetic_iharmony4(**settings)
    return root


def build_train_loader(
    data: DataConfig, root: Path, batch_size: int, seed: int, ctx: DistContext
) -> tuple[DataLoader, torch.Generator]:
    """The training loader (drop_last) and the generator of its single-process shuffling, which the training loop
    reseeds every epoch so that a resumed run draws the same batches; under torchrun a DistributedSampler."""
    dataset = IHarmony4Dataset(
        root,
        data.subsets,
        "train",
        TrainTransform(
            data.crop_size, tuple(data.crop_scale), flip_p=data.flip_p, keep_background_prob=data.keep_background_prob
        ),
        split_source=data.split_source,
    )
    if len(dataset) < batch_size * ctx.world_size:
        raise ValueError(f"{len(dataset)} training images < one batch ({batch_size} x {ctx.world_size} processes)")
    generator = torch.Generator()
    sampler = (
        DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=True)
        if ctx.distributed
        else RandomSampler(dataset, generator=generator)
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=data.num_workers,
        collate_fn=collate,
        worker_init_fn=seed_worker,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=False,
    )
    return loader, generator


def build_eval_loader(
    data: DataConfig, root: Path, batch_size: int, split: str = "test", num_workers: int | None = None
) -> DataLoader:
    """The `split` loader of the test subsets at `data.eval_size` (batch 1 at native resolution)."""
    ds = IHarmony4Dataset(
        root,
        data.test_subsets or data.subsets,
        split,
        EvalTransform(data.eval_size or None),
        split_source=data.split_source,
    )
    workers = data.num_workers if num_workers is None else num_workers
    return DataLoader(
        ds, batch_size=batch_size if data.eval_size else 1, shuffle=False, num_workers=workers, collate_fn=collate
    )
