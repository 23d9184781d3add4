"""Helpers of the ``<pkg>.evidence`` scripts (CONTRIBUTING, evidence record): table cells, the check that a re-run
reproduces the committed ``EVIDENCE.json`` column by column, and the command line and closing record entries of the
scripts that run seeded ``train.py`` draws.

The command line: ``--seeds`` and ``--validation-seed`` first, the script's own arguments, then ``--output_dir``,
``--table`` and the extra ``train.py`` flags after ``--``::

    from shared import evidence

    parser = evidence.evidence_parser(__doc__.splitlines()[0], DEFAULT_SEEDS, VALIDATION_SEED)
    parser.add_argument(...)                                  # the script's own
    args = evidence.parse_evidence_args(parser, argv, PACKAGE)
    if args.table:
        return evidence.print_table(args.table, format_table)
    seeds = evidence.reported_seeds(parser, args, DEFAULT_SEEDS)
    out = evidence.evidence_dir(args.output_dir, PACKAGE)

The record: the package's own entries (claim, metric, method, baselines, row metrics), then :func:`seed_rows`
(the rows of every seed, the validation choice, the budget, the time and the command).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from shared.logger import make_run_dir

__all__ = [
    "committed_mismatches",
    "evidence_dir",
    "evidence_parser",
    "map_in_processes",
    "mean_sd",
    "parse_evidence_args",
    "print_table",
    "reported_seeds",
    "seed_rows",
]


def map_in_processes(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int) -> list[Any]:
    """``fn(*job)`` for every job, in job order: in ``workers`` spawned processes, or in this process when
    ``workers <= 1`` or there is one job. An evidence run (seeded, CPU) gives the same result in either."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, *zip(*jobs)))


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


def evidence_parser(
    description: str, default_seeds: Sequence[int], validation_seed: int, seeds_help: str | None = None
) -> argparse.ArgumentParser:
    """A parser with ``--seeds`` (the reported seeds, default ``default_seeds``) and ``--validation-seed`` (the seed
    the settings are chosen on, never reported)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help=seeds_help or f"default {list(default_seeds)}"
    )
    parser.add_argument("--validation-seed", type=int, default=validation_seed)
    return parser


def parse_evidence_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, package: str
) -> argparse.Namespace:
    """Add the closing arguments (``--output_dir``, ``--table``, the ``train.py`` flags after ``--``) and parse."""
    parser.add_argument("--output_dir", default=None, help=f"default runs/{package}/evidence/<time>/")
    parser.add_argument("--table", metavar="EVIDENCE_JSON", help="print the README table of a record and exit")
    parser.add_argument("train_args", nargs="*", help="extra train.py flags after '--' (tests: a tiny setting)")
    return parser.parse_args(argv)


def print_table(path: str | Path, format_table: Callable[[dict[str, Any]], str]) -> dict[str, str]:
    """Print ``format_table`` of the evidence record at ``path``; returns ``{"table": <the text>}``."""
    table = format_table(json.loads(Path(path).read_text()))
    print(table)
    return {"table": table}


def reported_seeds(
    parser: argparse.ArgumentParser, args: argparse.Namespace, default_seeds: Sequence[int]
) -> list[int]:
    """``--seeds`` (default ``default_seeds``); a usage error when the validation seed is among them."""
    seeds = list(default_seeds if args.seeds is None else args.seeds)
    if args.validation_seed in seeds:
        parser.error(f"the validation seed {args.validation_seed} must not be a reported seed")
    return seeds


def evidence_dir(output_dir: str | None, package: str) -> Path:
    """``output_dir`` as given, else a new ``runs/<package>/evidence/<time>`` folder."""
    return Path(output_dir) if output_dir else make_run_dir(package, "evidence")


def seed_rows(
    seeds: Sequence[int],
    per_seed: Mapping[int, Mapping[str, float]],
    validation: dict[str, Any],
    budget: str,
    seconds: float,
    command: str,
) -> dict[str, Any]:
    """The closing entries of an evidence record: ``rows`` (``'<row>/<metric>'``: one value per seed, in the order
    of ``seeds``; the rows of the first seed), the ``validation`` choice, ``budget``, ``seconds`` (0.1 s) and
    ``command``."""
    names = list(per_seed[seeds[0]])
    return {
        "rows_format": "'<row>/<metric>': one value per seed, in the order of 'seeds'",
        "seeds": list(seeds),
        "rows": {name: [per_seed[s][name] for s in seeds] for name in names},
        "validation": validation,
        "budget": budget,
        "seconds": round(seconds, 1),
        "command": command,
    }
