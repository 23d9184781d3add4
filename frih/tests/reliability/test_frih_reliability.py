"""frih reliability cases: resume and eval refuse what is not a frih checkpoint before anything is written."""

import pytest
import torch

from frih import train as frih_train
from frih.inference import load_model_from_checkpoint
from shared.checkpoint import CheckpointError


@pytest.mark.parametrize("content", ["missing", "text", "foreign", "untagged"])
def test_resume_refuses_what_is_not_a_frih_checkpoint(tmp_path, content):
    run = tmp_path / "emo_run"
    run.mkdir()
    (run / "metrics.json").write_text('{"top1": 75.0}')
    path = run / "last.pt"
    if content == "text":
        path.write_text("hello")
    elif content == "foreign":
        torch.save({"package": "emo", "model": {}, "optimizer": {}}, path)
    elif content == "untagged":
        torch.save({"model": {}, "optimizer": {}, "epoch": 1}, path)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(CheckpointError, match="not a frih checkpoint"):
        frih_train.main(frih_train.parse_args(["--resume", str(path), "--device", "cpu"]))
    with pytest.raises(CheckpointError, match="not a frih checkpoint"):
        load_model_from_checkpoint(path)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
