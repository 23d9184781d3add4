"""Atomic checkpoints with full training state, loadable with `torch.load(..., weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts. RNG states are stored as tensors and
lists (not numpy objects or tuples of unknown types) so the safe unpickler accepts them.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "NonFiniteStateError",
    "WeightsFileError",
    "capture_rng_state",
    "check_resume_state",
    "find_nonfinite",
    "load_checkpoint",
    "load_resume_state",
    "load_weights_file",
    "reseed_other_ranks",
    "restore_rng_state",
    "restore_training_state",
    "save_checkpoint",
    "save_last_and_best",
    "training_state",
]


class CheckpointError(RuntimeError):
    """A file that is not a checkpoint of the expected package: missing, unreadable, foreign or incomplete."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist."""


class NonFiniteStateError(FloatingPointError):
    """A state to be saved holds NaN/inf values (the previous checkpoint on disk is left as it was)."""


def _floating_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield prefix or "<root>", obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _floating_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _floating_tensors(value, f"{prefix}[{i}]")


def find_nonfinite(state: Any, limit: int = 5) -> list[str]:
    """Key paths (e.g. ``model.head.weight``) of up to `limit` floating tensors in `state` holding NaN or inf."""
    bad = []
    for name, tensor in _floating_tensors(state):
        if not bool(torch.isfinite(tensor.detach()).all()):
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad


def save_checkpoint(state: dict[str, Any], path: str | Path, allow_nonfinite: bool = False) -> Path:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, then rename over the target.

    A crash while writing leaves the previous checkpoint intact. A state whose floating tensors (weights, optimizer
    moments, EMA, ...) hold NaN or inf is refused with :class:`NonFiniteStateError` before anything is written, so a
    diverged run never replaces its last good checkpoint (`allow_nonfinite` for states where inf is meaningful).
    """
    path = Path(path)
    if not allow_nonfinite:
        bad = find_nonfinite(state)
        if bad:
            raise NonFiniteStateError(
                f"refusing to write {path}: non-finite values in {', '.join(bad)}. The training diverged (lower the "
                f"learning rate or disable fp16 AMP); {path.name} on disk, if any, is the last good state."
            )
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

    The state is serialized once; best.pt is an atomic copy of last.pt. Returns the path of last.pt. A state with
    non-finite tensors is refused (:func:`save_checkpoint`).
    """
    last = save_checkpoint(state, Path(out_dir) / "last.pt")
    if is_best:
        best = last.with_name("best.pt")
        tmp = best.with_name(f".best.pt.{os.getpid()}.tmp")
        try:
            shutil.copyfile(last, tmp)
            with open(tmp, "rb") as f:  # on disk before the rename, as last.pt is
                os.fsync(f.fileno())
            os.replace(tmp, best)
        finally:
            if tmp.exists():
                tmp.unlink()
    return last


def load_resume_state(
    cfg: Any, package: str, required: Iterable[str] = (), map_location: str | torch.device = "cpu"
) -> dict[str, Any] | None:
    """The checkpoint ``cfg.resume`` names (None without ``--resume``), read and checked before anything is written:
    :func:`load_checkpoint`'s checks (missing, unreadable, foreign or incomplete file), then
    :func:`check_resume_state`'s."""
    if not cfg.resume:
        return None
    state = load_checkpoint(cfg.resume, map_location, package=package, required=required)
    return check_resume_state(cfg, state)


def check_resume_state(cfg: Any, state: dict[str, Any], sections: Sequence[str] | None = None) -> dict[str, Any]:
    """``state`` (the checkpoint ``cfg.resume`` names) when its stored config equals ``cfg`` in ``sections``
    (default: those ``type(cfg).RESUME_SECTIONS`` names, ``shared.config.RunConfig``); a resume with another model or
    method is a ``shared.logger.RunDirError`` naming the differing keys. The stored config is read in today's keys
    (``type(cfg).upgrade_stored``); keys it still lacks, and the dotted keys of ``type(cfg).RESUME_FREE_KEYS``, are not
    compared."""
    from shared.config import config_to_dict  # local: keeps this module's imports light
    from shared.logger import check_resume_config

    free = type(cfg).RESUME_FREE_KEYS
    stored = type(cfg).upgrade_stored(state.get("config") or {})
    stored, current = (_without_keys(c, free) for c in (stored, config_to_dict(cfg)))
    check_resume_config(cfg.resume, stored, current, type(cfg).RESUME_SECTIONS if sections is None else sections)
    return state


def _without_keys(config: dict[str, Any], dotted: Iterable[str], prefix: str = "") -> dict[str, Any]:
    """``config`` without the entries the ``dotted`` names (``data.root``) point to."""
    dotted = set(dotted)
    return {
        k: _without_keys(v, dotted, f"{prefix}{k}.") if isinstance(v, dict) else v
        for k, v in config.items()
        if f"{prefix}{k}" not in dotted
    }


