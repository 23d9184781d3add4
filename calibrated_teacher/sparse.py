"""Sparse-annotation protocols on COCO (README, Recipes): the released Co-mining / BRL / SIOD files, their
kept-annotation check against the full json, and a seeded generator of new sparse splits.

Released files (Co-mining's Google Drive; not regenerated here, their drop rules and seeds were never published):

=========  ==================================  ====================================================
setting    file under ``<root>/annotations/``   origin
=========  ==================================  ====================================================
miss50p    ``coco_missing_50p.json``            BRL (ICASSP 2020): by its name 50 % missing (unmeasured)
easy       ``instances_train2017_easy.json``    Co-mining (AAAI 2021)
hard       ``instances_train2017_hard.json``    Co-mining
extreme    ``instances_train2017_extreme.json`` Co-mining
keep1      ``keep1_instances_train2017.json``   SIOD (CVPR 2022): one instance per category per image
=========  ==================================  ====================================================

:func:`kept_ratio` checks that a sparse file is a subset of the full json (every kept annotation has the same image,
category and box as a full one) and returns the kept fraction; the loader raises when it differs from the expected
ratio by more than 0.02, when one is given (no expected ratio is published or measured for any released file yet,
miss50p included: the ratio is computed and logged at start, to be recorded).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from shared.detection import is_xywh_box

__all__ = ["SPARSE_SETTINGS", "drop_annotations", "keep_one_per_category", "kept_ratio", "write_sparse_split"]

#: setting -> (file name, expected kept ratio or None when unpublished or unmeasured; miss50p's name says 50 %
#: missing, but BRL's file was never measured here: its ratio is computed and logged at start).
SPARSE_SETTINGS: dict[str, tuple[str, float | None]] = {
    "miss50p": ("coco_missing_50p.json", None),
    "easy": ("instances_train2017_easy.json", None),
    "hard": ("instances_train2017_hard.json", None),
    "extreme": ("instances_train2017_extreme.json", None),
    "keep1": ("keep1_instances_train2017.json", None),
}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"annotation file not found: {path} (see README, Recipes, for where the sparse files come from)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a JSON file: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path} is not a COCO instances file (no 'annotations' list)")
    for index, ann in enumerate(data["annotations"]):
        problem = _annotation_problem(ann)
        if problem:
            ident = f"id {ann['id']!r}" if isinstance(ann, dict) and "id" in ann else "no id"
            raise ValueError(f"{path}: annotation {index} ({ident}) {problem}")
    return data


def _annotation_problem(ann: Any) -> str:
    """What makes ``ann`` unusable here (empty when it is fine): it must be a dict with an ``image_id`` and a
    ``category_id`` (integers or strings) and a ``bbox`` of 4 finite numbers."""
    if not isinstance(ann, dict):
        return f"is a {type(ann).__name__}, not an object"
    missing = [k for k in ("image_id", "category_id", "bbox") if k not in ann]
    if missing:
        return f"has no {', '.join(repr(k) for k in missing)}"
    for key in ("image_id", "category_id"):
        if not isinstance(ann[key], (int, str)) or isinstance(ann[key], bool):
            return f"has {key} {ann[key]!r}, not an integer or a string"
    box = ann["bbox"]
    if not is_xywh_box(box):
        return f"has bbox {box!r}, not 4 finite numbers [x, y, w, h]"
    return ""


def drop_annotations(coco: dict[str, Any], drop_rate: float, seed: int) -> dict[str, Any]:
    """A copy of ``coco`` with exactly ``round(drop_rate * N)`` of its N (non-crowd) annotations removed, chosen by a
    permutation seeded with ``seed``; crowd annotations are kept (they are ignored regions, not instances)."""
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    anns = coco["annotations"]
    instances = [i for i, a in enumerate(anns) if not a.get("iscrowd", 0)]
    num_drop = round(drop_rate * len(instances))
    order = torch.randperm(len(instances), generator=torch.Generator().manual_seed(seed)).tolist()
    dropped = {instances[i] for i in order[:num_drop]}
    return {**coco, "annotations": [a for i, a in enumerate(anns) if i not in dropped]}


def keep_one_per_category(coco: dict[str, Any], seed: int) -> dict[str, Any]:
    """SIOD keep-1: for every image and every category present in it, one instance chosen at random (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, a in enumerate(coco["annotations"]):
        if not a.get("iscrowd", 0):
            groups.setdefault((a["image_id"], a["category_id"]), []).append(i)
    kept = {members[int(torch.randint(len(members), (), generator=gen))] for members in groups.values()}
    return {**coco, "annotations": [a for i, a in enumerate(coco["annotations"]) if i in kept]}


def write_sparse_split(
    full_file: str | Path, out_file: str | Path, drop_rate: float | None, keep_one: bool, seed: int
) -> Path:
    """Write a sparse split of ``full_file`` (``drop_rate`` or ``keep_one``) unless ``out_file`` exists with the same
    recipe: the file's ``info.sparse_split`` records the arguments and the SHA-256 of the full file."""
    full_file, out_file = Path(full_file), Path(out_file)
    if (drop_rate is None) == (not keep_one):
        raise ValueError("give exactly one of sparse_drop_rate and sparse_keep_one")
    digest = hashlib.sha256(full_file.read_bytes()).hexdigest() if full_file.is_file() else ""
    recipe = {"source_sha256": digest, "drop_rate": drop_rate, "keep_one": keep_one, "seed": seed}
    if out_file.is_file():
        try:
            if json.loads(out_file.read_text()).get("info", {}).get("sparse_split") == recipe:
                return out_file
        except json.JSONDecodeError:
            pass  # unreadable: rewritten below
    coco = _read_json(full_file)
    sparse = keep_one_per_category(coco, seed) if keep_one else drop_annotations(coco, float(drop_rate), seed)
    sparse["info"] = {**coco.get("info", {}), "sparse_split": recipe}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(sparse))
    tmp.replace(out_file)
    return out_file


def _key(a: dict[str, Any]) -> tuple:
    return (a["image_id"], a["category_id"], *(round(float(v), 2) for v in a["bbox"]))


def kept_ratio(sparse_file: str | Path, full_file: str | Path, expected: float | None = None) -> float:
    """Kept non-crowd annotations of ``sparse_file`` / those of ``full_file``.

    Raises:
        ValueError: a sparse annotation that is not in the full file (other image, category or box), or a ratio
            further than 0.02 from ``expected``.
    """
    sparse, full = _read_json(Path(sparse_file)), _read_json(Path(full_file))
    full_keys: dict[tuple, int] = {}
    for a in full["annotations"]:
        if not a.get("iscrowd", 0):
            full_keys[_key(a)] = full_keys.get(_key(a), 0) + 1
    kept = [a for a in sparse["annotations"] if not a.get("iscrowd", 0)]
    for a in kept:
        if full_keys.get(_key(a), 0) == 0:
            raise ValueError(
                f"{sparse_file}: annotation {a.get('id')} (image {a['image_id']}, category {a['category_id']}, "
                f"bbox {a['bbox']}) is not in {full_file}: the two files do not belong together"
            )
        full_keys[_key(a)] -= 1
    ratio = len(kept) / max(1, sum(1 for a in full["annotations"] if not a.get("iscrowd", 0)))
    if expected is not None and abs(ratio - expected) > 0.02:
        raise ValueError(f"{sparse_file} keeps {ratio:.3f} of the annotations of {full_file}, expected {expected:.3f}")
    return ratio
