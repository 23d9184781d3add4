"""The entry scripts' common parts in the noisy-label packages (dmlp, anm, crema).

* :func:`parse_checkpoint_args`: the evaluation command line (``--checkpoint`` / ``--output_dir`` and overrides of
  the stored config); each ``eval.py`` keeps the house shape ``parse_args(argv) -> Evaluation``, ``main(ev)``.
* :func:`start_run`: the start of each ``train.py``'s ``main`` (threads, process group, checked preparation).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from shared.checkpoint import load_checkpoint
from shared.config import parse_config, parse_eval_config
from shared.distributed import DistContext, cleanup_distributed, init_distributed

__all__ = ["Evaluation", "parse_checkpoint_args", "start_run"]

R = TypeVar("R")


@dataclass
class Evaluation:
    """What one evaluation reads: the checkpoint (path and content), the run's config, and where metrics go."""

    checkpoint: Path
    state: dict[str, Any]
    config: Any
    output_dir: Path


def parse_checkpoint_args(
    schema: type,
    argv: Sequence[str] | None,
    doc: str,
    package: str,
    *,
    required: Sequence[str],
    checkpoint_help: str,
    upgrade: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
) -> Evaluation:
    """``--checkpoint`` and ``--output_dir``; the run's config is the one stored in the checkpoint, overridden by
    ``-c FILE`` / ``--key value`` (:func:`shared.config.parse_eval_config`).

    Args:
        schema: the package's training config dataclass.
        argv: command-line arguments (None: ``sys.argv[1:]``).
        doc: the eval script's docstring (its first line is the help's description).
        package: the package a checkpoint must come from (:func:`shared.checkpoint.load_checkpoint`).
        required: keys the checkpoint must hold.
        checkpoint_help: help text of ``--checkpoint``.
        upgrade: maps a stored config of an older version to the current keys (applied before the overrides).
    """
    description = doc.splitlines()[0]
    parser = argparse.ArgumentParser(description=description, add_help=False)
    parser.add_argument("--checkpoint", required=True, help=checkpoint_help)
    parser.add_argument("--output_dir", default=None, help="default: <checkpoint folder>/eval")
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):  # the two flags above, then every config key that may be overridden
        parser.print_help()
        parse_config(schema, ["--help"], description="config keys (override the checkpoint's stored config)")
    args, rest = parser.parse_known_args(argv)
    checkpoint = Path(args.checkpoint)
    state = load_checkpoint(checkpoint, package=package, required=tuple(required))
    stored = state["config"] if upgrade is None else upgrade(state["config"])
    cfg = parse_eval_config(schema, stored, rest, description=description)
    out = Path(args.output_dir) if args.output_dir else checkpoint.parent / "eval"
    return Evaluation(checkpoint=checkpoint, state=state, config=cfg, output_dir=out)


def start_run(cfg: Any, prepare: Callable[[DistContext], R]) -> tuple[DistContext, R]:
    """The start of a training script's ``main``: ``cfg.threads`` torch threads, the process group of
    ``cfg.device``, then ``prepare(ctx)`` (checks, data, run folder); if ``prepare`` fails the group is torn down
    before the error propagates. Returns the context and what ``prepare`` returned."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = init_distributed(cfg.device)
    try:
        return ctx, prepare(ctx)
    except BaseException:
        cleanup_distributed()
        raise
