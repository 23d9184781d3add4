"""Views with exact box maps, the per-iteration sampler, the sparse train set on the synthetic COCO tree."""

import torch

from calibrated_teacher.data import IterationSampler, build_datasets
from calibrated_teacher.train import parse_args
from calibrated_teacher.views import COLOUR_OPS, make_view, transform_boxes, view_to_view


def test_weak_to_strong_map_equals_the_direct_map():
    image = torch.rand(3, 60, 80)
    boxes = torch.tensor([[5.0, 6.0, 30.0, 40.0], [50.0, 10.0, 79.0, 59.0]])
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        _, m_weak = make_view(image, (40, 90), 200, 0.5, False, g)
        strong, m_strong = make_view(image, (40, 90), 200, 0.5, True, g)
        via_weak = transform_boxes(transform_boxes(boxes, m_weak), view_to_view(m_weak, m_strong))
        assert torch.allclose(via_weak, transform_boxes(boxes, m_strong), atol=1e-4)
        h, w = strong.shape[-2:]
        assert abs(m_strong[0, 0].abs() * 80 - w) < 1e-6 and abs(m_strong[1, 1] * 60 - h) < 1e-6


def test_flip_matrix_maps_pixels_exactly():
    image = torch.zeros(3, 10, 20)
    image[:, 2:4, 1:5] = 1.0
    view, m = make_view(image, (0, 0), 1333, 1.0, False, torch.Generator().manual_seed(0))
    box = transform_boxes(torch.tensor([[1.0, 2.0, 5.0, 4.0]]), m)
    assert box.tolist() == [[15.0, 2.0, 19.0, 4.0]] and view[0, 2:4, 15:19].eq(1).all()
    assert len(COLOUR_OPS) == 9


def test_sampler_is_a_function_of_the_iteration():
    full = list(IterationSampler(7, 2, 10, seed=3))
    assert list(IterationSampler(7, 2, 10, seed=3, start_iter=4)) == full[4:]
    assert full != list(IterationSampler(7, 2, 10, seed=4))
    ranks = [list(IterationSampler(7, 2, 4, world_size=2, rank=r, seed=3)) for r in (0, 1)]
    first_epoch = [i for r in ranks for batch in r[:2] for i, _ in batch]
    assert set(first_epoch) == set(range(7)) and len(first_epoch) == 8  # each image once per epoch, one pad


def test_sparse_train_set_carries_dropped_boxes_only_for_analysis():
    cfg = parse_args(["--data.synthetic_train", "12", "--data.synthetic_val", "4"])
    train, val, ratio = build_datasets(cfg.data, 0)
    assert abs(ratio - 0.5) < 0.02 and val.num_classes == train.sparse.num_classes
    total_sparse = total_dropped = 0
    for index in range(len(train)):
        item = train[(index, index)]
        image_id = item["strong_target"]["image_id"]
        total_sparse += len(item["strong_target"]["boxes"])
        total_dropped += len(item["dropped"]["boxes"])
        assert len(item["strong_target"]["boxes"]) + len(item["dropped"]["boxes"]) == len(train.full.boxes(image_id)[0])
    assert total_sparse > 0 and total_dropped > 0


def test_a_released_sparse_file_is_read_by_name_and_checked(tmp_path):
    import json
    import shutil

    import pytest

    from calibrated_teacher.data import dataset_root
    from calibrated_teacher.sparse import drop_annotations

    cfg = parse_args(["--data.synthetic_train", "12", "--data.synthetic_val", "4"])
    source = dataset_root(cfg.data)
    for part in ("train2017", "val2017"):
        (tmp_path / part).symlink_to(source / part)
    shutil.copytree(source / "annotations", tmp_path / "annotations", ignore=shutil.ignore_patterns("sparse"))
    full = json.loads((tmp_path / "annotations" / "instances_train2017.json").read_text())
    (tmp_path / "annotations" / "coco_missing_50p.json").write_text(json.dumps(drop_annotations(full, 0.5, 9)))
    released = [
        "--data.synthetic", "false", "--data.root", str(tmp_path), "--data.sparse_drop_rate", "null",
        "--data.sparse_annotations", "annotations/coco_missing_50p.json",
    ]  # fmt: skip
    train, _, ratio = build_datasets(parse_args([*released, "--data.expected_kept_ratio", "0.5"]).data, 0)
    assert abs(ratio - 0.5) < 0.02 and len(train) > 0
    with pytest.raises(ValueError, match="expected 0.700"):
        build_datasets(parse_args([*released, "--data.expected_kept_ratio", "0.7"]).data, 0)
