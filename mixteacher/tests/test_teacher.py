"""EMA teacher, burn-in ramp, box-jitter uncertainty, SoftTeacher loss weights."""

import copy

import pytest
import torch
from torch import nn

from mixteacher.losses import fast_rcnn_loss, soft_teacher_weights
from mixteacher.teacher import box_jitter_uncertainty, ema_update, unsup_weight


def test_ema_update_equals_the_formula():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.data.normal_()
    student[1].running_mean.fill_(0.7)
    t_before = [p.detach().clone() for p in teacher.parameters()]
    s_params = [p.detach().clone() for p in student.parameters()]
    m = ema_update(teacher, student, 0.999, step=5000)
    assert m == 0.999
    for t, before, s in zip(teacher.parameters(), t_before, s_params):
        torch.testing.assert_close(t, 0.999 * before + 0.001 * s)
    torch.testing.assert_close(teacher[1].running_mean, torch.full((3,), 0.7))  # buffers copied
    # early steps: m = 1 - 1/(t+1); step 0 copies the student
    assert ema_update(teacher, student, 0.999, step=0) == 0.0
    for t, s in zip(teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, s)
    assert ema_update(teacher, student, 0.999, step=3) == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.0),
        (4999, 0.0),
        (5000, 0.0),
        (5500, 1.0),
        (6000, 2.0),
        (6999, 4.0 * 1999 / 2000),
        (7000, 4.0),
        (180000, 4.0),
    ],
)
def test_burn_in_ramp(step, expected):
    assert unsup_weight(step, start=5000, warmup=2000, weight=4.0) == pytest.approx(expected)


def test_jitter_uncertainty_of_a_stable_head_is_zero():
    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0], [0.0, 5.0, 20.0, 60.0]])
    labels = torch.tensor([1, 2])
    fixed = torch.rand(2, 3, 4) * 50

    def stable(jittered):  # ignores its input: every copy regresses to the same box
        return fixed.repeat(jittered.shape[0] // 2, 1, 1)

    unc = box_jitter_uncertainty(
        boxes, labels, stable, times=10, scale=0.06, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(unc, torch.zeros(2))

    def identity(jittered):  # echoes the jittered box: uncertainty ~ the jitter scale
        return jittered[:, None, :].expand(-1, 3, 4)

    unc = box_jitter_uncertainty(
        boxes, labels, identity, times=2000, scale=0.06, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(unc, torch.full((2,), 0.06), atol=4e-3, rtol=0)


def test_soft_teacher_weighted_classification_loss():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([0, 2, 0])
    bg = torch.tensor([0.3, 0.9, 0.8])
    w = soft_teacher_weights(labels, bg)
    torch.testing.assert_close(w, torch.tensor([0.3, 1.0, 0.8]))
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    deltas = torch.zeros(3, 12)
    cls, box = fast_rcnn_loss(logits, deltas, labels, torch.ones(3, 4), w)
    torch.testing.assert_close(cls, (w * ce).sum() / max(w.sum(), 1.0))
    torch.testing.assert_close(box, torch.tensor(4.0 / 3))  # L1 over the one positive / 3 sampled
