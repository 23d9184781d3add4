"""What each cached dmlp stage file was made from, and the check that a file may be reused or resumed from.

Every checkpoint and stage file a dmlp run writes (``last.pt``, ``ssl.pt``, ``ssl_state.pt``, ``features.pt``,
``purifier.pt``, ``retrain_<tag>.pt``) carries ``"package": "dmlp"`` and a ``"made_from"`` record: the config
fragment the stage depends on and digests (SHA-256) of the data it was computed from (images, label arrays, the
encoder weights or features it read). A cached file is reused only when its record equals the one the current run
would write; otherwise the stage is rebuilt and the log says which entries differ (:func:`reusable`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.checkpoint import CheckpointError, load_checkpoint

__all__ = ["PACKAGE", "digest", "load_stage_file", "reusable", "source_digest", "stamp", "verify_resume_file"]

PACKAGE = "dmlp"


def _update(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"tensor{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        _update(h, torch.from_numpy(np.array(obj)))
    elif isinstance(obj, Mapping):
        for key in sorted(obj, key=str):
            h.update(f"key{key!s}".encode())
            _update(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"seq{len(obj)}".encode())
        for item in obj:
            _update(h, item)
    else:
        h.update(f"{type(obj).__name__}:{obj!r}".encode())


def digest(*objects: Any) -> str:
    """SHA-256 (hex, 16 characters) of tensors, arrays, dicts (e.g. a state dict), lists, numbers and strings."""
    h = hashlib.sha256()
    for obj in objects:
        _update(h, obj)
    return h.hexdigest()[:16]


def source_digest(source: Any) -> str:
    """Digest of an image source: the pixels of an in-memory tensor, else the class, length and root of a dataset."""
    if isinstance(source, torch.Tensor):
        return digest(source)
    return digest(type(source).__name__, len(source), str(getattr(source, "root", "")))


def stamp(state: dict[str, Any], made_from: dict[str, Any] | None = None) -> dict[str, Any]:
    """``state`` with the ``"package"`` entry (and ``"made_from"`` record) every dmlp file carries."""
    out = {**state, "package": PACKAGE}
    if made_from is not None:
        out["made_from"] = made_from
    return out


def _written_by_dmlp(state: Mapping[str, Any]) -> bool:
    extra = state.get("extra")  # retrain_<tag>.pt: shared.noisy.supervised keeps our entries under "extra"
    return state.get("package") == PACKAGE or (isinstance(extra, Mapping) and extra.get("package") == PACKAGE)


def _record(state: Mapping[str, Any]) -> Any:
    extra = state.get("extra")
    if "made_from" in state:
        return state["made_from"]
    return extra.get("made_from") if isinstance(extra, Mapping) else None


def load_stage_file(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a dmlp stage file of the run folder; a file of another package, a non-checkpoint or one lacking
    ``required`` keys is refused (:class:`shared.checkpoint.CheckpointError`)."""
    state = load_checkpoint(path, package=PACKAGE, required=required)
    extra = state.get("extra")
    if isinstance(extra, Mapping) and isinstance(extra.get("package"), str) and extra["package"] != PACKAGE:
        raise CheckpointError(f"not a {PACKAGE} checkpoint: {path} was written by package '{extra['package']}'")
    return state


def reusable(state: Mapping[str, Any], expected: Mapping[str, Any], path: Path, log: Any) -> bool:
    """Whether the cached stage ``state`` (read from ``path``) was made from ``expected``; if not, log why."""
    stored = _record(state)
    if stored == expected:
        return True
    if not isinstance(stored, Mapping):
        why = "it records no provenance (written by an older dmlp)"
    else:
        changed = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
        details = []
        for key in changed:
            old, new = stored.get(key), expected.get(key)
            if isinstance(old, Mapping) and isinstance(new, Mapping):
                sub = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                details.append(f"{key}.{{{', '.join(map(str, sub))}}}")
            else:
                details.append(key)
        why = f"it was made from a different {', '.join(details)}"
    log(f"{path.name}: not reused, {why}; rebuilding this stage")
    return False


def verify_resume_file(path: str | Path, config_keys: set[str]) -> dict[str, Any]:
    """Read ``--resume PATH`` and check that it is a dmlp checkpoint; nothing is written.

    Accepted: a file written by dmlp (``"package": "dmlp"``: last.pt or any stage file), or a last.pt of an older
    dmlp version (no package entry) whose ``config`` has exactly dmlp's config keys ``config_keys``.

    Raises:
        CheckpointError: ``not a dmlp checkpoint: <why>`` (missing, unreadable, text, another package's file).
    """
    state = load_stage_file(path)
    if _written_by_dmlp(state):
        return state
    config = state.get("config")
    if "models" in state and isinstance(config, Mapping) and set(config) == config_keys:
        return state
    what = (
        f"its config has other keys ({', '.join(sorted(map(str, set(config) ^ config_keys))[:6])})"
        if isinstance(config, Mapping)
        else f"it holds {', '.join(sorted(map(str, state))[:8]) or 'nothing'}"
    )
    raise CheckpointError(
        f"not a {PACKAGE} checkpoint: {path} does not record that dmlp wrote it (no "
        f"'package': '{PACKAGE}' entry) and is not a dmlp last.pt: {what}"
    )
