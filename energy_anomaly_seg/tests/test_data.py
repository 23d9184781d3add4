"""Loaders of the real layouts (on tiny files written here), label normalisation, transforms, synthetic data."""

import numpy as np
import pytest
import torch
from PIL import Image

from energy_anomaly_seg.data import (
    AnomalySegmentationDataset,
    CityscapesSegmentation,
    InfiniteSeededSampler,
    SegTrainTransform,
    ensure_synthetic_data,
    normalize_anomaly_labels,
    parse_dataset_spec,
    render_street_scene,
)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _image(h=6, w=8, value=10):
    return np.full((h, w, 3), value, np.uint8)


def _label(h=6, w=8, void=255):
    lab = np.zeros((h, w), np.uint8)
    lab[1:3, 2:4] = 1
    lab[5] = void
    return lab


def test_void_255_and_2_both_become_void():
    for void in (255, 2):
        out = normalize_anomaly_labels(_label(void=void), "binary_void")
        assert set(np.unique(out)) == {0, 1, 255} and (out[5] == 255).all() and out[1, 2] == 1
    road = np.array([[0, 1, 2, 255]], np.uint8)  # Road Anomaly: 2 is the anomaly, 1 road is normal
    assert normalize_anomaly_labels(road, "road_anomaly").tolist() == [[0, 0, 1, 255]]
    assert torch.equal(
        normalize_anomaly_labels(torch.tensor([2, 0, 1]), "binary_void"), torch.tensor([255, 0, 1], dtype=torch.uint8)
    )


@pytest.mark.parametrize("layout", ["fs_static", "fs_laf", "fs_laf_official", "road_anomaly", "smiyc", "synboost"])
def test_every_layout_loads_and_normalises(tmp_path, layout):
    void = 2 if layout == "fs_laf" else 255
    label = _label(void=void)
    if layout == "fs_static":
        _png(tmp_path / "0001_rgb.png", _image())
        _png(tmp_path / "0001_labels.png", label)
    elif layout == "fs_laf":
        _png(tmp_path / "leftImg8bit/val/seq/a_000000_000010_leftImg8bit.png", _image())
        _png(tmp_path / "ood/val/seq/a_000000_000010_ood_segmentation.png", label)
    elif layout == "fs_laf_official":
        _png(tmp_path / "fishyscapes_lostandfound/0007_04_Maurener_Weg_8_000000_000030_labels.png", label)
        seq = "04_Maurener_Weg_8"
        _png(tmp_path / f"lostandfound/leftImg8bit/test/{seq}/{seq}_000000_000030_leftImg8bit.png", _image())
    elif layout == "road_anomaly":
        label = np.where(label == 1, 2, 0).astype(np.uint8)  # original release: anomaly = 2, no void
        _png(tmp_path / "frames/animals01.jpg", _image())
        _png(tmp_path / "frames/animals01.labels/labels_semantic.png", np.stack([label] * 3, -1))
    elif layout == "smiyc":
        _png(tmp_path / "images/validation0001.jpg", _image())
        _png(tmp_path / "labels_masks/validation0001_labels_semantic.png", label)
    else:
        _png(tmp_path / "original/3.png", _image())
        _png(tmp_path / "labels/3.png", label)
    ds = AnomalySegmentationDataset(tmp_path, layout)
    assert len(ds) == 1
    item = ds[0]
    assert item["image"].shape == (3, 6, 8) and item["image"].dtype == torch.uint8
    assert item["label"][1, 2] == 1 and item["label"][0, 0] == 0
    assert (item["label"][5] == (0 if layout == "road_anomaly" else 255)).all()


def test_missing_dataset_and_corrupt_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)does not exist.*fs_static.*_rgb.*datasets info fishyscapes"):
        AnomalySegmentationDataset(tmp_path / "nowhere", "fs_static")
    with pytest.raises(FileNotFoundError, match=r"(?s)leftImg8bit/train.*csCreateTrainIdLabelImgs.*info cityscapes"):
        CityscapesSegmentation(tmp_path / "cityscapes")
    (tmp_path / "x_rgb.png").write_bytes(b"not a png")
    _png(tmp_path / "x_labels.png", _label())
    with pytest.raises(RuntimeError, match=r"cannot read image .*x_rgb\.png"):
        AnomalySegmentationDataset(tmp_path, "fs_static")[0]
    with pytest.raises(ValueError, match="unknown anomaly layout"):
        parse_dataset_spec("fishy:/data")
    assert parse_dataset_spec("laf=fs_laf:/data/x")[:2] == ("laf", "fs_laf")


def test_cityscapes_loader_and_train_transform(tmp_path):
    for i in range(2):
        _png(tmp_path / f"leftImg8bit/train/aachen/aachen_000000_00000{i}_leftImg8bit.png", _image(40, 80, 50 * i))
        lab = np.full((40, 80), 7, np.uint8)
        lab[:, :30] = 0
        lab[:5] = 255
        _png(tmp_path / f"gtFine/train/aachen/aachen_000000_00000{i}_gtFine_labelTrainIds.png", lab)
    transform = SegTrainTransform(img_scale=(80, 40), ratio_range=(0.5, 2.0), crop_size=(32, 48))
    ds = CityscapesSegmentation(tmp_path, "train", transform)
    a, b = ds[(1, 123)], ds[(1, 123)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])  # seeded augmentation
    assert a["image"].shape == (3, 32, 48) and a["image"].dtype == torch.float32
    assert set(a["label"].unique().tolist()) <= {0, 7, 255}
    small = CityscapesSegmentation(tmp_path, "train", SegTrainTransform((80, 40), (0.5, 0.5), (32, 48)))[(0, 1)]
    assert small["label"].shape == (32, 48) and (small["label"][20:] == 255).all()  # padded with ignore


def test_infinite_sampler_resumes_exactly():
    full = InfiniteSeededSampler(7, seed=3)
    it = iter(full)
    stream = [next(it) for _ in range(20)]
    resumed = iter(InfiniteSeededSampler(7, seed=3, start=9))
    assert [next(resumed) for _ in range(11)] == stream[9:]
    assert sorted(i for i, _ in stream[:7]) == list(range(7))  # each pass is a permutation
    rank1 = iter(InfiniteSeededSampler(7, seed=3, rank=1, world_size=2))
    assert [next(rank1) for _ in range(3)] == [stream[1], stream[3], stream[5]]


def test_synthetic_scenes_are_deterministic_and_cityscapes_labelled(tmp_path):
    a_img, a_lab = render_street_scene(np.random.default_rng(5), 64, 128)
    b_img, b_lab = render_street_scene(np.random.default_rng(5), 64, 128)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert {0, 1, 10, 13} <= set(np.unique(a_lab)) and set(np.unique(a_lab)) <= set(range(19)) | {255}
    roots = ensure_synthetic_data(tmp_path, height=32, width=64, n_train=3, n_val=2, n_anomaly=2)
    assert len(CityscapesSegmentation(roots["cityscapes"], "train")) == 3
    assert len(CityscapesSegmentation(roots["cityscapes"], "val")) == 2
    anomalies = AnomalySegmentationDataset(roots["fs_static"], "fs_static")
    assert len(anomalies) == 2 and all((anomalies[i]["label"] == 1).any() for i in range(2))
    assert ensure_synthetic_data(tmp_path, height=32, width=64, n_train=3, n_val=2, n_anomaly=2) == roots  # cached
