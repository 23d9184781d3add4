"""shared.teacher_student: the loop pieces of the EMA teacher-student detectors (mixteacher, calibrated_teacher)."""

import copy
import itertools
import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from shared.checkpoint import restore_training_state, training_state
from shared.config import RunConfig
from shared.distributed import DistContext
from shared.logger import RunDirError
from shared.teacher_student import (
    category_record,
    checkpoint_periods,
    claim_training_dir,
    evaluation_due,
    iteration_loader,
    loop_components,
    open_training_logger,
    step_schedule,
    teacher_student_step,
)
from shared.training import NonFiniteLossError

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@dataclass
class LoopConfig(RunConfig):
    clip_grad: float | None = None


class ToyMethod(nn.Module):
    """A student, its EMA teacher (momentum 0.5) and a forward returning (loss, logs) as the packages' methods do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.student = nn.Linear(2, 1)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.updates: list[int] = []

    def forward(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        loss = (self.student(batch["x"]) - batch["y"]).pow(2).mean()
        return loss, {"step_seen": float(step)}

    @torch.no_grad()
    def update_teacher(self, step: int) -> None:
        self.updates.append(step)
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.mul_(0.5).add_(s, alpha=0.5)


def _optimization(method: ToyMethod, lr: float = 0.1):
    optimizer = torch.optim.SGD(method.student.parameters(), lr=lr)
    return optimizer, step_schedule(optimizer, [2], 0.1, 0, 0.001), torch.amp.GradScaler("cpu", enabled=False)


def test_step_schedule_warms_up_linearly_then_decays_at_each_step():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = step_schedule(optimizer, steps=[4, 6], gamma=0.1, warmup_iters=2, warmup_ratio=0.2)
    lrs = []
    for _ in range(7):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    # warm-up: 1 - (1 - i/2)(1 - 0.2) at i = 0, 1; then 1 until step 4, 0.1 from 4, 0.01 from 6
    assert lrs == pytest.approx([0.2, 0.6, 1.0, 1.0, 0.1, 0.1, 0.01])


@pytest.mark.parametrize(
    ("start", "until", "interval", "expected"),
    [
        (0, 10, 4, [4, 4, 2]),
        (3, 10, 4, [1, 4, 2]),  # a resumed run first completes its interrupted period
        (0, 10, 0, [10]),  # 0: one period to the end
        (8, 8, 4, []),
        (0, 5, 5, [5]),
    ],
)
def test_checkpoint_periods_end_at_multiples_of_the_interval(start, until, interval, expected):
    assert list(checkpoint_periods(start, until, interval)) == expected


def test_periods_also_end_where_an_evaluation_is_due():
    """An eval interval that is not a multiple of the checkpoint interval: every evaluation still happens."""
    ends = list(itertools.accumulate(checkpoint_periods(0, 12000, 4000, 3000)))
    assert ends == [3000, 4000, 6000, 8000, 9000, 12000]
    assert [e for e in ends if evaluation_due(e, 12000, 3000)] == [3000, 6000, 9000, 12000]
    assert list(checkpoint_periods(0, 220, 50, 220)) == [50, 50, 50, 50, 20]  # aligned: unchanged


def test_evaluation_is_due_at_the_end_and_every_interval():
    assert [s for s in range(1, 11) if evaluation_due(s, 10, 4)] == [4, 8, 10]
    assert [s for s in range(1, 11) if evaluation_due(s, 10, 0)] == [10]


def test_one_iteration_steps_the_student_the_schedule_and_the_teacher():
    method = ToyMethod()
    optimizer, scheduler, scaler = _optimization(method)
    before_student = [p.detach().clone() for p in method.student.parameters()]
    before_teacher = [p.detach().clone() for p in method.teacher.parameters()]
    batch = {"x": torch.ones(4, 2), "y": torch.zeros(4, 1)}
    loss, logs = teacher_student_step(method, method, batch, 7, optimizer, scheduler, scaler, CPU.device, LoopConfig())
    assert logs == {"step_seen": 7.0} and method.updates == [7]
    assert scheduler.last_epoch == 1
    for b, p in zip(before_student, method.student.parameters()):
        assert not torch.equal(b, p)  # the student took an SGD step
    for bt, t, s in zip(before_teacher, method.teacher.parameters(), method.student.parameters()):
        assert torch.allclose(t, 0.5 * bt + 0.5 * s)  # then the EMA update from the new student
    assert float(loss.detach()) > 0


def test_a_non_finite_teacher_stops_the_run_naming_the_step():
    method = ToyMethod()
    optimizer, scheduler, scaler = _optimization(method)

    def broken_update(step: int) -> None:
        with torch.no_grad():
            next(method.teacher.parameters()).fill_(float("nan"))

    method.update_teacher = broken_update
    batch = {"x": torch.ones(4, 2), "y": torch.zeros(4, 1)}
    with pytest.raises(NonFiniteLossError, match="EMA teacher.*3"):
        teacher_student_step(method, method, batch, 3, optimizer, scheduler, scaler, CPU.device, LoopConfig())


def test_loop_components_round_trip_through_a_checkpoint():
    method = ToyMethod()
    optimizer, scheduler, scaler = _optimization(method)
    batch = {"x": torch.ones(4, 2), "y": torch.zeros(4, 1)}
    teacher_student_step(method, method, batch, 0, optimizer, scheduler, scaler, CPU.device, LoopConfig())
    components = loop_components(method, optimizer, scheduler, scaler)
    assert list(components) == ["student", "teacher", "optimizer", "scheduler", "scaler"]
    state = training_state("toy", LoopConfig(), **components, step=1)
    fresh = ToyMethod()
    f_optimizer, f_scheduler, f_scaler = _optimization(fresh)
    restore_training_state(state, **loop_components(fresh, f_optimizer, f_scheduler, f_scaler))
    for a, b in zip([*method.student.parameters(), *method.teacher.parameters()], fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert f_scheduler.last_epoch == scheduler.last_epoch


def test_category_record_names_the_classes():
    @dataclass
    class Classes:
        num_classes: int = 2
        cat_ids: tuple = (3, 7)
        category_names: tuple = ("cat", "dog")

    assert category_record(Classes()) == {"num_classes": 2, "categories": {"ids": [3, 7], "names": ["cat", "dog"]}}


def test_iteration_loader_serves_the_batch_sampler_in_order():
    data = [torch.tensor(float(i)) for i in range(6)]
    loader = iteration_loader(data, [[0, 1], [4, 5]], torch.stack, 0, CPU, seed=0)
    assert [b.tolist() for b in loader] == [[0.0, 1.0], [4.0, 5.0]]
    assert not loader.pin_memory and loader.generator.initial_seed() == 0


def test_claim_training_dir_and_logger_write_the_config_and_refuse_another_config(tmp_path):
    cfg = LoopConfig(output_dir=str(tmp_path / "run"), tensorboard=False, seed=3)
    out = claim_training_dir("toy", cfg, CPU, resumed=False)
    assert out == tmp_path / "run" and json.loads((out / "RUN.json").read_text())["package"] == "toy"
    logger = open_training_logger(cfg, CPU, out)
    logger.close()
    assert "seed: 3" in (out / "config.yaml").read_text()
    (out / "metrics.json").write_text("{}")  # the folder now holds results of this config
    with pytest.raises(RunDirError):
        claim_training_dir("toy", LoopConfig(output_dir=str(out), tensorboard=False, seed=4), CPU, resumed=False)
