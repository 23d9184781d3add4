"""Bad input gets a clear error naming the problem (CONTRIBUTING, Tests: reliability)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from crema.config import Config, DataConfig, ModelConfig, check_config
from crema.credibility import CredibilityMemory
from crema.data import build_task
from crema.eval import parse_args as eval_args
from crema.model import create_model
from crema.train import main, parse_args
from shared.checkpoint import CheckpointError

DIGITS = str(Path(__file__).resolve().parents[2] / "configs" / "digits_sym50.yaml")


def test_unknown_config_key_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--method.credibilty", "js"])
    assert "--method.credibility" in capsys.readouterr().err


def test_wrong_values_are_refused_with_their_key():
    with pytest.raises(ValueError, match="memory_length"):
        check_config(Config(method=Config().method.__class__(memory_length=0)))
    with pytest.raises(ValueError, match="p_threshold"):
        check_config(Config(method=Config().method.__class__(p_threshold=1.5)))
    with pytest.raises(ValueError, match="amp"):
        check_config(Config(amp="bf16"))
    with pytest.raises(ValueError, match="model.pretrained"):
        check_config(Config(data=DataConfig(dataset="clothing1m", root="x"), model=ModelConfig(arch="resnet50")))


def test_a_missing_or_corrupt_pretrained_file_is_named(tmp_path):
    missing = tmp_path / "missing.pth"
    with pytest.raises(FileNotFoundError, match="missing.pth is not a file"):
        check_config(Config(model=ModelConfig(arch="resnet50", pretrained=str(missing))))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_text("not a checkpoint")
    truncated = tmp_path / "truncated.pth"
    torch.save({"w": torch.zeros(8)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    for path in (corrupt, truncated):
        with pytest.raises(ValueError, match=f"{path.name}: cannot be loaded as the ImageNet weights"):
            create_model("resnet50", 14, pretrained=str(path))


def test_missing_dataset_names_the_expected_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        build_task(DataConfig(dataset="cifar10", root=str(tmp_path)), None)
    with pytest.raises(FileNotFoundError, match="aclImdb"):
        build_task(DataConfig(dataset="imdb", root=str(tmp_path)), None)


def test_a_noise_file_of_another_recipe_is_refused(tmp_path):
    noise = tmp_path / "noise.json"
    build_task(DataConfig(dataset="digits", image_size=8, noise_rate=0.5, noise_file=str(noise)), None)
    assert not noise.exists()  # build_task never writes; the training script persists the draw
    main(
        parse_args(
            ["-c", DIGITS, "--output_dir", str(tmp_path / "a"), "--optim.epochs", "1", "--data.noise_file", str(noise)]
        )
    )
    assert json.loads(noise.read_text())["rate"] == 0.5
    with pytest.raises(ValueError, match="rate 0.5"):
        build_task(DataConfig(dataset="digits", image_size=8, noise_rate=0.8, noise_file=str(noise)), None)


def test_foreign_and_broken_checkpoints_are_refused(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"package": "dmlp", "config": {}, "net1": {}}, foreign)
    with pytest.raises(CheckpointError, match="written by package 'dmlp'"):
        eval_args(["--checkpoint", str(foreign)])
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a crema checkpoint"):
        eval_args(["--checkpoint", str(text)])
    with pytest.raises(CheckpointError, match="does not exist"):
        main(parse_args(["-c", DIGITS, "--resume", str(tmp_path / "missing.pt")]))
    assert not (tmp_path / "missing.pt").exists() and sorted(tmp_path.iterdir()) == [foreign, text]  # nothing written


def test_a_memory_of_another_size_is_refused():
    memory = CredibilityMemory(10, 5)
    with pytest.raises(ValueError, match="memory_length"):
        memory.load_state_dict(CredibilityMemory(10, 3).state_dict())


def test_a_diverging_run_stops_with_the_step(tmp_path):
    cfg = parse_args(["-c", DIGITS, "--output_dir", str(tmp_path / "nan"), "--optim.lr", "1e30", "--optim.epochs", "3"])
    with pytest.raises(FloatingPointError, match="step"):
        main(cfg)
