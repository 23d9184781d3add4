"""Run folders and rank-0 logging: console/file log, tqdm progress, TensorBoard scalars, `log.csv`, `metrics.json`.

Every rank may call every method; only rank 0 writes or prints. Layout of a run folder::

    runs/<pkg>/<config>/<YYYYmmdd-HHMMSS>/
        config.yaml      resolved config            train.log     text log
        log.csv          one row per epoch          metrics.json  final metrics
        events.out.*     TensorBoard scalars        last.pt / best.pt
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

__all__ = [
    "RunDirError",
    "RunLogger",
    "check_resume_config",
    "claim_run_dir",
    "make_run_dir",
    "resolve_run_dir",
    "write_json",
]

T = TypeVar("T")


RUN_MARKER = "RUN.json"
#: Config keys that may change between the runs of one folder (where and how fast it runs, not what it computes).
RUN_LEVEL_KEYS = frozenset(
    {
        "output_dir",
        "name",
        "resume",
        "device",
        "threads",
        "num_threads",
        "torch_threads",
        "tensorboard",
        "log_interval",
        "eval_interval",
        "checkpoint_interval",
        "print_freq",
        "num_workers",
        "workers",
        "collective_timeout_min",
        # names these settings had before shared.config.RunConfig, so older folders still resume
        "eval_every",
        "log_every",
        "ckpt_interval",
    }
)


class RunDirError(RuntimeError):
    """A run folder that belongs to another package or to a different config."""


def _broadcast_path(path: Path | None) -> Path:
    """Rank 0's `path` on every rank (a no-op without an initialised process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [str(path) if path is not None else None]
        dist.broadcast_object_list(box, src=0)
        return Path(box[0])
    assert path is not None
    return path


def make_run_dir(package: str, config_name: str, root: str | Path = "runs") -> Path:
    """Create and return a new, empty `runs/<package>/<config_name>/<YYYYmmdd-HHMMSS>[-N]/`.

    The folder is created with ``exist_ok=False``, so two runs started in the same second get two folders (the
    second one gets the suffix ``-1``, then ``-2`` ...). Under torchrun rank 0 creates it and every rank gets its name.
    """
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    path = None
    if not distributed or dist.get_rank() == 0:
        parent = Path(root) / package / config_name
        parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for attempt in range(10_000):
            candidate = parent / (stamp if attempt == 0 else f"{stamp}-{attempt}")
            try:
                candidate.mkdir(exist_ok=False)
            except FileExistsError:
                continue
            path = candidate
            break
        else:
            raise RunDirError(f"could not create a new run folder under {parent}")
    return _broadcast_path(path)


def resolve_run_dir(
    package: str, config_name: str, output_dir: str | Path | None = None, resume: str | Path | None = None
) -> Path:
    """The run folder: `output_dir` when given, else the folder of the `resume` checkpoint, else a new
    :func:`make_run_dir` folder."""
    if output_dir:
        return Path(output_dir)
    if resume:
        return Path(resume).parent
    return make_run_dir(package, config_name)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            if key in RUN_LEVEL_KEYS and not prefix:
                continue
            name = f"{prefix}{key}"
            if key not in old or key not in new:
                out.append(name)
            else:
                out.extend(_differences(old[key], new[key], name + "."))
        return out
    return [] if old == new else [prefix.rstrip(".")]


def _stored_differences(old: Any, new: Any, name: str) -> list[str]:
    """The keys under ``name`` whose value in ``new`` differs from ``old``'s, keys absent from ``old`` skipped."""
    old, new = old.get(name), new.get(name) if isinstance(new, Mapping) else None
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return [f"{name}.{key}" for k in old for key in _stored_differences(old, new, k)]
    return [] if old == new else [name]