def _unreadable_reason(err: Exception) -> str:
    text = str(err)
    if text.startswith("Weights only load failed"):
        lines = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()]
        detail = next(
            (
                ln.split("WeightsUnpickler error:")[-1].strip() or "unsupported content"
                for ln in lines
                if not ln.startswith(("Check the documentation", "Please file an issue", "Re-running"))
            ),
            "unsupported content",
        )
        return (
            f"holds objects that the safe unpickler refuses ({detail}); checkpoints of this project hold tensors, "
            "numbers, strings, lists and dicts only"
        )
    first_line = text.splitlines()[0] if text else "no detail"
    return f"is not a file written by torch.save ({type(err).__name__}: {first_line})"


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    package: str | None = None,
    required: Iterable[str] = (),
) -> dict[str, Any]:
    """Load a checkpoint with the safe unpickler (`weights_only=True`) and check that it is the expected kind.

    Args:
        path: the file.
        map_location: as for `torch.load`.
        package: the package that must have written it; named in every error, and compared with the ``"package"``
            entry that the training scripts store (a checkpoint naming another package is refused).
        required: top-level keys the caller is about to read (e.g. ``("model", "optimizer")``).

    Raises:
        CheckpointError: ``not a <package> checkpoint: <why>`` for a missing file (also a ``FileNotFoundError``), a
            file torch cannot read with the safe unpickler (text, a foreign pickle, a truncated file), a top level
            that is not a dict, another package's checkpoint, or missing required keys. Nothing is written.
    """
    path = Path(path)
    what = f"not a {package} checkpoint" if package else "not a checkpoint"
    if not path.is_file():
        kind = "is a folder" if path.is_dir() else "does not exist"
        raise CheckpointNotFoundError(f"{what}: checkpoint not found: {path} {kind}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # text, foreign or truncated pickle: name the file and the reason
        raise CheckpointError(f"{what}: {path} {_unreadable_reason(err)}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{what}: {path} holds a {type(state).__name__}, not a dict of training state")
    writer = state.get("package")
    if package is not None and isinstance(writer, str) and writer != package:
        raise CheckpointError(f"{what}: {path} was written by package '{writer}'")
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(
            f"{what}: {path} lacks the key(s) {', '.join(map(repr, missing))} "
            f"(it holds {', '.join(map(repr, sorted(map(str, state))[:12])) or 'nothing'})"
        )
    return state


class WeightsFileError(CheckpointError, ValueError):
    """A downloaded weights file that cannot be read safely or holds no dict of weights."""


def load_weights_file(path: str | Path, description: str = "weights file") -> dict[str, Any]:
    """A weights file from elsewhere (ImageNet, SimCLR / C2D / MoCo, a release) read with the safe unpickler.

    Besides tensors and containers, ``argparse.Namespace`` is allowed by name: SupContrast's ``save_model`` (which
    wrote C2D's files) and other research code store their options beside the weights. Any other pickled object is
    refused.

    Raises:
        FileNotFoundError: no file at ``path``.
        WeightsFileError: (a ``ValueError``) ``<path>: not a readable <description> (<why>)``, or a top level that is
            not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{description} not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError (text, foreign objects), RuntimeError (a truncated zip), EOFError
        first = str(err).splitlines()[0] if str(err) else ""
        raise WeightsFileError(f"{path}: not a readable {description} ({type(err).__name__}: {first})") from err
    if not isinstance(state, dict):
        raise WeightsFileError(f"{path}: not a {description}: it holds a {type(state).__name__}, not a dict")
    return state


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


def _component_state(obj: Any) -> Any:
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        from shared.training import unwrap_model  # local: shared.training imports nothing from here

        return unwrap_model(obj).state_dict() if isinstance(obj, torch.nn.Module) else obj.state_dict()
    return obj


def training_state(package: str, config: Any = None, **components: Any) -> dict[str, Any]:
    """A full training checkpoint: ``package``, the resolved ``config`` (a dataclass or dict), the global RNG states,
    and one entry per keyword: a module (its unwrapped state dict), an optimizer / scheduler / GradScaler / queue
    (``state_dict()``), a ``torch.Generator`` (its state), ``None``, or a plain value (epoch, step, best ...).

    ``restore_training_state(state, **the same objects)`` restores it exactly."""
    from shared.config import config_to_dict

    state: dict[str, Any] = {"package": package}
    if config is not None:
        state["config"] = config if isinstance(config, dict) else config_to_dict(config)
    state.update({name: None if obj is None else _component_state(obj) for name, obj in components.items()})
    state["rng"] = capture_rng_state()
    return state


def restore_training_state(state: dict[str, Any], strict: bool = True, **components: Any) -> None:
    """Load ``state`` (from :func:`training_state`) into the given objects, then the global RNG states.

    An object given as ``None``, or whose entry is ``None`` (e.g. no EMA), is skipped; plain values (epoch, step)
    are read by the caller from ``state`` directly. Modules load strictly unless ``strict`` is False. Under
    torch.distributed, ranks other than 0 re-seed the global generators and every restored ``torch.Generator`` from
    the restored states (:func:`reseed_other_ranks`): the checkpoint holds rank 0's.
    """
    from shared.training import unwrap_model

    for name, obj in components.items():
        if obj is None or state.get(name) is None:
            continue
        if isinstance(obj, torch.Generator):
            obj.set_state(state[name])
            _reseed_generator_of_other_rank(obj)
        elif isinstance(obj, torch.nn.Module):
            unwrap_model(obj).load_state_dict(state[name], strict=strict)
        else:
            obj.load_state_dict(state[name])
    if "rng" in state:
        restore_rng_state(state["rng"])
        reseed_other_ranks()


def _reseed_generator_of_other_rank(generator: torch.Generator) -> None:
    """A run's own generator restored from rank 0's state: on another rank, a stream of its own again (seeded from a
    draw of the restored state plus the rank; deterministic for the checkpoint). Rank 0's continues exactly."""
    from shared.distributed import get_rank  # local: keeps this module's imports light

    rank = get_rank()
    if rank > 0:
        generator.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)) + rank)


def reseed_other_ranks() -> None:
    """Call after restoring a checkpoint's global generators on every rank. The checkpoint holds rank 0's
    generators (it writes them); every other rank seeds its own stream from a number drawn from them (deterministic
    for the checkpoint), so the ranks' random draws (mixup, in-process augmentation) do not all coincide after a
    resume. Rank 0 continues exactly."""
    from shared.distributed import get_rank, seed_everything  # local: keeps this module's imports light

    rank = get_rank()
    if rank > 0:
        seed_everything(int(torch.randint(0, 2**62, (1,))), rank)
