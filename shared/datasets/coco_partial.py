"""STAC-protocol partial-label splits of COCO ``instances_train2017.json`` (semi-supervised detection).

For a labelled percentage ``p`` and a fold ``f`` the images of the annotation file are split into a labelled part
and its complement, written as ``<stem>.{f}@{p}.json`` and ``<stem>.{f}@{p}-unlabeled.json`` (for COCO:
``instances_train2017.1@10.json`` and ``instances_train2017.1@10-unlabeled.json``). Annotations follow their images;
as in the reference scripts the unlabeled file still contains the ground-truth annotations of its images, and
semi-supervised loaders must not use them for a loss.

Sampling, exactly as the reference scripts do it [SRC, read in the repositories named]:

* ``labeled_tot = int(percent / 100 * len(images))``; the random state is numpy's legacy ``RandomState`` seeded with
  ``fold + seed_offset`` (the scripts call ``np.random.seed(seed + seed_offset)``; we use a private
  ``RandomState``, which draws the same numbers without touching numpy's global state).
* ``sampling="softteacher"`` (default): ``choice(N, labeled_tot, replace=False)`` — microsoft/SoftTeacher
  ``tools/dataset/semi_coco.py``, the script MixTeacher uses. Exactly ``labeled_tot`` images are labelled.
* ``sampling="stac"``: ``choice(N, labeled_tot)`` *with* replacement — google-research/ssl_detection
  ``prepare_datasets/prepare_coco_data.py`` (STAC). Duplicates collapse, so slightly fewer than ``labeled_tot``
  images end up labelled; this reproduces STAC's own folds. Its files are named ``<stem>.{f}@{p}+stac.json`` (and
  ``...+stac-unlabeled.json``), so that a split of one rule is never read or overwritten as the other's.
* Folds are the seeds 1..5 with ``seed_offset = 0``. MixTeacher's ``prepare_coco_data.sh`` passes
  ``--seed-offset $RANDOM``, so its folds differ per user; use ``seed_offset=0`` for the published protocol.

Command line::

    python -m shared.datasets.coco_partial --ann data/coco/annotations/instances_train2017.json \\
        --percent 1 2 5 10 --folds 1 2 3 4 5 [--seed-offset 0] [--sampling softteacher|stac] [--out DIR]

SoftTeacher/MixTeacher configs read the splits from ``annotations/semi_supervised/``; pass ``--out`` to write them
there. By default the files are written next to the input file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "SAMPLING_MODES",
    "labeled_image_indices",
    "main",
    "partial_split",
    "partial_split_paths",
    "write_partial_splits",
]

SAMPLING_MODES = ("softteacher", "stac")


def _format_percent(percent: float) -> str:
    # The reference scripts write int(percent); keep that for whole numbers and the decimal form otherwise.
    return str(int(percent)) if float(percent).is_integer() else str(percent)


def _check_arguments(percent: float, fold: int, seed_offset: int, sampling: str) -> None:
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    if int(fold) != fold or fold < 0:
        raise ValueError(f"fold must be a non-negative integer (the STAC folds are 1..5), got {fold}")
    if not 0 <= fold + seed_offset < 2**32:
        raise ValueError(f"fold + seed_offset must be in [0, 2**32), got {fold + seed_offset}")
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")


def labeled_image_indices(
    num_images: int, percent: float, fold: int, seed_offset: int = 0, sampling: str = "softteacher"
) -> np.ndarray:
    """Return the sorted positions (in the ``images`` list) of the labelled images of one split.

    See the module docstring for the exact sampling; the result equals the reference scripts' choice.
    """
    _check_arguments(percent, fold, seed_offset, sampling)
    labeled_tot = int(percent / 100.0 * num_images)
    random_state = np.random.RandomState(fold + seed_offset)
    chosen = random_state.choice(num_images, size=labeled_tot, replace=sampling == "stac")
    return np.unique(chosen)


def partial_split(
    coco: dict, percent: float, fold: int, seed_offset: int = 0, sampling: str = "softteacher"
) -> tuple[dict, dict]:
    """Split a COCO instances dict into (labelled, unlabelled) dicts for one ``percent`` and ``fold``.

    All other top-level keys (``info``, ``licenses``, ``categories``, ...) are copied to both outputs. Annotations go
    with their image; an annotation whose ``image_id`` is not among the images goes to the unlabelled part, as in
    the reference scripts.
    """
    missing = [key for key in ("images", "annotations") if not isinstance(coco.get(key), list)]
    if missing:
        raise ValueError(f"not a COCO instances file: '{missing[0]}' is missing or not a list")
    images = coco["images"]
    chosen = set(labeled_image_indices(len(images), percent, fold, seed_offset, sampling).tolist())
    labeled_images = [image for i, image in enumerate(images) if i in chosen]
    unlabeled_images = [image for i, image in enumerate(images) if i not in chosen]
    labeled_ids = {image["id"] for image in labeled_images}
    labeled_anns = [ann for ann in coco["annotations"] if ann["image_id"] in labeled_ids]
    unlabeled_anns = [ann for ann in coco["annotations"] if ann["image_id"] not in labeled_ids]

    def with_parts(part_images: list, part_anns: list) -> dict:
        out = {}
        for key, value in coco.items():
            out[key] = part_images if key == "images" else part_anns if key == "annotations" else value
        return out

    return with_parts(labeled_images, labeled_anns), with_parts(unlabeled_images, unlabeled_anns)


def partial_split_paths(
    ann_path: str | Path,
    percent: float,
    fold: int,
    out_dir: str | Path | None = None,
    seed_offset: int = 0,
    sampling: str = "softteacher",
) -> tuple[Path, Path]:
    """Return the (labelled, unlabelled) output paths for ``ann_path``, e.g. ``instances_train2017.1@10.json``.

    A non-zero ``seed_offset`` is part of the name (``instances_train2017.1@10+s7.json``), and so is a sampling other
    than ``softteacher`` (``instances_train2017.1@10+stac.json``, ``...@10+s7+stac.json``), so splits drawn with
    different offsets or rules never share a file; offset 0 with ``softteacher`` keeps the published names."""
    ann_path = Path(ann_path)
    folder = Path(out_dir) if out_dir is not None else ann_path.parent
    stem = f"{ann_path.stem}.{fold}@{_format_percent(percent)}" + (f"+s{seed_offset}" if seed_offset else "")
    stem += "" if sampling == "softteacher" else f"+{sampling}"
    return folder / f"{stem}.json", folder / f"{stem}-unlabeled.json"


#: Top-level key of a split file recording how it was made (pycocotools and mmdet ignore unknown top-level keys).
RECIPE_KEY = "partial_split_recipe"


def _source_fingerprint(ann_path: Path) -> dict[str, object]:
    from shared.datasets.download import file_digest

    return {
        "source": ann_path.name,
        "source_size": ann_path.stat().st_size,
        "source_sha256": file_digest(ann_path, "sha256"),
    }


def split_recipe(
    ann_path: str | Path, percent: float, fold: int, seed_offset: int = 0, sampling: str = "softteacher"
) -> dict[str, object]:
    """What a split file is made from: the arguments and the size and SHA-256 of the source annotation file."""
    return {
        "percent": float(percent),
        "fold": int(fold),
        "seed_offset": int(seed_offset),
        "sampling": sampling,
        **_source_fingerprint(Path(ann_path)),
    }


def _stored_recipe(path: Path) -> dict | None:
    try:
        with open(path) as handle:
            return json.load(handle).get(RECIPE_KEY)
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def ensure_partial_split(
    ann_path: str | Path,
    percent: float,
    fold: int,
    seed_offset: int = 0,
    out_dir: str | Path | None = None,
    sampling: str = "softteacher",
) -> tuple[Path, Path]:
    """The (labelled, unlabelled) files of one split, reused only when their recorded recipe (arguments and the
    source file's size and SHA-256) equals this call's; written (again) otherwise.

    Raises:
        FileNotFoundError: the source annotation file is missing.
        ValueError: the source is not valid JSON (e.g. truncated).
    """
    ann_path = Path(ann_path)
    if not ann_path.is_file():
        raise FileNotFoundError(f"annotation file not found: {ann_path}")
    labeled, unlabeled = partial_split_paths(ann_path, percent, fold, out_dir, seed_offset, sampling)
    if labeled.is_file() and unlabeled.is_file():
        stored = _stored_recipe(labeled)
        if stored is not None and stored.get("source_size") == ann_path.stat().st_size:
            recipe = split_recipe(ann_path, percent, fold, seed_offset, sampling)
            if stored == recipe and _stored_recipe(unlabeled) == recipe:
                return labeled, unlabeled
    write_partial_splits(ann_path, [percent], [fold], seed_offset, out_dir, sampling)
    return labeled, unlabeled


def _write_json(path: Path, content: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        json.dump(content, handle, separators=(",", ":"))
    os.replace(tmp, path)


def write_partial_splits(
    ann_path: str | Path,
    percents: Sequence[float],
    folds: Sequence[int],
    seed_offset: int = 0,
    out_dir: str | Path | None = None,
    sampling: str = "softteacher",
) -> list[tuple[Path, Path]]:
    """Write the labelled/unlabelled files of every (percent, fold) pair; return their paths in that order."""
    ann_path = Path(ann_path)
    if not ann_path.is_file():
        raise FileNotFoundError(f"annotation file not found: {ann_path}")
    for percent in percents:
        for fold in folds:
            _check_arguments(percent, fold, seed_offset, sampling)
    try:
        with open(ann_path) as handle:
            coco = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{ann_path} is not valid JSON: {error}") from error
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise ValueError(f"{ann_path} is not a COCO instances file (no 'images' list)")
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    source = _source_fingerprint(ann_path)
    written = []
    for percent in percents:
        for fold in folds:
            labeled, unlabeled = partial_split(coco, percent, fold, seed_offset, sampling)
            recipe = {
                "percent": float(percent),
                "fold": int(fold),
                "seed_offset": int(seed_offset),
                "sampling": sampling,
                **source,
            }
            labeled[RECIPE_KEY] = unlabeled[RECIPE_KEY] = recipe
            labeled_path, unlabeled_path = partial_split_paths(ann_path, percent, fold, out_dir, seed_offset, sampling)
            _write_json(labeled_path, labeled)
            _write_json(unlabeled_path, unlabeled)
            print(
                f"{labeled_path.name}: {len(labeled['images'])} images, {len(labeled['annotations'])} annotations; "
                f"{unlabeled_path.name}: {len(unlabeled['images'])} images"
            )
            written.append((labeled_path, unlabeled_path))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m shared.datasets.coco_partial",
        description="STAC-protocol partial-label splits of a COCO instances file.",
    )
    parser.add_argument("--ann", required=True, help="path to instances_train2017.json (or any COCO instances file)")
    parser.add_argument("--percent", type=float, nargs="+", required=True, help="labelled percentages, e.g. 1 2 5 10")
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="folds = seeds (STAC: 1..5)")
    parser.add_argument("--seed-offset", type=int, default=0, help="added to the fold to form the seed (STAC: 0)")
    parser.add_argument(
        "--sampling",
        choices=SAMPLING_MODES,
        default="softteacher",
        help="softteacher: without replacement (MixTeacher); stac: with replacement (STAC's script)",
    )
    parser.add_argument("--out", default=None, help="output folder (default: next to --ann)")
    args = parser.parse_args(argv)
    try:
        write_partial_splits(args.ann, args.percent, args.folds, args.seed_offset, args.out, args.sampling)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