def check_resume_config(
    resume: str | Path, stored: Mapping[str, Any] | None, config: Mapping[str, Any], sections: Sequence[str]
) -> None:
    """Refuse a ``--resume`` whose config differs from the checkpoint's stored one in ``sections`` (the top-level
    keys that define what is trained: the model, the method), before anything is written; the differing keys are
    named. Other keys (more epochs, another log interval) may change on resume, and so may keys the checkpoint does
    not hold (settings added to the package after it was written).

    Raises:
        RunDirError: naming the checkpoint and the differing keys.
    """
    stored = json.loads(json.dumps(_jsonable(dict(stored or {}))))
    config = json.loads(json.dumps(_jsonable(dict(config))))
    changed = [key for section in sections if section in stored for key in _stored_differences(stored, config, section)]
    if changed:
        raise RunDirError(
            f"--resume {resume} was trained with other settings ({', '.join(changed[:8])}"
            f"{' ...' if len(changed) > 8 else ''}); resume with its config (-c <run folder>/config.yaml) or start a "
            "new run"
        )


#: What a run leaves in its folder before it has produced anything worth protecting.
_SETUP_FILES = (RUN_MARKER, "config.yaml", "train.log")


def _holds_results(out_dir: Path) -> bool:
    """True when `out_dir` holds more than the set-up files of a run (checkpoints, caches, metrics, logs)."""
    return any(p.name not in _SETUP_FILES and not p.name.startswith("events.out.tfevents") for p in out_dir.iterdir())


