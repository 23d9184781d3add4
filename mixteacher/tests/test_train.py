"""End to end: the embedded default's code path at toy size (train, supervised comparison, eval), AP from
pycocotools; config errors; the two-process gloo DDP smoke run and exact resume (slow)."""

import contextlib
import io
import json
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mixteacher import eval as mt_eval
from mixteacher import train as mt_train
from mixteacher import visualize as mt_visualize
from mixteacher.data import build_datasets
from mixteacher.engine import config_from_checkpoint, load_models
from shared.checkpoint import load_checkpoint
from shared.testing import assert_same_tensors, run_torchrun

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--data.synthetic_train",
    "20",
    "--data.synthetic_val",
    "4",
    "--data.percent",
    "20",
    "--data.workers",
    "0",
    "--detector.base_width",
    "8",
    "--detector.fpn_channels",
    "16",
    "--detector.representation_size",
    "32",
    "--detector.box_batch_size_per_image",
    "32",
    "--detector.rpn_pre_nms_top_n_train",
    "200",
    "--detector.rpn_post_nms_top_n_train",
    "100",
    "--data.train_short_range",
    "96",
    "128",
    "--data.weak_short_range",
    "96",
    "128",
    "--data.max_size",
    "160",
    "--detector.min_size",
    "128",
    "--detector.max_size",
    "160",
    "--no-tensorboard",
    "--log_interval",
    "1",
    "--mixteacher.unsup_start",
    "0",
    "--mixteacher.unsup_warmup",
    "1",
]


def _run_script(script: ModuleType, argv: list[str]) -> Any:
    """``python -m mixteacher.<script> ARGV`` in this process: ``script.main(script.parse_args(argv))``."""
    return script.main(script.parse_args(argv))


train_run = partial(_run_script, mt_train)  # -> metrics dict
eval_run = partial(_run_script, mt_eval)  # -> metrics dict
visualize_run = partial(_run_script, mt_visualize)  # -> written image paths


