"""lsfa reliability cases: a raw (unpreprocessed) tree is refused, resume and eval refuse foreign checkpoints before
anything is written."""

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from lsfa import eval as lsfa_eval
from lsfa import train as lsfa_train
from lsfa.preprocess import PREPROCESSED_MARKER, check_preprocessed, preprocess_mvtec3d
from shared.checkpoint import CheckpointError


def _raw_tree(root):
    """One MVTec 3D-AD-layout sample with a tilted table plane (what the raw download looks like)."""
    sample = root / "cookie" / "train" / "good"
    (sample / "rgb").mkdir(parents=True)
    (sample / "xyz").mkdir(parents=True)
    h = w = 32
    v, u = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    xyz = np.stack([u, v, 0.5 + 0.05 * u], -1).astype(np.float32)
    tifffile.imwrite(sample / "xyz" / "000.tiff", xyz, photometric="rgb")
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(sample / "rgb" / "000.png")
    return root


def test_a_raw_tree_is_refused_and_a_preprocessed_one_accepted(tmp_path):
    raw = _raw_tree(tmp_path / "raw")
    with pytest.raises(FileNotFoundError, match=f"no {PREPROCESSED_MARKER}.*python -m lsfa.preprocess"):
        check_preprocessed(raw, "mvtec3d")
    with pytest.raises(FileNotFoundError, match="python -m lsfa.preprocess"):
        lsfa_train.main(
            lsfa_train.parse_args(
                ["--data.dataset", "mvtec3d", "--data.root", str(raw), "--output_dir", str(tmp_path / "r")]
            )
        )
    done = preprocess_mvtec3d(raw, tmp_path / "done")
    check_preprocessed(done, "mvtec3d")
    with pytest.raises(ValueError, match="preprocessed for dataset 'mvtec3d'"):
        check_preprocessed(done, "eyecandies")


@pytest.mark.parametrize("content", ["text", "foreign", "untagged"])
def test_resume_and_eval_refuse_what_is_not_an_lsfa_checkpoint(tmp_path, content):
    path = tmp_path / "other" / "last.pt"
    path.parent.mkdir()
    if content == "text":
        path.write_text("not a checkpoint")
    elif content == "foreign":
        torch.save({"package": "emo", "model": {}}, path)
    else:
        torch.save({"model": {}, "optimizer": {}}, path)
    before = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(CheckpointError, match="not a lsfa checkpoint"):
        lsfa_train.main(lsfa_train.parse_args(["--data.dataset", "synthetic", "--resume", str(path)]))
    with pytest.raises(CheckpointError, match="not a lsfa checkpoint"):
        lsfa_eval.main(lsfa_eval.parse_args(["--checkpoint", str(path)]))
    assert sorted(p.name for p in path.parent.iterdir()) == before
