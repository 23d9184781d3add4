"""Bad input: unknown keys, missing data, foreign or corrupt checkpoints, missing weights, NaN loss."""

from pathlib import Path

import pytest
import torch

from calibrated_teacher.model import create_model
from calibrated_teacher.train import main, parse_args
from shared.checkpoint import CheckpointError
from shared.training import NonFiniteLossError


def test_unknown_key_is_an_error_naming_it(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--teacher.strict_threshold", "0.7"])
    assert "strict_threshold" in capsys.readouterr().err


def test_missing_dataset_root_names_the_layout(tmp_path):
    cfg = parse_args(
        ["--data.synthetic", "false", "--data.root", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "r")]
    )
    with pytest.raises(FileNotFoundError, match="train2017"):
        main(cfg)


def test_foreign_and_text_checkpoints_are_refused(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"package": "mixteacher", "config": {}}, foreign)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    for path in (foreign, text, tmp_path / "missing.pt"):
        with pytest.raises(CheckpointError, match="not a calibrated_teacher checkpoint"):
            main(parse_args(["--resume", str(path), "--output_dir", str(tmp_path / "r")]))
    assert not (tmp_path / "r").exists()


def test_missing_backbone_weights_are_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        create_model("retinanet_r50_fpn", 3, pretrained_backbone=str(tmp_path / "resnet50.pth"))
    incomplete = tmp_path / "partial.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, incomplete)
    with pytest.raises(ValueError, match="does not provide the ResNet weights"):
        create_model("retinanet_r50_fpn", 3, pretrained_backbone=str(incomplete))


def test_recipe_without_pretrained_backbone_is_refused(tmp_path):
    recipe = Path(__file__).resolve().parents[2] / "configs" / "miss50p.yaml"
    with pytest.raises(ValueError, match="pretrained_backbone"):
        main(parse_args(["-c", str(recipe), "--output_dir", str(tmp_path / "r")]))


def test_nan_loss_stops_the_run_naming_the_step():
    from torchvision.models.detection._utils import BoxCoder

    from calibrated_teacher.losses import FIoUParams, retinanet_fiou_losses
    from shared.training import check_finite

    outputs = {"cls_logits": torch.full((1, 2, 3), float("nan")), "bbox_regression": torch.zeros(1, 2, 4)}
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([0])}]
    anchors = [torch.tensor([[0.0, 0.0, 5.0, 5.0], [10.0, 10.0, 20.0, 20.0]])]
    loss = retinanet_fiou_losses(targets, outputs, anchors, [torch.tensor([0, -1])], BoxCoder((1.0,) * 4), FIoUParams())
    with pytest.raises(NonFiniteLossError, match="step 7"):
        check_finite(loss, 7)


def test_calibrator_rejects_mismatched_inputs():
    from calibrated_teacher.calibration import ScoreCalibrator

    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        ScoreCalibrator().fit(torch.rand(3), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="unknown calibrator"):
        ScoreCalibrator("isotonic")
