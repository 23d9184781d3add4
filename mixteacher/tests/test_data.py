"""STAC-style partial split (shared.datasets.coco_partial, as this package uses it) and the semi batch sampler."""

import json

import pytest

from mixteacher.data import CocoDetection, CocoImages, SemiBatchSampler, partial_split_files
from shared.synthetic import write_coco_detection


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco_detection(
        tmp_path_factory.mktemp("coco"), num_train=60, num_val=2, image_size=192, num_categories=5
    )


def _ids(path):
    return [im["id"] for im in json.loads(path.read_text())["images"]]


@pytest.mark.parametrize("percent", [1, 5, 10, 50])
def test_partial_split_exact_percent_disjoint_and_complete(coco_root, tmp_path, percent):
    ann = coco_root / "annotations" / "instances_train2017.json"
    labeled, unlabeled = partial_split_files(ann, percent, 1, 0, tmp_path)
    lab, unlab = _ids(labeled), _ids(unlabeled)
    assert len(lab) == int(percent / 100 * 60)
    assert not set(lab) & set(unlab)
    assert sorted(lab + unlab) == sorted(_ids(ann))
    # the package's readers: labeled boxes only from the labeled file; the unlabeled pool is images only
    if lab:
        assert set(CocoDetection(coco_root / "train2017", labeled, train=True).ids) <= set(lab)
    assert [im["id"] for im in CocoImages(coco_root / "train2017", unlabeled).images] == unlab


def test_partial_split_same_seed_same_images_other_fold_differs(coco_root, tmp_path):
    ann = coco_root / "annotations" / "instances_train2017.json"
    first = _ids(partial_split_files(ann, 10, 1, 0, tmp_path / "a")[0])
    again = _ids(partial_split_files(ann, 10, 1, 0, tmp_path / "b")[0])
    other = _ids(partial_split_files(ann, 10, 2, 0, tmp_path / "c")[0])
    assert first == again and first != other


def test_missing_dataset_names_the_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"instances_train2017.json.*layout"):
        CocoDetection(tmp_path / "train2017", tmp_path / "annotations" / "instances_train2017.json")


def test_sampler_batch_composition_and_exact_resume():
    sampler = SemiBatchSampler(10, 40, batch_size=5, sample_ratio=(1, 4), num_iters=200, seed=3)
    batches = list(sampler)
    assert len(batches) == 200
    labeled = [sum(k == 0 for k, _, _ in b) for b in batches]
    assert all(len(b) == 5 for b in batches) and all(1 <= n <= 4 for n in labeled)
    assert abs(sum(labeled) / 200 - (1 + 3 * 0.2)) < 0.2  # 1 + Binomial(3, 1/5) on average
    assert all(0 <= i < (10 if k == 0 else 40) for b in batches for k, i, _ in b)
    resumed = list(SemiBatchSampler(10, 40, 5, (1, 4), 200, seed=3, start_iter=120))
    assert resumed == batches[120:]
    # ranks see disjoint shards of each epoch
    r0 = [i for b in SemiBatchSampler(10, 0, 1, (1, 0), 5, world_size=2, rank=0) for _, i, _ in b]
    r1 = [i for b in SemiBatchSampler(10, 0, 1, (1, 0), 5, world_size=2, rank=1) for _, i, _ in b]
    assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(10))
