"""What the ``<pkg>.evidence`` scripts that run seeded ``train.py`` draws share (CONTRIBUTING, evidence record).

The command line: ``--seeds`` and ``--validation-seed`` first, the script's own arguments, then ``--output_dir``,
``--table`` and the extra ``train.py`` flags after ``--``::

    from shared import evidence_tools

    parser = evidence_tools.evidence_parser(__doc__.splitlines()[0], DEFAULT_SEEDS, VALIDATION_SEED)
    parser.add_argument(...)                                  # the script's own
    args = evidence_tools.parse_evidence_args(parser, argv, PACKAGE)
    if args.table:
        return evidence_tools.print_table(args.table, format_table)
    seeds = evidence_tools.reported_seeds(parser, args, DEFAULT_SEEDS)
    out = evidence_tools.evidence_dir(args.output_dir, PACKAGE)

The record: the package's own entries (claim, metric, method, baselines, row metrics), then :func:`seed_rows`
(the rows of every seed, the validation choice, the budget, the time and the command).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from shared.logger import make_run_dir

__all__ = ["evidence_dir", "evidence_parser", "parse_evidence_args", "print_table", "reported_seeds", "seed_rows"]


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
