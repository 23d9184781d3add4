"""The teacher-student step of every detector on a constructed batch: teacher detections mapped weak -> strong,
merged by the rules, the calibrated threshold used once fitted, FIoU switched on from ``fiou_start``."""

from dataclasses import replace

import pytest
import torch

from calibrated_teacher.config import CalibratedTeacherSettings
from calibrated_teacher.model import VARIANTS, create_model, label_offset
from calibrated_teacher.teacher_student import CalibratedTeacher

SETTINGS = CalibratedTeacherSettings(
    merge_start=1, ori_thr=0.0, mining_min_size=0.0, refit_interval=2, calibration_window=2, strict_thr=0.5
)


def _batch(offset: int) -> dict:
    g = torch.Generator().manual_seed(0)
    weak = [torch.rand(3, 96, 120, generator=g)]
    strong = [weak[0].flip(-1)]  # the strong view is the flipped weak view
    flip = torch.tensor([[-1.0, 0.0, 120.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    box = torch.tensor([[10.0, 10.0, 50.0, 60.0]])
    labels = torch.tensor([offset])
    return {
        "weak": weak,
        "strong": strong,
        "weak_to_strong": flip[None],
        "weak_target": [{"boxes": box, "labels": labels}],
        "strong_target": [{"boxes": torch.tensor([[70.0, 10.0, 110.0, 60.0]]), "labels": labels, "image_id": 1}],
        "dropped": [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}],
    }


@pytest.mark.parametrize("name", ["retinanet_tiny", "fcos_tiny", "faster_rcnn_tiny"])
def test_pseudo_boxes_reach_the_student_of_every_detector(name):
    torch.manual_seed(0)
    overrides = {"score_thresh": 0.0, "fpn_channels": 64}
    method = CalibratedTeacher(create_model(name, 4, **overrides), SETTINGS).train()
    batch = _batch(label_offset(VARIANTS[name]))
    seen = []
    original = method.student.forward
    method.student.forward = lambda images, targets=None: (seen.append(targets), original(images, targets))[1]
    loss, logs = method(batch, step=0)  # before merge_start: sparse GT only
    assert len(seen[-1][0]["boxes"]) == 1 and logs["pseudo_per_image"] == 0
    loss, logs = method(batch, step=1)
    merged = seen[-1][0]["boxes"]
    assert len(merged) > 1 and logs["pseudo_per_image"] == len(merged) - 1 and torch.isfinite(loss)
    teacher = method.teacher_detections(batch["weak"])[0]["boxes"]
    mapped = torch.stack([120 - teacher[:, 2], teacher[:, 1], 120 - teacher[:, 0], teacher[:, 3]], 1)
    assert any(torch.allclose(m, b, atol=1e-4) for m in merged[1:] for b in mapped.clamp(0, 120))


def test_calibrated_threshold_is_used_once_fitted():
    torch.manual_seed(0)
    method = CalibratedTeacher(create_model("retinanet_tiny", 4, score_thresh=0.0), SETTINGS).train()
    batch = _batch(0)
    _, raw_logs = method(batch, step=1)
    method.calibrator.a, method.calibrator.b, method.calibrator.fitted = 1.0, -50.0, True  # every score -> ~0
    _, cal_logs = method(batch, step=1)
    assert raw_logs["pseudo_per_image"] > 0 and cal_logs["pseudo_per_image"] == 0
    table = method.pseudo_log.table()
    assert torch.isnan(table[table[:, 0] == 1][0, 2]) and not torch.isnan(table[-1, 2])


def test_fiou_switches_on_at_fiou_start():
    torch.manual_seed(0)
    settings = replace(SETTINGS, fiou=True, fiou_start=3, merge_start=10)
    method = CalibratedTeacher(create_model("retinanet_tiny", 4), settings).train()
    batch = _batch(0)
    plain, _ = method(batch, step=2)
    assert method.student.fiou is None
    weighted, _ = method(batch, step=3)
    assert method.student.fiou is not None and weighted.item() < plain.item()  # isolated negatives halved


def test_ema_update_and_refit():
    method = CalibratedTeacher(create_model("retinanet_tiny", 4), SETTINGS)
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    before = [t.clone() for t in method.teacher.parameters()]
    method.update_teacher(step=0)  # momentum min(0.999, 1 - 1/2) = 0.5
    for b, t, s in zip(before, method.teacher.parameters(), method.student.parameters()):
        assert torch.allclose(t, 0.5 * b + 0.5 * s)
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(500, generator=g)
    method.buffer.add(0, scores, torch.rand(500, generator=g) < scores * 0.5)
    assert not method.maybe_refit(step=0) and method.maybe_refit(step=1)
    assert method.calibrator.fitted and method.calibrator.a > 0


def test_robust_refit_waits_for_min_pairs():
    settings = replace(SETTINGS, calibrator_fit="robust", calib_min_pairs=50)
    method = CalibratedTeacher(create_model("retinanet_tiny", 4), settings)
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(40, generator=g)
    method.buffer.add(0, scores, torch.rand(40, generator=g) < scores)
    assert not method.maybe_refit(step=1) and not method.calibrator.fitted  # 40 pairs < 50
    more = torch.rand(40, generator=g)
    method.buffer.add(1, more, torch.rand(40, generator=g) < more)
    assert method.maybe_refit(step=1) and method.calibrator.fitted and method.calibrator.a > 0


def _batch_with_dropped(offset: int) -> dict:
    batch = _batch(offset)
    batch["dropped"] = [{"boxes": torch.tensor([[5.0, 30.0, 45.0, 90.0]]), "labels": torch.tensor([offset])}]
    return batch


def test_matches_puts_its_result_on_the_candidates_device():
    from calibrated_teacher.teacher_student import _matches

    boxes, labels = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]), torch.tensor([1, 2])
    hit = _matches(boxes, labels, torch.tensor([[1.0, 0.0, 11.0, 10.0]]), torch.tensor([1]))
    assert hit.tolist() == [True, False]
    assert _matches(boxes, labels, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)).tolist() == [False, False]


