"""coco_evaluate against pycocotools run directly, and expected_calibration_error against a brute-force loop."""

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from shared.metrics import coco_evaluate, expected_calibration_error
from shared.metrics.detection import COCO_STAT_NAMES

CATEGORIES = [
    {"id": i, "name": name} for i, name in enumerate(["person", "car", "dog", "cup", "kite", "unseen"], start=1)
]


def synthetic_gt(seed: int = 0, num_images: int = 8, with_segmentation: bool = False) -> dict:
    """Images of 400x320 with small (< 32^2), medium and large boxes of categories 1-5; 'unseen' has no box."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 400, "height": 320, "file_name": f"{image_id}.jpg"})
        for _ in range(rng.integers(3, 9)):
            side = rng.choice([rng.uniform(8, 30), rng.uniform(34, 90), rng.uniform(100, 180)])
            w, h = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
            x, y = rng.uniform(0, 400 - w), rng.uniform(0, 320 - h)
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(rng.integers(1, 6)),
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
            }
            if with_segmentation:
                ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            annotations.append(ann)
    annotations[3]["iscrowd"] = 1  # a crowd region: matches are ignored, not counted
    if with_segmentation:
        annotations[3]["segmentation"] = mask_utils.frPyObjects(annotations[3]["segmentation"], 320, 400)[0]
        annotations[3]["segmentation"]["counts"] = annotations[3]["segmentation"]["counts"].decode()
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def jittered_detections(gt: dict, seed: int = 1) -> list[dict]:
    """Jittered copies of most boxes with random scores, a few misses, duplicates and false positives."""
    rng = np.random.default_rng(seed)
    detections = []
    for ann in gt["annotations"]:
        if rng.random() < 0.15:
            continue
        x, y, w, h = ann["bbox"]
        for _ in range(1 + (rng.random() < 0.2)):
            jitter = rng.normal(scale=0.08, size=4) * [w, h, w, h]
            detections.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": ann["category_id"],
                    "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
                    "score": float(rng.uniform(0.05, 1.0)),
                }
            )
    for image in gt["images"]:
        for _ in range(3):
            detections.append(
                {
                    "image_id": image["id"],
                    "category_id": int(rng.integers(1, 6)),
                    "bbox": list(rng.uniform([0, 0, 5, 5], [330, 250, 60, 60])),
                    "score": float(rng.uniform(0.05, 0.6)),
                }
            )
    return detections


def direct_cocoeval(gt: dict, detections: list, iou_type: str = "bbox", cat_ids=None) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy({**gt, "info": {}})
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(detections)), iou_type)
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def as_nan(stats: np.ndarray) -> list[float]:
    return [math.nan if v == -1 else float(v) for v in stats]


def test_matches_pycocotools_directly():
    gt = synthetic_gt()
    detections = jittered_detections(gt)
    gt_before, detections_before = copy.deepcopy(gt), copy.deepcopy(detections)
    got = coco_evaluate(gt, detections)
    expected = direct_cocoeval(gt, detections)
    assert [got[name] for name in COCO_STAT_NAMES] == pytest.approx(as_nan(expected), abs=1e-6, nan_ok=True)
    assert all(0 < got[name] < 1 for name in ("AP", "APs", "APm", "APl", "AR100"))  # a non-trivial case
    assert gt == gt_before and detections == detections_before  # the caller's data is left untouched
    # Per class: COCOeval restricted to that one category is an independent computation of the same number.
    for cat in CATEGORIES[:5]:
        assert got["per_class"][cat["name"]] == pytest.approx(
            direct_cocoeval(gt, detections, cat_ids=[cat["id"]])[0], abs=1e-6
        )
    assert math.isnan(got["per_class"]["unseen"])


def test_accepts_paths_and_coco_objects(tmp_path):
    gt = synthetic_gt(seed=3)
    detections = jittered_detections(gt, seed=4)
    expected = coco_evaluate(gt, detections, per_class=False)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(detections))
    from_files = coco_evaluate(str(tmp_path / "gt.json"), tmp_path / "dt.json", per_class=False)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))  # no "info" key in the file
    from_object = coco_evaluate(coco, detections, per_class=False)
    assert from_files == pytest.approx(expected, nan_ok=True)
    assert from_object == pytest.approx(expected, nan_ok=True)
    assert "info" in coco.dataset


def test_empty_detections_give_zero_where_there_is_ground_truth():
    gt = synthetic_gt(seed=5)
    gt["annotations"] = [a for a in gt["annotations"] if a["area"] < 32**2]  # only small objects
    got = coco_evaluate(gt, [])
    for name in ("AP", "AP50", "AP75", "APs", "AR1", "AR10", "AR100", "ARs"):
        assert got[name] == 0.0, name
    for name in ("APm", "APl", "ARm", "ARl"):  # no medium / large ground truth: pycocotools' -1
        assert math.isnan(got[name]), name
    present = {a["category_id"] for a in gt["annotations"]}
    for cat in CATEGORIES:
        value = got["per_class"][cat["name"]]
        assert value == 0.0 if cat["id"] in present else math.isnan(value)


def test_perfect_detections_give_ap_one():
    gt = synthetic_gt(seed=6)
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    got = coco_evaluate(gt, detections)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert got[name] == pytest.approx(1.0), name
    assert all(v == pytest.approx(1.0) for name, v in got["per_class"].items() if name != "unseen")


def test_segm_matches_pycocotools_directly():
    gt = synthetic_gt(seed=7, with_segmentation=True)
    rng = np.random.default_rng(8)
    detections = []
    for ann in gt["annotations"][::2]:
        x, y, w, h = (np.array(ann["bbox"]) + rng.normal(scale=3, size=4)).clip(1)
        mask = np.zeros((320, 400), dtype=np.uint8, order="F")
        mask[int(y) : int(y + h), int(x) : int(x + w)] = 1
        rle = mask_utils.encode(mask)
        rle["counts"] = rle["counts"].decode()
        # A bbox key too, as many detectors write: loadRes would replace the mask by the box if it stayed.
        detections.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "segmentation": rle,
                "bbox": [0, 0, 1, 1],
                "score": float(rng.uniform(0.1, 1)),
            }
        )
    got = coco_evaluate(gt, detections, iou_type="segm")
    without_bbox = [{k: v for k, v in d.items() if k != "bbox"} for d in detections]
    expected = direct_cocoeval(gt, without_bbox, iou_type="segm")
    assert [got[name] for name in COCO_STAT_NAMES] == pytest.approx(as_nan(expected), abs=1e-6, nan_ok=True)
    assert got["AP"] > 0.2


def test_silent_by_default_and_verbose_on_request(capsys):
    gt = synthetic_gt(seed=9, num_images=2)
    coco_evaluate(gt, jittered_detections(gt))
    assert capsys.readouterr().out == ""
    coco_evaluate(gt, jittered_detections(gt), verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_invalid_inputs_raise():
    gt = synthetic_gt(seed=10, num_images=2)
    detections = jittered_detections(gt)
    with pytest.raises(ValueError, match="image_id 99"):
        coco_evaluate(gt, [{**detections[0], "image_id": 99}])
    with pytest.raises(ValueError, match="category_id 42"):
        coco_evaluate(gt, [{**detections[0], "category_id": 42}])
    with pytest.raises(ValueError, match="lacks.*score"):
        coco_evaluate(gt, [{k: v for k, v in detections[0].items() if k != "score"}])
    broken = copy.deepcopy(gt)
    del broken["annotations"][0]["area"]
    with pytest.raises(ValueError, match="annotation 1 lacks.*area"):
        coco_evaluate(broken, detections)
    with pytest.raises(ValueError, match="iou_type"):
        coco_evaluate(gt, detections, iou_type="keypoints")


# ----------------------------------------------------------------------------------------------------------------
# Expected calibration error


def brute_force_ece(confidences, correct, n_bins):
    """Guo et al.: bins ((m-1)/M, m/M], plus confidence 0 in the first bin; sum_m |acc_m - conf_m| n_m / N."""
    members = [[] for _ in range(n_bins)]
    for c, ok in zip(confidences.tolist(), correct.tolist()):
        for m in range(1, n_bins + 1):
            if (m - 1) / n_bins < c <= m / n_bins or (m == 1 and c == 0):
                members[m - 1].append((c, ok))
                break
    ece = 0.0
    for bin_members in members:
        if bin_members:
            accuracy = sum(ok for _, ok in bin_members) / len(bin_members)
            confidence = sum(c for c, _ in bin_members) / len(bin_members)
            ece += abs(accuracy - confidence) * len(bin_members) / len(confidences)
    return ece


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_matches_brute_force_including_edges(n_bins):
    rng = np.random.default_rng(n_bins)
    confidences = rng.uniform(0, 1, size=500) ** 0.5
    edges = np.arange(n_bins + 1) / n_bins  # every bin edge, 0 and 1 included, several times
    confidences = np.concatenate([confidences, np.tile(edges, 3)])
    correct = rng.random(confidences.size) < confidences
    expected = brute_force_ece(confidences, correct, n_bins)
    assert expected > 0
    assert expected_calibration_error(confidences, correct, n_bins) == pytest.approx(expected, abs=1e-12)
    assert expected_calibration_error(
        torch.from_numpy(confidences).float(), torch.from_numpy(correct).int(), n_bins
    ) == pytest.approx(brute_force_ece(confidences.astype(np.float32).astype(np.float64), correct, n_bins), abs=1e-7)


def test_ece_hand_made():
    # Bins of width 0.5: {0.2, 0.5} with 1 of 2 correct (acc .5, conf .35); {0.9, 1.0} all correct (acc 1, conf .95).
    confidences = np.array([0.2, 0.5, 0.9, 1.0])
    correct = np.array([1, 0, 1, 1])
    assert expected_calibration_error(confidences, correct, n_bins=2) == pytest.approx(0.15 * 0.5 + 0.05 * 0.5)
    assert expected_calibration_error(np.ones(4), np.ones(4), n_bins=15) == 0.0


def test_ece_invalid_inputs():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(np.array([0.5, 1.2]), np.array([1, 0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(np.array([0.5, np.nan]), np.array([1, 0]))
    with pytest.raises(ValueError, match="bool or 0/1"):
        expected_calibration_error(np.array([0.5, 0.2]), np.array([1, 2]))
    with pytest.raises(ValueError, match="as many"):
        expected_calibration_error(np.array([0.5, 0.2]), np.array([1]))
    with pytest.raises(ValueError, match="at least one"):
        expected_calibration_error(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(np.array([0.5]), np.array([1]), n_bins=0)
