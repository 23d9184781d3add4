"""Evaluation protocol: pooled pixels, void (255 or 2) ignored, strict FPR95, checked against scikit-learn."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from energy_anomaly_seg import evaluation
from energy_anomaly_seg.config import EvalConfig
from energy_anomaly_seg.data import AnomalySegmentationDataset
from energy_anomaly_seg.evaluation import evaluate_anomaly


def _maps_from_pixels(model, image, *args, **kwargs):
    """Stand-in for the network: the three score maps are the image's three channels."""
    x = image.float() / 255
    return {"msp": x[0], "energy": x[1], "sleeg": x[2], "pred": torch.zeros(image.shape[1:], dtype=torch.long)}


def _scene(void_value):
    """Two 10x10 images whose pixels encode the scores; 20 anomaly, 70 normal and 10 void pixels in all."""
    labels = np.zeros(200, np.uint8)
    scores = np.zeros(200, np.uint8)
    labels[:20] = 1
    scores[:19] = np.arange(200, 219)  # TPR reaches exactly 0.95 at threshold 200 ...
    scores[19] = 100  # ... and 1.0 only at 100, after the five normals at 150-154
    scores[20:25] = np.arange(150, 155)
    scores[25:190] = np.arange(165) % 90
    labels[190:] = void_value
    scores[190:] = 255  # void pixels score highest: counting them would change every metric
    perm = np.random.default_rng(0).permutation(200)
    labels, scores = labels[perm], scores[perm]
    image = np.stack([scores, 255 - scores, scores], -1).reshape(2, 10, 10, 3)
    return image, labels.reshape(2, 10, 10), scores, labels


def _write(tmp_path, layout, void_value):
    image, labels, _, _ = _scene(void_value)
    for i in range(2):
        if layout == "fs_static":
            Image.fromarray(image[i]).save(tmp_path / f"{i}_rgb.png")
            Image.fromarray(labels[i]).save(tmp_path / f"{i}_labels.png")
        else:  # fs_laf (the road-anomaly-benchmark / SLEEG layout), DenseHybrid-style void = 2
            for sub, name, arr in (("leftImg8bit", "leftImg8bit", image[i]), ("ood", "ood_segmentation", labels[i])):
                (tmp_path / sub / "s").mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(tmp_path / sub / "s" / f"f{i}_{name}.png")
    return AnomalySegmentationDataset(tmp_path, layout)


@pytest.mark.parametrize("layout, void_value", [("fs_static", 255), ("fs_laf", 2)])
def test_void_is_ignored_and_metrics_match_sklearn(tmp_path, monkeypatch, layout, void_value):
    monkeypatch.setattr(evaluation, "predict_anomaly_maps", _maps_from_pixels)
    dataset = _write(tmp_path, layout, void_value)
    result = evaluate_anomaly(torch.nn.Module(), dataset, EvalConfig(), "toy", out_dir=tmp_path / "out")
    _, _, scores, labels = _scene(void_value)
    keep = labels != void_value
    s, y = scores[keep].astype(float), labels[keep]
    assert result["pixels"] == 190 and result["anomaly_pixels"] == 20 and result["void_pixels"] == 10
    assert result["sleeg_AP"] == pytest.approx(100 * average_precision_score(y, s))
    assert result["sleeg_AUROC"] == pytest.approx(100 * roc_auc_score(y, s))
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert result["sleeg_FPR95"] == pytest.approx(100 * fpr[np.argmax(tpr > 0.95)])  # the paper code's strict rule
    assert result["sleeg_FPR95"] == pytest.approx(100 * 5 / 170)  # strict: TPR 0.95 is not enough
    assert fpr[np.argmax(tpr >= 0.95)] == 0.0  # the non-strict rule would report 0
    assert result["energy_AUROC"] == pytest.approx(100 * roc_auc_score(y, -s))
    assert (tmp_path / "out" / "curves_toy.png").is_file()
    assert len(list((tmp_path / "out" / "vis" / "toy").glob("*.png"))) == 2


def test_metrics_identical_for_255_and_2_void(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation, "predict_anomaly_maps", _maps_from_pixels)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = evaluate_anomaly(torch.nn.Module(), _write(tmp_path / "a", "fs_static", 255), EvalConfig(), "a")
    b = evaluate_anomaly(torch.nn.Module(), _write(tmp_path / "b", "fs_laf", 2), EvalConfig(), "b")
    assert a == b


@pytest.mark.slow
def test_pixel_metrics_over_2e8_pixels_in_under_a_minute():
    from energy_anomaly_seg.bench import bench_metrics

    torch.set_num_threads(os.cpu_count() or 1)  # every core for this one (the autouse fixture restores the count)
    out = bench_metrics(200_000_000, torch.device("cpu"))  # FS L&F val size: 100 x 2048 x 1024 pixels
    assert out["total_s"] < 60, out
    assert 0.9 < out["AUROC_value"] < 0.95 and 0 < out["FPR95_value"] < 1  # N(2, 1) vs N(0, 1): AUROC 0.921
