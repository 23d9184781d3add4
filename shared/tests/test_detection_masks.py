"""shared.detection's instance masks: CocoDetection(with_masks=True), RLE encoding and segm evaluation, against
pycocotools run directly; the box-only behaviour stays as it was."""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from shared.detection import CocoDetection, coco_detections, encode_masks, evaluate_detections
from shared.distributed import DistContext
from shared.synthetic.coco import write_coco_detection

CPU = DistContext(0, 1, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coco_detection(tmp_path_factory.mktemp("coco"), num_train=3, num_val=2, image_size=192, seed=3)


def _split(root: Path, **kwargs) -> CocoDetection:
    return CocoDetection(root / "train2017", root / "annotations/instances_train2017.json", **kwargs)


def test_masks_follow_the_boxes_and_polygons(coco_root: Path) -> None:
    plain, masked = _split(coco_root), _split(coco_root, with_masks=True)
    for index in range(len(masked)):
        image, target = masked[index]
        _, plain_target = plain[index]
        assert "masks" not in plain_target  # default unchanged: boxes only
        assert torch.equal(target["boxes"], plain_target["boxes"])
        masks = target["masks"]
        assert masks.dtype == torch.uint8 and masks.shape == (len(target["boxes"]), *image.shape[1:])
        anns = masked.coco.imgToAnns[target["image_id"]]
        for mask, box, ann in zip(masks, target["boxes"], anns):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            # the mask's extent is the box (rasterisation of a sharp vertex moves an edge by up to two pixels)
            extent = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            assert torch.allclose(extent, box, atol=2.0)
            assert abs(mask.sum().item() - ann["area"]) <= 0.1 * ann["area"] + 8


def test_flip_moves_masks_with_image_and_boxes(coco_root: Path) -> None:
    still = _split(coco_root, with_masks=True)
    flipped = _split(coco_root, with_masks=True, train=True, hflip=1.0)
    image, target = still[0]
    image_f, target_f = flipped[0]
    assert torch.equal(image_f, image.flip(-1))
    assert torch.equal(target_f["masks"], target["masks"].flip(-1))
    width = image.shape[-1]
    _, xs = torch.nonzero(target_f["masks"][0], as_tuple=True)
    assert abs(xs.min().item() - target_f["boxes"][0, 0].item()) <= 2.0
    assert target_f["boxes"][0, 0].item() == pytest.approx(width - target["boxes"][0, 2].item())


def test_missing_segmentation_is_an_error(tmp_path: Path, coco_root: Path) -> None:
    dataset = _split(coco_root, with_masks=True)
    image_id = dataset.ids[0]
    ann = dataset.coco.imgToAnns[image_id][0]
    del ann["segmentation"]
    with pytest.raises(ValueError, match="no 'segmentation'"):
        dataset[0]


def test_encode_masks_round_trip() -> None:
    probs = torch.rand(3, 1, 20, 30)
    rles = encode_masks(probs, threshold=0.5)
    decoded = mask_utils.decode(rles)  # (H, W, n)
    assert decoded.shape == (20, 30, 3)
    assert np.array_equal(decoded.transpose(2, 0, 1), (probs[:, 0] >= 0.5).numpy().astype(np.uint8))
    assert all(isinstance(r["counts"], str) for r in rles)
    assert encode_masks(torch.zeros(0, 1, 20, 30)) == []
    with pytest.raises(ValueError, match="masks"):
        encode_masks(torch.zeros(20, 30))


def _square(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    mask = torch.zeros(h, w)
    mask[y0:y1, x0:x1] = 1.0
    return mask


def test_segm_evaluation_of_a_constructed_example() -> None:
    """Two images, three objects; predicted masks with hand-computed IoUs; box and mask metrics against COCOeval."""
    h, w = 60, 80
    gt = {
        "images": [{"id": 1, "width": w, "height": h}, {"id": 2, "width": w, "height": h}],
        "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0,
             "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [40, 20, 30, 30], "area": 900, "iscrowd": 0,
             "segmentation": [[40, 20, 70, 20, 70, 50, 40, 50]]},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [5, 5, 40, 40], "area": 1600, "iscrowd": 0,
             "segmentation": [[5, 5, 45, 5, 45, 45, 5, 45]]},
        ],
    }  # fmt: skip
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    # exact box everywhere; masks: exact, IoU 750 / 1050 = 0.714 (shifted down 5 px), exact
    outputs = [
        {
            "boxes": torch.tensor([[10.0, 10, 30, 30], [40, 20, 70, 50]]),
            "labels": torch.tensor([0, 1]),
            "scores": torch.tensor([0.9, 0.8]),
            "masks": torch.stack([_square(h, w, 10, 10, 30, 30), _square(h, w, 40, 25, 70, 55)]).unsqueeze(1),
        },
        {
            "boxes": torch.tensor([[5.0, 5, 45, 45]]),
            "labels": torch.tensor([0]),
            "scores": torch.tensor([0.7]),
            "masks": _square(h, w, 5, 5, 45, 45)[None, None] * 0.7,  # probabilities: 0.7 >= 0.5 kept
        },
    ]
    targets = [{"image_id": 1}, {"image_id": 2}]
    detections = coco_detections(outputs, targets, cat_ids=[3, 7], masks=True)
    before = copy.deepcopy(coco.dataset)
    metrics = evaluate_detections(detections, coco, CPU, segm=True)
    # the segm evaluation does not turn the ground-truth polygons into RLEs
    segmentations = [a["segmentation"] for a in coco.dataset["annotations"]]
    assert segmentations == [a["segmentation"] for a in before["annotations"]]
    assert metrics["AP"] == pytest.approx(1.0) and metrics["num_detections"] == 3
    segm = metrics["segm"]
    # category a: both masks exact -> AP 1; category b: IoU 0.714 -> matched at thresholds 0.50 ... 0.70 (5 of 10)
    assert segm["AP50"] == pytest.approx(1.0)
    assert segm["AP75"] == pytest.approx(0.5)
    assert segm["per_class"]["b"] == pytest.approx(0.5)
    assert segm["AP"] == pytest.approx(0.75)
    # the same against pycocotools run directly on the same RLEs
    with contextlib.redirect_stdout(io.StringIO()):
        gt_coco = COCO()
        gt_coco.dataset = copy.deepcopy(gt)
        gt_coco.createIndex()
        dt = gt_coco.loadRes([{k: v for k, v in d.items() if k != "bbox"} for d in copy.deepcopy(detections)])
        evaluator = COCOeval(gt_coco, dt, "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert segm["AP"] == pytest.approx(evaluator.stats[0])
    assert segm["AP75"] == pytest.approx(evaluator.stats[2])


def test_box_only_outputs_unchanged_and_masks_required_when_asked() -> None:
    output = {"boxes": torch.tensor([[1.0, 2, 5, 8]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.5])}
    (det,) = coco_detections([output], [{"image_id": 4}], cat_ids=[9, 11], label_offset=1)
    assert det == {"image_id": 4, "category_id": 9, "bbox": [1.0, 2.0, 4.0, 6.0], "score": 0.5}
    with pytest.raises(ValueError, match="no 'masks'"):
        coco_detections([output], [{"image_id": 4}], cat_ids=[9, 11], label_offset=1, masks=True)


@pytest.mark.parametrize("bbox", [None, [1, 2, 3], ["1", 2, 3, 4], [1, 2, float("nan"), 4]])
def test_a_malformed_box_is_named(coco_root: Path, tmp_path: Path, bbox) -> None:
    """An annotation whose bbox is missing or not 4 finite numbers: an error naming the file and the annotation."""
    import json
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(coco_root, root)
    path = root / "annotations/instances_train2017.json"
    data = json.loads(path.read_text())
    bad = data["annotations"][0]
    if bbox is None:
        del bad["bbox"]
    else:
        bad["bbox"] = bbox
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"instances_train2017.json: annotation {bad['id']} has bbox"):
        _split(root, train=True)


@pytest.mark.parametrize("content", ['{"images": [{"id"', "[1, 2]", '{"images": [3]}'])
def test_an_unreadable_image_list_is_named(coco_root: Path, tmp_path: Path, content: str) -> None:
    from shared.detection import CocoImages

    path = tmp_path / "image_info_unlabeled2017.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="image_info_unlabeled2017.json is not a COCO image list"):
        CocoImages(coco_root / "train2017", path)
