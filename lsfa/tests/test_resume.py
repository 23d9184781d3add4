"""A resumed adaptor training ends exactly where an uninterrupted one does (README, Quick start: the run folder's
last.pt restores adaptors, optimizer, scaler, queues, generators and RNG states)."""

import torch

from lsfa import train as lsfa_train
from lsfa.tests.test_train import TINY
from shared.testing import assert_resume_refused, assert_same_tensors


def test_resumed_training_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHETIC_DATA_ROOT", str(tmp_path / "synthetic"))
    # 4 images, batch 2, accumulation 2: the optimizer steps once per epoch; IFC active from iteration 1
    args = [*TINY, "--optim.accum_iter", "2", "--eval.methods"]
    lsfa_train.main(lsfa_train.parse_args([*args, "--optim.epochs", "2", "--output_dir", str(tmp_path / "straight")]))
    lsfa_train.main(lsfa_train.parse_args([*args, "--optim.epochs", "1", "--output_dir", str(tmp_path / "first")]))
    lsfa_train.main(
        lsfa_train.parse_args(
            [
                *args,
                "--optim.epochs",
                "2",
                "--resume",
                str(tmp_path / "first" / "last.pt"),
                "--output_dir",
                str(tmp_path / "resumed"),
            ]
        )
    )
    straight = torch.load(tmp_path / "straight" / "last.pt", map_location="cpu", weights_only=True)
    first = torch.load(tmp_path / "first" / "last.pt", map_location="cpu", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "last.pt", map_location="cpu", weights_only=True)
    assert first["epoch"] == 1 and straight["epoch"] == resumed["epoch"] == 2
    assert not torch.equal(
        first["adaptors"]["xyz_block.attn.qkv.weight"], straight["adaptors"]["xyz_block.attn.qkv.weight"]
    )  # epoch 2 did train
    # every key a resumable last.pt must hold (epoch checked above, config differs by output_dir), and the backbones
    for key in [*(k for k in lsfa_train.STATE_KEYS if k not in ("epoch", "config")), "backbones"]:
        assert_same_tensors(straight[key], resumed[key], key)
    assert straight["optimizer"]["state"], "the optimizer state was saved"
    assert isinstance(first["queues"], list) and len(first["queues"]) == 1  # one process: its own queues
    # a resume with another loss is refused before the run folder is touched
    other = [*args, "--resume", str(tmp_path / "first" / "last.pt"), "--loss.temperature", "0.5"]
    assert_resume_refused(lambda: lsfa_train.main(lsfa_train.parse_args(other)), tmp_path / "first", "loss.temperature")

    # a last.pt written before the per-rank layout (one queue state, not a list) still resumes, to the same end
    old = {**first, "queues": first["queues"][0]}
    torch.save(old, tmp_path / "old_layout.pt")
    lsfa_train.main(
        lsfa_train.parse_args(
            [
                *args,
                "--optim.epochs",
                "2",
                "--resume",
                str(tmp_path / "old_layout.pt"),
                "--output_dir",
                str(tmp_path / "resumed_old"),
            ]
        )
    )
    resumed_old = torch.load(tmp_path / "resumed_old" / "last.pt", map_location="cpu", weights_only=True)
    for key in ("adaptors", "optimizer", "queues", "generator", "rng"):
        assert_same_tensors(straight[key], resumed_old[key], key)
