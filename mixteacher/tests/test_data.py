"""STAC-style partial split (shared.datasets.coco_partial, as this package uses it) and the semi batch sampler."""

import hashlib
import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mixteacher.config import DataConfig
from mixteacher.data import (
    CocoDetection,
    CocoImages,
    SemiBatchSampler,
    build_datasets,
    partial_split_files,
    released_labeled_count,
)
from shared.datasets.coco_partial import RECIPE_KEY, labeled_image_indices
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
    assert abs(sum(labeled) / 200 - _released_mean(5, 0.2)) < 0.15  # clamp(Binomial(5, 1/5), 1, 4): 1.33
    assert all(0 <= i < (10 if k == 0 else 40) for b in batches for k, i, _ in b)
    resumed = list(SemiBatchSampler(10, 40, 5, (1, 4), 200, seed=3, start_iter=120))
    assert resumed == batches[120:]
    # ranks see disjoint shards of each epoch
    r0 = [i for b in SemiBatchSampler(10, 0, 1, (1, 0), 5, world_size=2, rank=0) for _, i, _ in b]
    r1 = [i for b in SemiBatchSampler(10, 0, 1, (1, 0), 5, world_size=2, rank=1) for _, i, _ in b]
    assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(10))


# ------------------------------------------------------------------------------ labeled count of a batch


def _softteacher_count(indicator: list[int], samples_per_gpu: int) -> int:
    """The labeled count of SoftTeacher's ``DistributedGroupSemiBalanceSampler.__iter__`` with ``by_prob=True``
    (ssod/datasets/samplers/semi_sampler.py), transcribed step by step from the indicators it draws."""
    ratio = [0, 0]
    for u in set(indicator):
        ratio[u] = indicator.count(u)
    if ratio[0] == 0:
        ratio[0] = 1
        ratio[1] -= 1
    elif ratio[1] == 0:
        ratio[1] = 1
        ratio[0] -= 1
    ratio = [r / sum(ratio) for r in ratio]
    ratio = [int(r * samples_per_gpu) for r in ratio]
    ratio[-1] = samples_per_gpu - sum(ratio[:-1])
    return ratio[0]


def _released_distribution(batch: int, p: float) -> dict[int, float]:
    """P(labeled count = n) by enumerating every indicator vector of the released draw (0 = labeled)."""
    dist: dict[int, float] = {}
    for indicator in itertools.product((0, 1), repeat=batch):
        n = _softteacher_count(list(indicator), batch)
        k = indicator.count(0)
        dist[n] = dist.get(n, 0.0) + p**k * (1 - p) ** (batch - k)
    return dist


def _released_mean(batch: int, p: float) -> float:
    return sum(n * q for n, q in _released_distribution(batch, p).items())


def test_released_count_is_softteacher_by_prob_rule():
    for batch in range(2, 65):
        for k in range(batch + 1):  # k labeled indicators of `batch`, in any order
            indicator = [0] * k + [1] * (batch - k)
            assert released_labeled_count(k, batch) == _softteacher_count(indicator, batch), (k, batch)
    # clamp(Binomial(batch, p), 1, batch - 1) for the recipes' batches (the released float step only bites >= 22)
    assert [released_labeled_count(k, 5) for k in range(6)] == [1, 1, 2, 3, 4, 4]
    assert released_labeled_count(15, 22) == 14  # int(15 / 22 * 22) == 14, as released
    # the exact distribution of the COCO-partial recipe's batch (5 images, 1:4)
    dist = _released_distribution(5, 0.2)
    expected = {
        1: 0.8**5 + 5 * 0.2 * 0.8**4,
        2: 10 * 0.2**2 * 0.8**3,
        3: 10 * 0.2**3 * 0.8**2,
        4: 5 * 0.2**4 * 0.8 + 0.2**5,
    }
    assert dist.keys() == expected.keys() and all(math.isclose(dist[n], expected[n]) for n in expected)
    assert math.isclose(_released_mean(5, 0.2), 1.32736)


@pytest.mark.parametrize("batch,ratio", [(5, (1, 4)), (4, (1, 1)), (8, (1, 1))])
def test_sampler_draws_the_released_distribution(batch, ratio):
    sampler = SemiBatchSampler(10, 40, batch, ratio, num_iters=1)
    assert sampler.counts == "released"
    g = torch.Generator().manual_seed(0)
    n = 20_000
    draws = [sampler._counts(g)[0] for _ in range(n)]
    p = ratio[0] / sum(ratio)
    for count, prob in _released_distribution(batch, p).items():
        tolerance = 4 * math.sqrt(prob * (1 - prob) / n) + 1e-9  # 4 standard errors
        assert abs(draws.count(count) / n - prob) < tolerance, (count, draws.count(count) / n, prob)
    assert set(draws) <= set(range(1, batch))


