"""Small helpers of the ``<pkg>.evidence`` scripts (CONTRIBUTING, evidence record): table cells and the check that
a re-run reproduces the committed ``EVIDENCE.json`` column by column."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["committed_mismatches", "mean_sd"]


def mean_sd(values: Sequence[float], digits: int = 2) -> str:
    """``"mean ± sd"`` of the per-seed values (sd 0 for a single seed)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"


def committed_mismatches(record: dict[str, Any], committed: dict[str, Any]) -> list[str]:
    """The (row, seed) cells of ``record`` that differ from ``committed``, as ``"<row> seed <s>: <now> (committed
    <then>)"``; seeds absent from ``committed`` are skipped, a row absent from it counts as ``None``."""
    mismatches = []
    for i, seed in enumerate(record["seeds"]):
        if seed not in committed.get("seeds", []):
            continue
        j = committed["seeds"].index(seed)
        for name, values in record["rows"].items():
            then = committed["rows"][name][j] if name in committed["rows"] else None
            if then != values[i]:
                mismatches.append(f"{name} seed {seed}: {values[i]} (committed {then})")
    return mismatches