@pytest.mark.gpu
def test_matches_takes_reference_boxes_on_another_device():
    from calibrated_teacher.teacher_student import _matches

    boxes, labels = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]), torch.tensor([1, 2])
    ref_boxes, ref_labels = torch.tensor([[1.0, 0.0, 11.0, 10.0]]), torch.tensor([1])
    # DDP case: the candidates are moved to the CPU, the dropped annotations arrive on the GPU
    assert _matches(boxes, labels, ref_boxes.cuda(), ref_labels.cuda()).tolist() == [True, False]
    # and the other way round
    hit = _matches(boxes.cuda(), labels.cuda(), ref_boxes, ref_labels)
    assert hit.device.type == "cuda" and hit.tolist() == [True, False]


@pytest.mark.gpu
def test_method_takes_a_batch_moved_to_the_gpu_by_ddp():
    """DistributedDataParallel(device_ids=[rank]) moves every tensor of the forward inputs to the GPU, the dropped
    annotations (left on the CPU by train._to_device) included: the pseudo-box log must still be written."""
    from torch.distributed.utils import _to_kwargs

    torch.manual_seed(0)
    method = CalibratedTeacher(create_model("retinanet_tiny", 4, score_thresh=0.0), SETTINGS).cuda().train()
    inputs, _ = _to_kwargs((_batch_with_dropped(0), 1), {}, torch.device("cuda", 0), False)
    batch, step = inputs[0]
    assert batch["dropped"][0]["boxes"].is_cuda
    loss, _ = method(batch, step)
    table = method.pseudo_log.table()
    assert torch.isfinite(loss) and len(table) > 0 and table.device.type == "cpu"


def test_pseudo_box_log_travels_in_the_method_state():
    torch.manual_seed(0)
    method = CalibratedTeacher(create_model("retinanet_tiny", 4, score_thresh=0.0), SETTINGS).train()
    method(_batch_with_dropped(0), step=1)
    table = method.pseudo_log.table()
    assert len(table) > 0
    other = CalibratedTeacher(create_model("retinanet_tiny", 4, score_thresh=0.0), SETTINGS)
    other.load_method_state(method.method_state())
    same = lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)  # noqa: E731
    same(other.pseudo_log.table(), table)  # the calibrated column is NaN before the first fit
    same(other.pseudo_log.gathered_table(), table)  # one process: this rank's table
    state = method.method_state()["pseudo_log"]
    assert torch.isfinite(state["table"]).all() and not state["scored"].all()  # checkpoints refuse NaN
    legacy = {k: v for k, v in method.method_state().items() if k != "pseudo_log"}  # an older checkpoint
    fresh = CalibratedTeacher(create_model("retinanet_tiny", 4, score_thresh=0.0), SETTINGS)
    fresh.load_method_state(legacy)
    assert len(fresh.pseudo_log.table()) == 0
