"""Atomic checkpoints with full training state, loadable with `torch.load(..., weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts. RNG states are stored as tensors and
lists (not numpy objects or tuples of unknown types) so the safe unpickler accepts them.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "load_checkpoint", "restore_rng_state", "save_checkpoint", "save_last_and_best"]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, then rename over the target.

    A crash while writing leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_last_and_best(state: dict[str, Any], out_dir: str | Path, is_best: bool) -> Path:
    """Write `out_dir/last.pt` atomically and, when `is_best`, the same bytes to `out_dir/best.pt`.

    The state is serialized once; best.pt is an atomic copy of last.pt. Returns the path of last.pt.
    """
    last = save_checkpoint(state, Path(out_dir) / "last.pt")
    if is_best:
        best = last.with_name("best.pt")
        tmp = best.with_name(f".best.pt.{os.getpid()}.tmp")
        try:
            shutil.copyfile(last, tmp)
            os.replace(tmp, best)
        finally:
            if tmp.exists():
                tmp.unlink()
    return last


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with the safe unpickler (`weights_only=True`); a missing file names the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt or foreign pickle: say which file
        raise RuntimeError(f"could not load checkpoint {path}: {err}") from err


def capture_rng_state() -> dict[str, Any]:
    """The state of python's, numpy's and torch's (CPU and every CUDA device's) global generators."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