def claim_run_dir(
    out_dir: str | Path,
    package: str,
    config: Mapping[str, Any],
    resume: bool = False,
    is_main: bool = True,
    reuse_results: bool = False,
) -> Path:
    """Check that `out_dir` may hold this run, then record the owner in ``out_dir/RUN.json``.

    Refused with :class:`RunDirError` before anything is written: a folder recorded for another package, a folder
    whose recorded config has other keys (another package's or another script's), and, for a new run (not `resume`),
    a folder that already holds results (more than the set-up files of a run that stopped before producing anything,
    e.g. after a wrong data root): with a different config, its checkpoints and cached stages would be mixed with
    this run's; with the same one, the new run would write over them (a finished run's ``best.pt`` included; decided
    by the main process, which looks before this run has written anything). A package whose new runs reuse the
    results of the same config (dmlp's stage files) passes ``reuse_results``. Run-level keys
    (:data:`RUN_LEVEL_KEYS`) may differ. A resumed run may change other values (e.g. more epochs); the folder's
    record is then updated.
    """
    out_dir = Path(out_dir)
    marker = out_dir / RUN_MARKER
    config = json.loads(json.dumps(_jsonable(dict(config))))
    if marker.is_file():
        try:
            record = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RunDirError(f"{marker} is unreadable ({err}); choose another --output_dir") from err
        owner, stored = record.get("package"), record.get("config", {})
        if owner != package:
            raise RunDirError(
                f"{out_dir} holds a run of package '{owner}', not {package}; choose another "
                "--output_dir (nothing was written)"
            )
        schema_change = (set(stored) ^ set(config)) - RUN_LEVEL_KEYS  # run-level keys were renamed once (RunConfig)
        if schema_change:
            raise RunDirError(
                f"{out_dir} holds a run of another {package} script or config schema (keys differ: "
                f"{', '.join(sorted(schema_change))}); choose another --output_dir"
            )
        changed = _differences(stored, config)
        if changed and not resume and _holds_results(out_dir):
            raise RunDirError(
                f"{out_dir} already holds a {package} run with a different config ({', '.join(changed[:8])}); its "
                "checkpoints and cached stages would be mixed with this run's. Choose another --output_dir, resume "
                "it with --resume, or delete the folder."
            )
        # rank 0's view decides: a later rank may already see what rank 0 wrote after claiming the folder
        if not changed and not resume and not reuse_results and is_main and _holds_results(out_dir):
            raise RunDirError(
                f"{out_dir} already holds this {package} run's results; a new run would write over its checkpoints "
                "and metrics. Continue it with --resume (its last.pt), choose another --output_dir, or delete the "
                "folder."
            )
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f".{RUN_MARKER}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"package": package, "config": config}, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, marker)
    return out_dir


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def write_json(data: Mapping[str, Any], path: str | Path) -> Path:
    """Write JSON atomically (temp file + rename); NaN becomes null so the file stays valid JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
    tmp.replace(path)
    return path


def _rewrite_csv(path: Path, fields: list[str], rows: list[Mapping[str, Any]]) -> None:
    """Write ``rows`` under the header ``fields`` atomically (temp file + rename: a crash keeps the old file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


class RunLogger:
    """Logging for one run, active on rank 0 only.

    Args:
        output_dir: the run folder (created on rank 0).
        is_main: whether this process writes (rank 0).
        tensorboard: also write TensorBoard scalars.
        name: logger name used for the text log.
    """

    def __init__(self, output_dir: str | Path, is_main: bool = True, tensorboard: bool = True, name: str = "train"):
        self.output_dir = Path(output_dir)
        self.is_main = is_main
        self._csv_fields: list[str] | None = None
        self._tb = None
        self.log = logging.getLogger(name)
        if not is_main:
            self.log.addHandler(logging.NullHandler())
            self.log.propagate = False
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        for h in list(self.log.handlers):
            self.log.removeHandler(h)
            h.close()
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(self.output_dir / f"{name}.log")):
            handler.setFormatter(fmt)
            self.log.addHandler(handler)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.output_dir))

    def info(self, msg: str) -> None:
        """Print and log a line (rank 0 only)."""
        self.log.info(msg)

    def progress(self, iterable: Iterable[T], desc: str = "", total: int | None = None) -> Iterable[T]:
        """A tqdm bar on rank 0 (plain iteration elsewhere and when stdout is not a terminal)."""
        if not self.is_main:
            return iterable
        return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True, leave=False, disable=not sys.stderr.isatty())

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        """TensorBoard scalars at `step` (e.g. per-iteration loss and lr)."""
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(prefix + k, float(v), step)

    def log_epoch(self, epoch: int, values: Mapping[str, Any]) -> None:
        """Append one row to `log.csv`, mirror it to TensorBoard (`epoch/<key>`) and print it.

        Rows may differ in their keys (evaluation values only in the epochs that evaluate, a method's losses only
        after its warm-up): a key first seen in a later row widens the header, earlier rows leaving it empty."""
        if not self.is_main:
            return
        self._append_csv(epoch, {"epoch": epoch, **{k: _jsonable(v) for k, v in values.items()}})
        self.scalars({k: v for k, v in values.items() if isinstance(v, (int, float))}, epoch, prefix="epoch/")
        self.info(
            f"epoch {epoch}: "
            + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        )

    def _append_csv(self, epoch: int, row: dict[str, Any]) -> None:
        path = self.output_dir / "log.csv"
        if self._csv_fields is None:  # first row of this process: start the file, or keep a resumed run's rows
            fields, kept = [], []
            if path.exists():  # resumed run: drop the rows from this epoch on (they are recomputed)
                with open(path, newline="") as f:
                    reader = csv.DictReader(f)
                    fields = list(reader.fieldnames or [])
                    kept = [r for r in reader if int(r["epoch"]) < epoch]
            self._csv_fields = fields + [k for k in row if k not in fields]
            _rewrite_csv(path, self._csv_fields, kept)
        elif any(k not in self._csv_fields for k in row):
            with open(path, newline="") as f:
                kept = list(csv.DictReader(f))
            self._csv_fields += [k for k in row if k not in self._csv_fields]
            _rewrite_csv(path, self._csv_fields, kept)
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._csv_fields).writerow(row)

    def write_metrics(self, metrics: Mapping[str, Any], filename: str = "metrics.json") -> Path | None:
        """Write the final metrics (atomically) into the run folder."""
        if not self.is_main:
            return None
        return write_json(metrics, self.output_dir / filename)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        for h in list(self.log.handlers):
            self.log.removeHandler(h)
            h.close()
