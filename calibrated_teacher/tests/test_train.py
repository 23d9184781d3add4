"""The training loop on the synthetic sparse set with the tiny detectors: exact resume (pseudo-box statistics
included), the mechanism engaging, the FCOS and Faster R-CNN pseudo-label paths, the teacher skipped before merging
without changing the student, the calibrator's fitted values in log.csv, evaluation from the val split alone."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from calibrated_teacher.train import main, parse_args
from shared.checkpoint import load_checkpoint
from shared.testing import assert_resume_refused, assert_same_tensors

TINY = [
    "--allow_random_backbone", "true", "--pretrained_backbone", "null",
    "--detector.backbone", "mobilenet_v2", "--detector.width_mult", "0.25", "--detector.fpn_channels", "32",
    "--detector.min_size", "96", "--detector.max_size", "120", "--detector.anchor_sizes", "[16, 32, 64, 128, 256]",
    "--detector.mobilenet_levels", "[6, 13, 17]",
    "--data.synthetic_train", "12", "--data.synthetic_val", "4", "--data.short_range", "[80, 96]",
    "--data.max_size", "120", "--data.batch_size", "2", "--data.workers", "0",
    "--teacher.merge_start", "2", "--teacher.refit_interval", "2", "--teacher.calibration_window", "2",
    "--teacher.ori_thr", "0.005", "--teacher.strict_thr", "0.02", "--detector.score_thresh", "0.001",
    "--teacher.fiou_start", "3",
    "--teacher.calib_overlap_iou", "0.05", "--teacher.calib_tp_iou", "0.3", "--teacher.calibrator_fit", "mle",
    "--warmup_iters", "2", "--lr_steps", "[100]", "--tensorboard", "false", "--log_interval", "1",
]  # fmt: skip


def _run(tmp_path: Path, name: str, *extra: str) -> dict:
    base = list(TINY)
    for key in extra[::2]:  # an override replaces the tiny setting
        if key in base:
            del base[base.index(key) : base.index(key) + 2]
    return main(parse_args([*base, "--output_dir", str(tmp_path / name), *extra]))


@pytest.mark.slow
def test_resumed_run_ends_bit_identical(tmp_path):
    full = _run(tmp_path, "full", "--max_iters", "6", "--checkpoint_interval", "3", "--teacher.fiou", "true")
    first = _run(tmp_path, "part", "--max_iters", "3", "--checkpoint_interval", "3", "--teacher.fiou", "true")
    assert first["iterations"] == 3
    resumed = main(
        parse_args([*TINY, "--max_iters", "6", "--checkpoint_interval", "3", "--teacher.fiou", "true",
                    "--resume", str(tmp_path / "part" / "last.pt"), "--output_dir", str(tmp_path / "part")])
    )  # fmt: skip
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "last.pt")
    for key in ("student", "teacher", "optimizer", "method_state"):  # method_state: the pseudo-box log included
        assert_same_tensors(a[key], b[key], key)
    assert len(a["method_state"]["pseudo_logs"]) == 1 and len(a["method_state"]["pseudo_logs"][0]["table"]) > 0
    assert a["method_state"]["calibrator"]["fitted"]  # the refit and the buffer were exercised
    assert resumed["AP"] == full["AP"]
    # metrics.json's pseudo-box statistics cover the whole run, the iterations before the resume included
    assert first["pseudo_boxes"]["merged_total"] > 0 and full["pseudo_boxes"]["merged_total"] > 0
    assert json.dumps(resumed["pseudo_boxes"], sort_keys=True) == json.dumps(full["pseudo_boxes"], sort_keys=True)
    # a resume with another calibrator is refused before the run folder is touched
    other = [*TINY, "--max_iters", "6", "--resume", str(tmp_path / "part" / "last.pt"), "--teacher.strict_thr", "0.5"]
    assert_resume_refused(lambda: main(parse_args(other)), tmp_path / "part", "teacher.strict_thr")


@pytest.mark.slow
def test_mechanism_engages_and_supervised_equals_the_method_before_merging(tmp_path):
    ct = _run(tmp_path, "ct", "--max_iters", "4", "--checkpoint_interval", "4")
    assert ct["pseudo_boxes"]["candidates"] > 0 and ct["pseudo_boxes"]["kept"] > 0  # calibrated and merged
    assert ct["calibration"]["num"] >= 0 and (Path(ct["run_dir"]) / "metrics.json").is_file()
    before = _run(tmp_path, "ct2", "--max_iters", "2", "--checkpoint_interval", "2")
    sup = _run(tmp_path, "sup", "--max_iters", "2", "--checkpoint_interval", "2", "--method", "supervised")
    a, b = (load_checkpoint(Path(m["run_dir"]) / "last.pt") for m in (before, sup))
    assert_same_tensors(a["student"], b["student"], "student")  # the teacher's inference changes nothing


@pytest.mark.slow
def test_eval_and_visualize_read_a_checkpoint(tmp_path):
    from calibrated_teacher import eval as evaluate_script
    from calibrated_teacher import visualize

    run = _run(tmp_path, "run", "--max_iters", "3", "--checkpoint_interval", "3")
    ckpt = str(Path(run["run_dir"]) / "last.pt")
    metrics = evaluate_script.main(
        evaluate_script.parse_args(["--checkpoint", ckpt, "--output_dir", str(tmp_path / "e")])
    )
    assert metrics["student"]["AP"] == pytest.approx(run["AP"])  # the same weights, the same data
    assert metrics["teacher"]["AP"] == pytest.approx(run["teacher"]["AP"])
    paths = visualize.main(
        visualize.parse_args(["--num", "2", "--checkpoint", ckpt, "--output_dir", str(tmp_path / "v")])
    )
    assert len(paths) == 2 and all(p.stat().st_size > 0 for p in paths)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["fcos", "faster_rcnn"])
def test_pseudo_label_path_of_other_detectors(tmp_path, arch):
    extra = ["--max_iters", "3", "--checkpoint_interval", "3", "--detector.arch", arch, "--teacher.fiou", "false"]
    extra += ["--teacher.mining_min_size", "0"]  # untrained FCOS boxes are mostly under 10 px
    m = _run(tmp_path, arch, *extra, "--detector.fpn_channels", "64")  # FCOS's GroupNorm(32) needs 2 channels a group
    assert m["pseudo_boxes"]["merged_total"] > 0 and torch.isfinite(torch.tensor(m["AP"]))


def test_fiou_on_a_detector_without_it_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="fiou is implemented for the RetinaNet"):
        _run(tmp_path, "x", "--max_iters", "1", "--detector.arch", "fcos", "--teacher.fiou", "true")


@pytest.mark.slow
@pytest.mark.ddp
def test_two_process_gloo_run_gathers_the_calibration_window(tmp_path):
    from shared.testing import run_torchrun

    out = tmp_path / "ddp"
    run_torchrun(
        "calibrated_teacher.train",
        [*TINY, "--max_iters", "4", "--checkpoint_interval", "4", "--output_dir", str(out), "--device", "cpu"],
    )
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 4 and len(state["method_state"]["buffers"]) == 2  # one buffer per rank
    assert state["method_state"]["calibrator"]["fitted"]
    metrics = json.loads((out / "metrics.json").read_text())
    logs = state["method_state"]["pseudo_logs"]  # one pseudo-box log per rank, gathered into metrics.json
    assert len(logs) == 2 and all(len(log["table"]) > 0 for log in logs)
    assert metrics["pseudo_boxes"]["merged_total"] == sum(float(log["table"][:, 4].sum()) for log in logs) > 0
    assert metrics["pseudo_boxes"]["candidates"] == sum(int(log["scored"].sum()) for log in logs)


@pytest.mark.slow
def test_embedded_default_runs_within_a_few_minutes(tmp_path):
    import time

    t0 = time.perf_counter()
    metrics = main(parse_args(["--output_dir", str(tmp_path / "default"), "--tensorboard", "false"]))
    assert time.perf_counter() - t0 < 600
    assert metrics["iterations"] == 900 and abs(metrics["kept_ratio"] - 0.5) < 0.02
    assert 0.0 <= metrics["AP"] <= 1.0 and (tmp_path / "default" / "metrics.json").is_file()


class _FixedFits(nn.Module):
    """A stand-in method whose calibrator is "refitted" to given (a, b) after given iterations."""

    def __init__(self, fits: dict[int, tuple[float, float]]):
        super().__init__()
        self.student, self.teacher = nn.Linear(1, 1), nn.Linear(1, 1)
        self.calibrator = type("Calibrator", (), {"a": 1.0, "b": 0.0})()
        self.fits = fits

    def forward(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self.student(torch.ones(1, 1)).square().sum(), {"pseudo_per_image": 1.0}

    def update_teacher(self, step: int) -> None:
        pass

    def maybe_refit(self, step: int) -> bool:
        if step not in self.fits:
            return False
        self.calibrator.a, self.calibrator.b = self.fits[step]
        return True


def test_log_csv_holds_the_last_fitted_calibrator_of_a_period(tmp_path):
    import csv

    from calibrated_teacher.train import Run, train_steps
    from shared.distributed import DistContext
    from shared.logger import RunLogger
    from shared.training import make_grad_scaler

    cfg = parse_args(["--tensorboard", "false"])
    method = _FixedFits({0: (1.5, -0.5), 2: (2.5, 1.0)})
    optimizer = torch.optim.SGD(method.student.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    run = Run(cfg, ctx, method, optimizer, scheduler, make_grad_scaler(ctx.device, "off"), None, None, 0.5)
    empty = {"weak": [], "strong": [], "weak_target": [], "strong_target": []}
    batches = iter([empty] * 8)
    logger = RunLogger(tmp_path, tensorboard=False)
    first = train_steps(run, method, batches, 4, logger)  # refits after iterations 0 and 2
    logger.log_epoch(run.step, first)
    second = train_steps(run, method, batches, 4, logger)  # no refit
    logger.log_epoch(run.step, second)
    logger.close()
    assert first["calib_a"] == 2.5 and first["calib_b"] == 1.0  # the last fit, not (1.5 + 2.5) / 4
    assert first["pseudo_per_image"] == 1.0 and "calib_a" not in second
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [r["calib_a"] for r in rows] == ["2.5", ""] and [r["calib_b"] for r in rows] == ["1.0", ""]


def test_eval_needs_only_the_val_split_and_checks_the_category_ids(tmp_path):
    import shutil

    from calibrated_teacher import eval as evaluate_script
    from calibrated_teacher.config import PACKAGE
    from calibrated_teacher.data import dataset_root
    from calibrated_teacher.model import build_detector
    from calibrated_teacher.teacher_student import CalibratedTeacher
    from shared.checkpoint import save_checkpoint, training_state
    from shared.detection import CocoDetection

    cfg = parse_args(TINY)
    source = dataset_root(cfg.data)  # the synthetic set; only its val split is copied
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").symlink_to(source / "val2017")
    shutil.copy(source / "annotations" / "instances_val2017.json", root / "annotations")
    val = CocoDetection(root / "val2017", root / "annotations" / "instances_val2017.json")
    torch.manual_seed(0)
    method = CalibratedTeacher(build_detector(val.num_classes, cfg.detector), cfg.teacher, cfg.method)

    def checkpoint(name: str, ids: list[int]) -> str:
        state = training_state(
            PACKAGE, cfg, student=method.student, teacher=method.teacher, step=3, best={"AP": 0.0, "step": 3},
            method_state={"calibrator": method.calibrator.state_dict(), "buffers": [method.buffer.state_dict()]},
            num_classes=val.num_classes, categories={"ids": ids, "names": val.category_names},
        )  # fmt: skip
        return str(save_checkpoint(state, tmp_path / name))

    def evaluate(path: str) -> dict:
        argv = ["--checkpoint", path, "--output_dir", str(tmp_path / "eval"), "--data.synthetic", "false"]
        return evaluate_script.main(evaluate_script.parse_args([*argv, "--data.root", str(root)]))

    assert not (root / "train2017").exists() and not (root / "annotations" / "instances_train2017.json").exists()
    metrics = evaluate(checkpoint("good.pt", val.cat_ids))
    assert metrics["step"] == 3 and set(metrics["student"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert (tmp_path / "eval" / "metrics.json").is_file()
    with pytest.raises(ValueError, match="was trained on category ids"):
        evaluate(checkpoint("other_ids.pt", [c + 1000 for c in val.cat_ids]))


@pytest.mark.parametrize("setting", ["miss50p", "easy", "hard", "extreme", "keep1"])
def test_the_fiou_stage_may_resume_its_stage_1_run_and_another_setting_may_not(setting):
    """The two-stage recipes: ``-c <setting>_fiou.yaml --resume <stage-1 run>/last.pt`` switches FIoU on and runs
    longer, which the resume check allows; resuming another setting's run is refused (its sparse split differs)."""
    from shared.checkpoint import check_resume_state
    from shared.config import config_to_dict
    from shared.logger import RunDirError

    configs = "calibrated_teacher/configs"
    stage1 = {"config": config_to_dict(parse_args(["-c", f"{configs}/{setting}.yaml"]))}
    stage2 = parse_args(["-c", f"{configs}/{setting}_fiou.yaml", "--resume", "stage1/last.pt"])
    assert check_resume_state(stage2, stage1) is stage1
    other = "keep1" if setting != "keep1" else "easy"
    with pytest.raises(RunDirError, match="trained with other settings"):
        check_resume_state(stage2, {"config": config_to_dict(parse_args(["-c", f"{configs}/{other}.yaml"]))})
