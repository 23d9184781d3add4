"""The training loop on the synthetic sparse set with the tiny detectors: exact resume, the mechanism engaging,
the FCOS and Faster R-CNN pseudo-label paths, the teacher skipped only where it cannot matter."""

from pathlib import Path

import pytest
import torch

from calibrated_teacher.train import main, parse_args
from shared.checkpoint import load_checkpoint
from shared.testing import assert_same_tensors

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
    for key in ("student", "teacher", "optimizer", "method_state"):
        assert_same_tensors(a[key], b[key], key)
    assert a["method_state"]["calibrator"]["fitted"]  # the refit and the buffer were exercised
    assert resumed["AP"] == full["AP"]


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
    metrics = __import__("json").loads((out / "metrics.json").read_text())
    assert metrics["pseudo_boxes"]["merged_total"] > 0


@pytest.mark.slow
def test_embedded_default_runs_within_a_few_minutes(tmp_path):
    import time

    t0 = time.perf_counter()
    metrics = main(parse_args(["--output_dir", str(tmp_path / "default"), "--tensorboard", "false"]))
    assert time.perf_counter() - t0 < 600
    assert metrics["iterations"] == 900 and abs(metrics["kept_ratio"] - 0.5) < 0.02
    assert 0.0 <= metrics["AP"] <= 1.0 and (tmp_path / "default" / "metrics.json").is_file()
