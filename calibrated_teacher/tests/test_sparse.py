"""The sparse-split generator (seeded, exact ratios, keep-1) and the kept-ratio check of released files."""

import json

import pytest

from calibrated_teacher.sparse import drop_annotations, keep_one_per_category, kept_ratio, write_sparse_split


def _coco(n_images=20, per_image=5):
    anns = []
    for i in range(n_images):
        for j in range(per_image):
            anns.append(
                {"id": len(anns) + 1, "image_id": i, "category_id": 1 + j % 3, "bbox": [j, j, 10 + j, 10], "iscrowd": 0}
            )
    anns.append({"id": len(anns) + 1, "image_id": 0, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1})
    return {
        "images": [{"id": i} for i in range(n_images)],
        "annotations": anns,
        "categories": [{"id": c} for c in (1, 2, 3)],
    }


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 0.7])
def test_drop_rate_is_exact_and_crowd_kept(rate):
    sparse = drop_annotations(_coco(), rate, seed=1)
    instances = [a for a in sparse["annotations"] if not a["iscrowd"]]
    assert len(instances) == 100 - round(rate * 100)
    assert sum(a["iscrowd"] for a in sparse["annotations"]) == 1


def test_drop_is_seeded():
    ids = lambda s: [a["id"] for a in drop_annotations(_coco(), 0.5, seed=s)["annotations"]]  # noqa: E731
    assert ids(3) == ids(3) and ids(3) != ids(4)


def test_keep_one_per_category_keeps_one_instance_per_image_and_category():
    sparse = keep_one_per_category(_coco(), seed=0)
    pairs = [(a["image_id"], a["category_id"]) for a in sparse["annotations"]]
    assert len(pairs) == len(set(pairs)) == 20 * 3


def test_write_and_check_a_split(tmp_path):
    full = tmp_path / "full.json"
    full.write_text(json.dumps(_coco()))
    out = write_sparse_split(full, tmp_path / "sparse.json", 0.5, False, 0)
    assert kept_ratio(out, full, expected=0.5) == 0.5
    mtime = out.stat().st_mtime_ns
    assert write_sparse_split(full, out, 0.5, False, 0).stat().st_mtime_ns == mtime  # reused
    with pytest.raises(ValueError, match="expected 0.300"):
        kept_ratio(out, full, expected=0.3)


def test_a_sparse_file_of_another_dataset_is_refused(tmp_path):
    full = tmp_path / "full.json"
    full.write_text(json.dumps(_coco()))
    other = _coco()
    other["annotations"][0]["bbox"] = [999, 999, 5, 5]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(other))
    with pytest.raises(ValueError, match="not in"):
        kept_ratio(bad, full)


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({"id": 7, "image_id": 0, "category_id": 1}, r"annotation 3 \(id 7\) has no 'bbox'"),
        ({"id": 7, "image_id": 0, "category_id": 1, "bbox": None}, r"annotation 3 \(id 7\) has bbox None"),
        ({"id": 7, "image_id": 0, "category_id": 1, "bbox": [1, 2, 3]}, r"annotation 3 \(id 7\) has bbox \[1, 2, 3\]"),
        ({"id": 7, "image_id": 0, "category_id": 1, "bbox": [1, 2, "3", 4]}, r"annotation 3 \(id 7\) has bbox"),
        ({"id": 7, "image_id": 0, "bbox": [1, 2, 3, 4]}, r"annotation 3 \(id 7\) has no 'category_id'"),
        ({"id": 7, "image_id": None, "category_id": 1, "bbox": [1, 2, 3, 4]}, r"annotation 3 \(id 7\) has image_id"),
        ([0, 1, 2], r"annotation 3 \(no id\) is a list, not an object"),
        ("annotation", r"annotation 3 \(no id\) is a str, not an object"),
    ],
)
@pytest.mark.parametrize("which", ["sparse", "full"])
def test_a_corrupt_annotation_is_an_error_naming_file_and_annotation(tmp_path, broken, message, which):
    full = tmp_path / "full.json"
    full.write_text(json.dumps(_coco()))
    sparse = write_sparse_split(full, tmp_path / "sparse.json", 0.5, False, 0)
    target = full if which == "full" else sparse
    coco = json.loads(target.read_text())
    coco["annotations"].insert(3, broken)
    target.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=f"{target.name}: {message}"):
        kept_ratio(sparse, full)
