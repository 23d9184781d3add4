"""STAC-protocol partial COCO splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.datasets.coco_partial import (
    labeled_image_indices,
    main,
    partial_split,
    partial_split_paths,
    write_partial_splits,
)
from shared.testing import run_module

REPO_ROOT = Path(__file__).resolve().parents[2]


def _fake_coco(num_images: int = 1000) -> dict:
    rng = np.random.default_rng(0)
    images = [{"id": 10 * i + 3, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48} for i in range(num_images)]
    annotations = []
    for image in images:
        for _ in range(int(rng.integers(0, 4))):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": 1,
                    "bbox": [1, 1, 5, 5],
                    "area": 25,
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"year": 2017},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing", "supercategory": "x"}],
    }


@pytest.mark.parametrize("percent", [1, 2, 5, 10, 0.5])
def test_partition_is_disjoint_complete_and_sized(percent: float) -> None:
    coco = _fake_coco()
    labeled, unlabeled = partial_split(coco, percent, fold=1)
    labeled_ids = [im["id"] for im in labeled["images"]]
    unlabeled_ids = [im["id"] for im in unlabeled["images"]]
    assert len(labeled_ids) == int(percent / 100 * 1000)
    assert set(labeled_ids).isdisjoint(unlabeled_ids)
    assert sorted(labeled_ids + unlabeled_ids) == sorted(im["id"] for im in coco["images"])
    # Annotations follow their images, none lost or duplicated.
    assert all(a["image_id"] in set(labeled_ids) for a in labeled["annotations"])
    assert all(a["image_id"] in set(unlabeled_ids) for a in unlabeled["annotations"])
    assert len(labeled["annotations"]) + len(unlabeled["annotations"]) == len(coco["annotations"])
    for part in (labeled, unlabeled):
        assert part["categories"] == coco["categories"] and part["info"] == coco["info"]


def test_deterministic_and_folds_differ() -> None:
    coco = _fake_coco()
    first = partial_split(coco, 10, fold=2)[0]["images"]
    assert first == partial_split(coco, 10, fold=2)[0]["images"]
    assert first != partial_split(coco, 10, fold=3)[0]["images"]
    assert first != partial_split(coco, 10, fold=2, seed_offset=5)[0]["images"]


def test_sampling_reproduces_the_reference_scripts() -> None:
    # The scripts call np.random.seed(seed + offset) then np.random.choice(range(N), size=k[, replace=False]).
    state = np.random.get_state()
    try:
        np.random.seed(3 + 7)
        softteacher = np.random.choice(range(118287), size=int(5 / 100.0 * 118287), replace=False)
        np.random.seed(3)
        stac = np.random.choice(range(118287), size=int(5 / 100.0 * 118287))
    finally:
        np.random.set_state(state)
    assert np.array_equal(labeled_image_indices(118287, 5, 3, seed_offset=7), np.unique(softteacher))
    assert len(labeled_image_indices(118287, 5, 3, seed_offset=7)) == 5914  # count listed in mixteacher.md
    stac_ours = labeled_image_indices(118287, 5, 3, sampling="stac")
    assert np.array_equal(stac_ours, np.unique(stac)) and len(stac_ours) < 5914  # with replacement: duplicates


def test_paths_follow_the_stac_naming(tmp_path: Path) -> None:
    ann = tmp_path / "instances_train2017.json"
    assert partial_split_paths(ann, 10, 1) == (
        tmp_path / "instances_train2017.1@10.json",
        tmp_path / "instances_train2017.1@10-unlabeled.json",
    )
    assert partial_split_paths(ann, 0.5, 2, out_dir=tmp_path / "semi")[0].name == "instances_train2017.2@0.5.json"
    # another sampling rule (or seed offset) never shares a file with the published softteacher split
    assert partial_split_paths(ann, 10, 1, sampling="stac") == (
        tmp_path / "instances_train2017.1@10+stac.json",
        tmp_path / "instances_train2017.1@10+stac-unlabeled.json",
    )
    offset = partial_split_paths(ann, 10, 1, seed_offset=7, sampling="stac")[0]
    assert offset.name == "instances_train2017.1@10+s7+stac.json"


def test_ensure_partial_split_keeps_the_rules_apart(tmp_path: Path) -> None:
    from shared.datasets.coco_partial import RECIPE_KEY, ensure_partial_split

    ann = tmp_path / "instances_train2017.json"
    ann.write_text(json.dumps(_fake_coco(200)))
    soft, _ = ensure_partial_split(ann, 10, 1)
    first = soft.read_bytes()
    stac, stac_unlabeled = ensure_partial_split(ann, 10, 1, sampling="stac")
    assert stac.name == "instances_train2017.1@10+stac.json" and soft.read_bytes() == first  # not overwritten
    recipe = json.loads(stac.read_text())[RECIPE_KEY]
    assert recipe["sampling"] == "stac" and json.loads(soft.read_text())[RECIPE_KEY]["sampling"] == "softteacher"
    ids = [image["id"] for image in _fake_coco(200)["images"]]
    chosen = labeled_image_indices(200, 10, 1, sampling="stac")
    assert sorted(im["id"] for im in json.loads(stac.read_text())["images"]) == sorted(ids[i] for i in chosen)
    inode = stac.stat().st_ino
    assert ensure_partial_split(ann, 10, 1, sampling="stac") == (stac, stac_unlabeled)
    assert stac.stat().st_ino == inode  # reused, not written again (writes go through os.replace)


def test_cli_writes_every_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann = tmp_path / "instances_train2017.json"
    ann.write_text(json.dumps(_fake_coco(200)))
    assert main(["--ann", str(ann), "--percent", "1", "10", "--folds", "1", "2", "--out", str(tmp_path / "semi")]) == 0
    written = sorted(p.name for p in (tmp_path / "semi").iterdir())
    assert written == sorted(
        f"instances_train2017.{f}@{p}{s}.json" for f in (1, 2) for p in (1, 10) for s in ("", "-unlabeled")
    )
    labeled = json.loads((tmp_path / "semi" / "instances_train2017.2@10.json").read_text())
    assert len(labeled["images"]) == 20
    assert "instances_train2017.1@1.json: 2 images" in capsys.readouterr().out


def test_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--ann", str(tmp_path / "missing.json"), "--percent", "1"]) == 1
    assert "annotation file not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"percent must be in \(0, 100\]"):
        partial_split(_fake_coco(10), 0, 1)
    with pytest.raises(ValueError, match="'annotations' is missing"):
        partial_split({"images": []}, 10, 1)
    with pytest.raises(ValueError, match="sampling must be one of"):
        labeled_image_indices(10, 10, 1, sampling="random")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        write_partial_splits(bad, [10], [1])


def test_module_runs_without_preimport_warning(tmp_path: Path) -> None:
    ann = tmp_path / "instances_train2017.json"
    ann.write_text(json.dumps(_fake_coco(50)))
    args = ["--ann", str(ann), "--percent", "10", "--folds", "1"]
    result = run_module("shared.datasets.coco_partial", args, python_args=["-W", "error::RuntimeWarning"])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "instances_train2017.1@10-unlabeled.json").is_file()
