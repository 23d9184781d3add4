"""A resumed adaptor training ends exactly where an uninterrupted one does (CONVENTIONS 7 and 9)."""

import torch

from lsfa import train as lsfa_train
from lsfa.tests.test_train import TINY


def _assert_same(a, b, where: str) -> None:
    """Recursive exact equality of checkpoint entries (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_resumed_training_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHETIC_DATA_ROOT", str(tmp_path / "synthetic"))
    # 4 images, batch 2, accumulation 2: the optimizer steps once per epoch; IFC active from iteration 1
    args = [*TINY, "--optim.accum_iter", "2", "--eval.methods"]
    lsfa_train.main([*args, "--optim.epochs", "2", "--output_dir", str(tmp_path / "straight")])
    lsfa_train.main([*args, "--optim.epochs", "1", "--output_dir", str(tmp_path / "first")])
    lsfa_train.main([*args, "--optim.epochs", "2", "--resume", str(tmp_path / "first" / "last.pt"),
                     "--output_dir", str(tmp_path / "resumed")])
    straight = torch.load(tmp_path / "straight" / "last.pt", map_location="cpu", weights_only=True)
    first = torch.load(tmp_path / "first" / "last.pt", map_location="cpu", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "last.pt", map_location="cpu", weights_only=True)
    assert first["epoch"] == 1 and straight["epoch"] == resumed["epoch"] == 2
    assert not torch.equal(first["adaptors"]["xyz_block.attn.qkv.weight"],
                           straight["adaptors"]["xyz_block.attn.qkv.weight"])  # epoch 2 did train
    for key in ("adaptors", "optimizer", "scaler", "queues", "generator", "loader_generator", "rng", "iteration",
                "backbones"):
        _assert_same(straight[key], resumed[key], key)
    assert straight["optimizer"]["state"], "the optimizer state was saved"
