"""Bad input gets a clear error: unknown keys, foreign / pickled checkpoints, missing files, NaN losses."""

from __future__ import annotations

import pickle

import pytest
import torch

from anm.model import create_model, load_c2d_checkpoint
from anm.train import main, parse_args
from shared.checkpoint import CheckpointError
from shared.training import NonFiniteLossError


def test_unknown_config_key_lists_the_valid_keys(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--sanm.mask_ratio", "0.1"])
    assert "--sanm.masker.ratio_low" in capsys.readouterr().err


def test_foreign_checkpoint_is_refused_before_anything_is_written(tmp_path) -> None:
    foreign = tmp_path / "other" / "last.pt"
    foreign.parent.mkdir()
    torch.save({"package": "dmlp", "net1": {}, "net2": {}, "config": {}, "epoch": 0}, foreign)
    with pytest.raises(CheckpointError, match="written by package 'dmlp'"):
        main(parse_args(["--resume", str(foreign)]))
    assert sorted(p.name for p in foreign.parent.iterdir()) == ["last.pt"]


def test_pickled_object_in_a_c2d_file_is_not_executed(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "ckpt.pth"
    path.write_bytes(pickle.dumps({"model": Evil()}, protocol=2))
    with pytest.raises(ValueError, match="not a readable C2D checkpoint"):
        load_c2d_checkpoint(create_model("supce_resnet18_tiny"), path)


def test_missing_pretrained_file_is_an_error_naming_it(tmp_path) -> None:
    argv = ["--output_dir", str(tmp_path / "run"), "--model.name", "supce_resnet18", "--model.width", "8"]
    with pytest.raises(FileNotFoundError, match="ckpt_nowhere.pth"):
        main(parse_args([*argv, "--data.image_size", "32", "--model.pretrained", str(tmp_path / "ckpt_nowhere.pth")]))


def test_missing_dataset_names_the_expected_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        main(parse_args(["--output_dir", str(tmp_path / "run"), "--data.root", str(tmp_path / "nothing")]))


def test_double_softmax_needs_the_supce_resnet18(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs supce_resnet18"):
        main(parse_args(["--output_dir", str(tmp_path / "run"), "--model.double_softmax", "true"]))


def test_non_finite_loss_stops_naming_the_step(tmp_path) -> None:
    from anm.tests.test_sanm import _batch, _engine

    engine = _engine(tmp_path)
    with torch.no_grad():
        engine.nets[0].recon_module.layer3.bias.fill_(float("nan"))
    views_x, views_u, _ = _batch(engine)
    with pytest.raises(NonFiniteLossError, match="step"):
        engine.train_step(0, views_x, torch.arange(4), views_u, torch.arange(4, 8), torch.rand(40), 1.5)
