"""shared.noisy.data: CIFAR and Clothing1M readers, noisy-label persistence and label-file round trip."""

import json

import numpy as np
import pytest
import torch

from shared.label_noise import load_noisy_labels, symmetric_noise
from shared.noisy.data import (
    CifarTrainTransform,
    Clothing1M,
    ViewDataset,
    balanced_subset,
    load_cifar,
    load_label_file,
    noisy_labels_for,
    save_label_file,
)
from shared.noisy.metrics import AccuracyTracker, label_accuracy, label_precision_recall
from shared.synthetic import write_cifar


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("cifar"), 10, train_size=50, test_size=20, seed=3)


def test_load_cifar_reads_the_official_pickles(cifar_root):
    train = load_cifar(cifar_root, 10, True)
    test = load_cifar(cifar_root, 10, False, image_size=16)
    assert train.images.shape == (50, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (20, 3, 16, 16) and len(test) == 20
    assert set(train.labels.tolist()) == set(range(10))


def test_missing_cifar_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="(?s)cifar-10-batches-py.*shared.datasets info cifar10"):
        load_cifar(tmp_path, 10, True)


def test_noisy_labels_are_drawn_once_and_reread(cifar_root, tmp_path):
    clean = load_cifar(cifar_root, 10, True).labels
    path = tmp_path / "noise.json"
    first = noisy_labels_for(clean, "sym", 0.5, 10, seed=1, path=path)
    again = noisy_labels_for(clean, "sym", 0.5, 10, seed=1, path=path)  # re-read, not redrawn
    assert np.array_equal(first.noisy, again.noisy) and first.rate == 0.5
    with pytest.raises(ValueError, match="holds 50 labels, the dataset has 49"):
        noisy_labels_for(clean[:49], "sym", 0.5, 10, seed=1, path=path)
    asym = noisy_labels_for(clean, "asym", 0.4, 10, seed=0)
    assert asym.noise_type == "asymmetric"


def test_label_file_round_trip_hard_and_soft(tmp_path):
    clean = np.arange(12) % 3
    noise = symmetric_noise(clean, 0.5, 3, seed=0)
    purified = clean.copy()
    purified[0] = 1
    soft = np.eye(3)[purified] * 0.9 + 0.1 / 3
    path = save_label_file(tmp_path / "purified.json", purified, 3, clean=clean, soft=soft, source="test", noise=noise)
    back = load_label_file(path, expected_length=12)
    assert np.array_equal(back.labels, purified) and np.array_equal(back.clean, clean)
    assert np.allclose(back.soft, soft, atol=1e-6) and back.source == "test"
    legacy = load_noisy_labels(path)  # the shared.label_noise reader accepts it
    assert np.array_equal(legacy.noisy, purified) and legacy.rate == 0.5
    with pytest.raises(ValueError, match="holds 12 labels, the dataset has 13"):
        load_label_file(path, expected_length=13)
    no_clean = save_label_file(tmp_path / "real.json", purified, 3)
    back = load_label_file(no_clean, expected_length=12)
    assert back.clean is None and back.soft is None and np.array_equal(back.labels, purified)
    (tmp_path / "bad.json").write_text(json.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="not a label file"):
        load_label_file(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        load_label_file(tmp_path / "missing.json")


def test_view_dataset_and_cifar_transform(cifar_root):
    train = load_cifar(cifar_root, 10, True)
    torch.manual_seed(0)
    ds = ViewDataset(train.images, CifarTrainTransform(10), num_views=2, indices=[3, 7])
    v1, _v2, index = ds[1]
    assert index == 7 and v1.shape == (3, 32, 32) and v1.dtype == torch.float32
    assert len(ds) == 2


def test_balanced_subset():
    labels = np.repeat(np.arange(4), [10, 10, 10, 2])
    idx = balanced_subset(labels, 16, 4, np.random.default_rng(0))
    counts = np.bincount(labels[idx], minlength=4)
    assert counts.tolist() == [4, 4, 4, 2]


def test_clothing1m_reads_the_official_key_lists(tmp_path):
    from PIL import Image

    root = tmp_path / "clothing1m"
    (root / "images" / "0" / "00").mkdir(parents=True)
    keys = [f"images/0/00/{i}.jpg" for i in range(4)]
    for k in keys:
        Image.new("RGB", (8, 8), (200, 10, 10)).save(root / k)
    (root / "noisy_label_kv.txt").write_text("".join(f"{k} {i % 14}\n" for i, k in enumerate(keys)))
    (root / "clean_label_kv.txt").write_text(f"{keys[2]} 5\n{keys[3]} 13\n")
    (root / "noisy_train_key_list.txt").write_text("\n".join(keys[:3]))
    (root / "clean_train_key_list.txt").write_text("")
    (root / "clean_val_key_list.txt").write_text(keys[2])
    (root / "clean_test_key_list.txt").write_text(keys[3])
    train, val, test = (Clothing1M(root, s) for s in ("train", "val", "test"))
    assert len(train) == 3 and train.labels.tolist() == [0, 1, 2]
    assert val.labels.tolist() == [5] and test.labels.tolist() == [13]
    assert train[0].size == (8, 8)
    (root / "clean_label_kv.txt").write_text(f"{keys[2]} 77\n")
    with pytest.raises(ValueError, match="clean_label_kv.txt:1"):
        Clothing1M(root, "val")
    with pytest.raises(FileNotFoundError, match="shared.datasets info clothing1m"):
        Clothing1M(tmp_path / "nowhere", "train")


def test_label_metrics_and_tracker():
    assert label_accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 75.0
    assert label_accuracy(np.eye(3)[[0, 1, 2]], [0, 1, 1]) == pytest.approx(200 / 3)
    pr = label_precision_recall([1, 1, 0, 0], [0, 1, 2, 2], [0, 0, 2, 1])
    assert pr == {"precision": 50.0, "recall": 50.0}
    tracker = AccuracyTracker()
    tracker.update(50, 0)
    tracker.update(70, 1)
    tracker.update(60, 2)
    assert (tracker.best, tracker.best_epoch, tracker.last) == (70, 1, 60)
    copy = AccuracyTracker()
    copy.load_state_dict(tracker.state_dict())
    assert copy == tracker