# sha256 of repr(list(sampler)) of the sampler before data.batch_counts existed (1 + Binomial(batch - 2, p))
_INNER_BINOMIAL_BATCHES = {
    (30, 270, 4, (1.0, 1.0), 220, 1, 0, 2): "eb6b8546995d8cf4cbae91e8b25622e8f4be33e02696be290c7b6dc11c3c4b84",
    (10, 40, 5, (1, 4), 200, 1, 0, 3): "cf79e9aebcc96ee329d508a37bd382b3b3666cba836ba9a64aadf862163b8285",
    (10, 40, 5, (1, 4), 50, 2, 1, 3): "405f4b044e1b6e725954afa5440b13a00064d486dfb4883627228a40b9675826",
}


def test_inner_binomial_switch_keeps_the_earlier_batches_bitwise():
    """``counts="inner_binomial"`` (what evidence.py passes) gives the batches of the earlier sampler exactly; the
    first case is the evidence's own shape (30 labeled / 270 unlabeled, batch 4, 1:1, 220 iterations, seed 2)."""
    for args, digest in _INNER_BINOMIAL_BATCHES.items():
        batches = list(SemiBatchSampler(*args, counts="inner_binomial"))
        assert hashlib.sha256(repr(batches).encode()).hexdigest() == digest, args
        labeled = [sum(k == 0 for k, _, _ in b) for b in batches]
        assert all(1 <= n <= args[2] - 1 for n in labeled)
        resumed = list(SemiBatchSampler(*args[:-1], seed=args[-1], start_iter=7, counts="inner_binomial"))
        assert resumed == batches[7:]
    assert list(SemiBatchSampler(*next(iter(_INNER_BINOMIAL_BATCHES)))) != list(
        SemiBatchSampler(*next(iter(_INNER_BINOMIAL_BATCHES)), counts="inner_binomial")
    )
    with pytest.raises(ValueError, match="counts must be one of"):
        SemiBatchSampler(10, 40, 5, (1, 4), 1, counts="binomial")


def test_train_and_evidence_pass_the_batch_count_rule():
    from mixteacher import evidence, train

    assert train.parse_args([]).data.batch_counts == "released"  # the default, embedded default included
    cfg = train.parse_args(["--data.batch_counts", "inner_binomial", "--data.workers", "0"])
    assert cfg.data.batch_counts == "inner_binomial"
    for family in evidence.FAMILIES:  # the committed evidence keeps its rule explicitly
        assert evidence.base_config(1, Path("unused"), family).data.batch_counts == "inner_binomial"


# ------------------------------------------------------------------------------ sampling rule of the split


def test_stac_sampling_reaches_the_split_and_gets_its_own_files(coco_root, tmp_path):
    """``data.sampling stac`` was accepted and ignored; now the split is drawn with replacement (STAC's script) into
    its own ``...+stac`` files, and the softteacher split in the same folder is neither reused nor overwritten."""
    ann = coco_root / "annotations" / "instances_train2017.json"
    ids = _ids(ann)
    soft_data = DataConfig(root=str(coco_root), percent=20, fold=1, workers=0, split_dir=str(tmp_path / "splits"))
    soft_set, _ = build_datasets(soft_data)
    soft_file = soft_set.labeled.annotation_file
    soft_bytes = soft_file.read_bytes()
    stac_set, _ = build_datasets(replace(soft_data, sampling="stac"))
    stac_file = stac_set.labeled.annotation_file
    assert soft_file.name == "instances_train2017.1@20.json" and stac_file.name == "instances_train2017.1@20+stac.json"
    assert soft_file.read_bytes() == soft_bytes
    assert json.loads(stac_file.read_text())[RECIPE_KEY]["sampling"] == "stac"
    stac_ids = sorted({ids[i] for i in labeled_image_indices(len(ids), 20, 1, sampling="stac")})
    soft_ids = sorted(ids[i] for i in labeled_image_indices(len(ids), 20, 1))
    assert sorted(_ids(stac_file)) == stac_ids and sorted(_ids(soft_file)) == soft_ids and stac_ids != soft_ids
    unlabeled = stac_file.with_name("instances_train2017.1@20+stac-unlabeled.json")
    assert sorted(_ids(stac_file) + _ids(unlabeled)) == sorted(ids)
    # the other ranks read the same files
    labeled, _ = partial_split_files(ann, 20, 1, 0, tmp_path / "splits", is_main=False, sampling="stac")
    assert labeled == stac_file
