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
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

__all__ = ["RunLogger", "make_run_dir", "write_json"]

T = TypeVar("T")


def make_run_dir(package: str, config_name: str, root: str | Path = "runs") -> Path:
    """`runs/<package>/<config_name>/<time stamp>/` (not created here; rank 0 creates it)."""
    return Path(root) / package / config_name / time.strftime("%Y%m%d-%H%M%S")


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
        return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True, leave=False,
                    disable=not sys.stderr.isatty())

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        """TensorBoard scalars at `step` (e.g. per-iteration loss and lr)."""
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(prefix + k, float(v), step)

    def log_epoch(self, epoch: int, values: Mapping[str, Any]) -> None:
        """Append one row to `log.csv`, mirror it to TensorBoard (`epoch/<key>`) and print it."""
        if not self.is_main:
            return
        row = {"epoch": epoch, **{k: _jsonable(v) for k, v in values.items()}}
        path = self.output_dir / "log.csv"
        if self._csv_fields is None:
            if path.exists():  # resumed run: keep the header, drop rows past this epoch
                with open(path, newline="") as f:
                    reader = csv.DictReader(f)
                    self._csv_fields = list(reader.fieldnames or row.keys())
                    kept = [r for r in reader if int(r["epoch"]) < epoch]
                with open(path, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=self._csv_fields, extrasaction="ignore")
                    writer.writeheader()
                    writer.writerows(kept)
            else:
                self._csv_fields = list(row.keys())
                with open(path, "w", newline="") as f:
                    csv.DictWriter(f, fieldnames=self._csv_fields).writeheader()
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._csv_fields, extrasaction="ignore").writerow(row)
        self.scalars({k: v for k, v in values.items() if isinstance(v, (int, float))}, epoch, prefix="epoch/")
        self.info(f"epoch {epoch}: " + "  ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()))

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