def _pycocotools_ap(model, val_set) -> float:
    """AP of ``model`` on ``val_set`` computed with pycocotools directly (independent of shared.metrics)."""
    detections = []
    for index in range(len(val_set)):
        image, target = val_set[index]
        out = model.predict([image], "regular")[0]
        for box, score, label in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
            detections.append(
                {
                    "image_id": target["image_id"],
                    "category_id": val_set.cat_ids[label - 1],
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "score": score,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(val_set.annotation_file))
        if not detections:
            return 0.0
        evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return max(float(evaluator.stats[0]), 0.0)


def test_embedded_default_trains_and_evaluates_end_to_end(tmp_path):
    out = tmp_path / "run"
    metrics = train_run(
        ["--output_dir", str(out), "--max_iters", "2", "--checkpoint_interval", "2", "--eval_interval", "2", *TINY]
    )
    for name in ("config.yaml", "log.csv", "metrics.json", "last.pt", "best.pt", "supervised/metrics.json"):
        assert (out / name).is_file(), name
    written = json.loads((out / "metrics.json").read_text())
    assert written["headline"] == "teacher_regular" and written["method"] == "mixteacher"
    assert set(written) >= {
        "AP",
        "AP50",
        "APs",
        "APm",
        "APl",
        "teacher_mixed",
        "student_regular",
        "supervised",
        "supervised_AP",
    }
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 2 and set(state) >= {"student", "teacher", "optimizer", "scheduler", "rng"}

    ev = eval_run(["--checkpoint", str(out / "last.pt"), "--output_dir", str(out / "eval")])
    on_disk = json.loads((out / "eval" / "metrics.json").read_text())
    assert on_disk["AP"] == pytest.approx(metrics["AP"], abs=1e-9, nan_ok=True)
    assert on_disk["supervised_AP"] == pytest.approx(metrics["supervised_AP"], abs=1e-9, nan_ok=True)
    assert set(on_disk) >= {"teacher_regular", "teacher_mixed", "student_regular", "student_mixed"}

    drawn = visualize_run(["--checkpoint", str(out / "last.pt"), "--num_images", "1", "--score_thr", "0"])
    assert [p.name for p in drawn] == ["predictions_0.png", "pseudo_labels_0.png"] and all(p.is_file() for p in drawn)

    # the AP is pycocotools' COCOeval on the teacher's detections
    cfg = config_from_checkpoint(state)
    _, val_set = build_datasets(cfg.data)
    teacher = load_models(state, cfg)["teacher"].eval()
    assert ev["AP"] == pytest.approx(_pycocotools_ap(teacher, val_set), abs=1e-9)


def test_unknown_key_and_missing_dataset_are_clear_errors(tmp_path):
    with pytest.raises(SystemExit):
        mt_train.parse_args(["--no_such_key", "1"])
    with pytest.raises(FileNotFoundError, match="COCO 2017 layout"):
        train_run(
            [
                "--output_dir",
                str(tmp_path),
                "--no-data.synthetic",
                "--data.root",
                str(tmp_path / "nope"),
                "--no-tensorboard",
            ]
        )
    with pytest.raises(ValueError, match="pretrained_backbone"):
        train_run(
            [
                "--output_dir",
                str(tmp_path),
                "--pretrained_backbone",
                "null",
                "--no-allow_random_backbone",
                "--no-tensorboard",
            ]
        )


def test_non_finite_loss_stops_with_the_step(tmp_path, monkeypatch):
    from shared.training import NonFiniteLossError

    def nan_forward(self, batch, step):
        return torch.tensor(float("nan")), {}

    monkeypatch.setattr(mt_train.MixTeacher, "forward", nan_forward)
    with pytest.raises(NonFiniteLossError, match="step 0"):
        train_run(["--output_dir", str(tmp_path), "--max_iters", "1", "--no-compare_supervised", *TINY])


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    run_torchrun(
        "mixteacher.train",
        [
            "--output_dir",
            str(out),
            "--max_iters",
            "3",
            "--checkpoint_interval",
            "3",
            "--eval_interval",
            "3",
            "--no-compare_supervised",
            "--device",
            "cpu",
            "--data.split_dir",
            str(tmp_path / "splits"),
            *TINY,
        ],
    )  # fresh split files: rank 0 writes, rank 1 waits
    metrics = json.loads((out / "metrics.json").read_text())
    assert "AP" in metrics and load_checkpoint(out / "last.pt")["step"] == 3
    assert "2 process(es)" in (out / "train.log").read_text()
    assert (tmp_path / "splits" / "instances_train2017.1@20.json").is_file()


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted(tmp_path):
    common = ["--eval_interval", "4", "--no-compare_supervised", *TINY]
    train_run(["--output_dir", str(tmp_path / "full"), "--checkpoint_interval", "4", "--max_iters", "4", *common])
    train_run(["--output_dir", str(tmp_path / "part"), "--checkpoint_interval", "2", "--max_iters", "2", *common])
    train_run(
        [
            "--output_dir",
            str(tmp_path / "part"),
            "--checkpoint_interval",
            "2",
            "--max_iters",
            "4",
            "--resume",
            str(tmp_path / "part" / "last.pt"),
            *common,
        ]
    )
    full, part = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    for key in ("student", "teacher", "optimizer", "scheduler", "step", "rng"):  # bit for bit
        assert_same_tensors(full[key], part[key], key)


@pytest.mark.parametrize("config", sorted((REPO / "mixteacher" / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_config_parses(config):
    cfg = mt_train.parse_args(["-c", str(config)])
    if config.stem not in ("default", "fcos_default"):  # the embedded defaults (MobileNetV2)
        assert cfg.detector.depth == 50 and cfg.detector.norm == "frozen_bn" and cfg.pretrained_backbone is None
        assert not cfg.allow_random_backbone  # recipes refuse to start without an ImageNet backbone
        assert (cfg.method == "supervised") == config.stem.startswith("supervised_")
    assert (cfg.detector.architecture == "fcos") == ("fcos" in config.stem)
