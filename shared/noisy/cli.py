"""The entry scripts' common parts in the noisy-label packages (dmlp, anm, crema).

* :func:`parse_checkpoint_args`: the evaluation command line (``--checkpoint`` / ``--output_dir`` and overrides of
  the stored config); each ``eval.py`` keeps the house shape ``parse_args(argv) -> Evaluation``, ``main(ev)``,
  its ``parse_args`` declared in one line with :func:`checkpoint_parser` and its ``main`` a call of
  :func:`run_evaluation`.
* :func:`start_run`: the start of each ``train.py``'s ``main`` (threads, process group, checked preparation), and
  :func:`run_logging`: the run's logger, closed with the process group at the end.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from shared.checkpoint import load_checkpoint
from shared.config import parse_config, parse_eval_config
from shared.distributed import DistContext, cleanup_distributed, init_distributed
from shared.logger import RunLogger, write_json

__all__ = ["Evaluation", "checkpoint_parser", "parse_checkpoint_args", "run_evaluation", "run_logging", "start_run"]

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


def checkpoint_parser(
    schema: type,
    doc: str,
    package: str,
    *,
    required: Sequence[str],
    checkpoint_help: str,
    upgrade: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
) -> Callable[[Sequence[str] | None], Evaluation]:
    """The ``parse_args(argv=None) -> Evaluation`` of an eval script, declared in one line (as
    :func:`shared.config.script_parser` for a training script)::

        parse_args = checkpoint_parser(Config, __doc__, PACKAGE, required=(...), checkpoint_help="last.pt of ...")

    The arguments are those of :func:`parse_checkpoint_args`.
    """

    def parse_args(argv: Sequence[str] | None = None) -> Evaluation:
        return parse_checkpoint_args(
            schema, argv, doc, package, required=required, checkpoint_help=checkpoint_help, upgrade=upgrade
        )

    parse_args.__doc__ = (
        f"``--checkpoint`` ({checkpoint_help}), ``--output_dir``, ``--key value`` overrides of its config."
    )
    return parse_args


def run_evaluation(
    ev: Evaluation, evaluate: Callable[[Evaluation], dict[str, Any]], report: Callable[[dict[str, Any], Path], str]
) -> dict[str, Any]:
    """The body of an eval script's ``main``: ``threads`` of the run's config, ``evaluate(ev)``, its metrics written
    to ``<output_dir>/metrics.json``, then ``report(metrics, that path)`` printed. Returns the metrics."""
    if ev.config.threads:
        torch.set_num_threads(ev.config.threads)
    metrics = evaluate(ev)
    path = write_json(metrics, ev.output_dir / "metrics.json")
    print(report(metrics, path))
    return metrics


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


@contextmanager
def run_logging(cfg: Any, ctx: DistContext, out_dir: Path) -> Iterator[RunLogger]:
    """The run's :class:`shared.logger.RunLogger` in ``out_dir`` (rank 0 writes; TensorBoard when
    ``cfg.tensorboard``); on leaving, also after an error, the logger is closed and the process group torn down."""
    logger = RunLogger(out_dir, is_main=ctx.is_main, tensorboard=cfg.tensorboard)
    try:
        yield logger
    finally:
        logger.close()
        cleanup_distributed()
