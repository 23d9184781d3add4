"""The plumbing the train/eval entry scripts of the packages share (see CONTRIBUTING.md, "Package template").

* :func:`parse_checkpoint_config`: an evaluation script's config, from the checkpoint it evaluates;
* :func:`run_distributed`: a script's ``main``: set the thread count, start the process group (one process or
  ``torchrun``), run the body, always tear the group down;
* :func:`load_trained_checkpoint` and :func:`load_strict`: read a package's training checkpoint for evaluation and
  load its model weights strictly, each refusal naming the file;
* :func:`open_eval_logger` and :func:`finish_run`: the evaluation output folder (``--output_dir``, default
  ``<checkpoint folder>/eval/``) and the end of a run (``metrics.json``, the summary lines, the logger closed);
* :func:`wrap_ddp`: the training model, in DistributedDataParallel when the run has several processes;
* :func:`end_epoch`: the end of a training epoch (checkpoint when due, the epoch row logged, the hook called);
* :func:`parse_checkpoint_args` / :func:`checkpoint_parser`: an evaluation command line that needs the checkpoint
  itself (``--checkpoint`` / ``--output_dir`` and overrides of the stored config, read into an :class:`Evaluation`);
  an eval script declares its ``parse_args`` in one line with :func:`checkpoint_parser` and its ``main`` is a call
  of :func:`run_evaluation`;
* :func:`start_run` and :func:`run_logging`: the start of an epoch-based training script's ``main`` (threads,
  process group, checked preparation) and its logger, closed with the process group at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from shared.checkpoint import load_checkpoint, save_last_and_best
from shared.config import parse_config, parse_eval_config
from shared.distributed import DistContext, cleanup_distributed, init_distributed
from shared.logger import RunLogger, write_json

__all__ = [
    "Evaluation",
    "checkpoint_parser",
    "end_epoch",
    "finish_run",
    "load_strict",
    "load_trained_checkpoint",
    "open_eval_logger",
    "parse_checkpoint_args",
    "parse_checkpoint_config",
    "run_distributed",
    "run_evaluation",
    "run_logging",
    "start_run",
    "wrap_ddp",
]

T = TypeVar("T")
R = TypeVar("R")


def run_distributed(cfg: Any, body: Callable[[DistContext], T]) -> T:
    """``body(ctx)`` with ``cfg.threads`` torch threads (when set) inside the process group of ``cfg.device``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = init_distributed(cfg.device)
    try:
        return body(ctx)
    finally:
        cleanup_distributed()


def load_trained_checkpoint(path: str | Path, package: str, script: str) -> dict[str, Any]:
    """``package``'s training checkpoint at ``path`` (written by ``script``), refused unless it holds a model
    state_dict."""
    checkpoint = load_checkpoint(path, package=package, required=("model",))
    if not isinstance(checkpoint["model"], Mapping):
        raise ValueError(f"{path} is not a {script} checkpoint (no 'model' state_dict)")
    return checkpoint


def load_strict(model: nn.Module, state_dict: Mapping[str, Any], path: str | Path, what: str) -> None:
    """Load ``state_dict`` into ``model`` strictly; a misfit is a ValueError ``'<path> does not fit <what>: ...'``."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit {what}: {e}") from e


def open_eval_logger(cfg: Any, ctx: DistContext) -> tuple[Path, RunLogger]:
    """The evaluation folder (``cfg.output_dir``, default ``<cfg.checkpoint folder>/eval``) and its logger."""
    out_dir = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.checkpoint).parent / "eval"
    return out_dir, RunLogger(out_dir, is_main=ctx.is_main, tensorboard=False, name="eval")


def finish_run(
    logger: RunLogger, metrics: dict[str, Any], *lines: str, metrics_dir: Path | None = None
) -> dict[str, Any]:
    """Write ``metrics.json``, log ``lines`` (then where the metrics went, given ``metrics_dir``), close the logger;
    returns ``metrics``."""
    logger.write_metrics(metrics)
    for line in lines:
        logger.info(line)
    if metrics_dir is not None:
        logger.info(f"metrics written to {metrics_dir / 'metrics.json'}")
    logger.close()
    return metrics


def end_epoch(
    cfg: Any,
    ctx: DistContext,
    logger: RunLogger,
    out_dir: Path,
    epoch: int,
    row: dict[str, Any],
    last: bool,
    is_best: bool,
    state: Callable[[], dict[str, Any]],
    hook: Callable[[int, dict[str, Any]], None] | None,
) -> None:
    """Save ``state()`` as ``last.pt`` (and ``best.pt``) on the main process when the epoch is the last, the best or
    a multiple of ``cfg.checkpoint_interval``; log the epoch's row; then call ``hook(epoch, row)``."""
    if ctx.is_main and (last or is_best or (cfg.checkpoint_interval and (epoch + 1) % cfg.checkpoint_interval == 0)):
        save_last_and_best(state(), out_dir, is_best)
    logger.log_epoch(epoch, row)
    if hook is not None:
        hook(epoch, row)


def wrap_ddp(model: nn.Module, ctx: DistContext, find_unused_parameters: bool = False) -> nn.Module:
    """``model`` in DistributedDataParallel (on the local GPU under CUDA) when ``ctx`` is distributed, else itself."""
    if not ctx.distributed:
        return model
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


def _preparse_checkpoint(argv: Sequence[str]) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--checkpoint", default=None)
    pre.add_argument("--output_dir", default=None)
    args = pre.parse_known_args(list(argv))[0]
    if not args.checkpoint and not {"-h", "--help"} & set(argv):
        pre.error("--checkpoint PATH is required")
    return args


def _upgraded(schema: type, stored: Mapping[str, Any]) -> dict[str, Any]:
    """``stored`` (a checkpoint's config) in today's keys: ``schema.upgrade_stored``
    (:meth:`shared.config.RunConfig.upgrade_stored`), or unchanged for a schema without one."""
    upgrade = getattr(schema, "upgrade_stored", None)
    return upgrade(stored) if upgrade is not None else dict(stored)


def parse_checkpoint_config(
    schema: type[T],
    argv: Sequence[str] | None,
    default_config: Path,
    description: str,
    package: str,
    not_inherited: Sequence[str] = ("output_dir", "resume"),
) -> T:
    """The config of an evaluation script: the config stored in ``--checkpoint`` (without its ``not_inherited``
    keys, read in today's keys by the schema's ``upgrade_stored``; ``-c`` and flags override it), else
    ``default_config`` (a checkpoint without a config, e.g. a released file); command-line flags override it.
    ``output_dir`` comes from the command line only (else None: the caller writes next to the checkpoint).

    The checkpoint is read and checked first: another package's checkpoint, a missing or an unreadable file is a
    :class:`shared.checkpoint.CheckpointError` before anything is written. A missing ``--checkpoint`` is a usage
    error (exit status 2).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = _preparse_checkpoint(argv)
    stored = load_checkpoint(pre.checkpoint, package=package).get("config") if pre.checkpoint else None
    if isinstance(stored, Mapping):
        cfg = parse_eval_config(schema, _upgraded(schema, stored), argv, description, ignore=tuple(not_inherited))
    else:
        cfg = parse_config(schema, argv, description, default_config=default_config)
    return cfg if pre.output_dir is not None else dataclasses.replace(cfg, output_dir=None)


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
    ignore: Sequence[str] = (),
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
        ignore: keys of the stored config that the evaluation does not inherit (they keep the schema's defaults).
    """
    description = doc.splitlines()[0]
    parser = argparse.ArgumentParser(description=description, add_help=False, allow_abbrev=False)
    parser.add_argument("--checkpoint", required=True, help=checkpoint_help)
    parser.add_argument("--output_dir", default=None, help="default: <checkpoint folder>/eval")
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):  # the two flags above, then every config key that may be overridden
        parser.print_help()
        parse_config(schema, ["--help"], description="config keys (override the checkpoint's stored config)")
    args, rest = parser.parse_known_args(argv)
    checkpoint = Path(args.checkpoint)
    state = load_checkpoint(checkpoint, package=package, required=tuple(required))
    cfg = parse_eval_config(
        schema, _upgraded(schema, state["config"]), rest, description=description, ignore=tuple(ignore)
    )
    out = Path(args.output_dir) if args.output_dir else checkpoint.parent / "eval"
    return Evaluation(checkpoint=checkpoint, state=state, config=cfg, output_dir=out)


def checkpoint_parser(
    schema: type, doc: str, package: str, **options: Any
) -> Callable[[Sequence[str] | None], Evaluation]:
    """The ``parse_args(argv=None) -> Evaluation`` of an eval script, declared in one line (as
    :func:`shared.config.script_parser` for a training script)::

        parse_args = checkpoint_parser(Config, __doc__, PACKAGE, required=(...), checkpoint_help="last.pt of ...")

    ``options`` are the keyword arguments of :func:`parse_checkpoint_args` (``required``, ``checkpoint_help``,
    ``ignore``).
    """

    def parse_args(argv: Sequence[str] | None = None) -> Evaluation:
        return parse_checkpoint_args(schema, argv, doc, package, **options)

    parse_args.__doc__ = (
        f"``--checkpoint`` ({options.get('checkpoint_help', 'the checkpoint')}), ``--output_dir``, ``--key value`` "
        "overrides of its config."
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
    ``cfg.device`` (its collectives wait ``cfg.collective_timeout_min`` minutes where a config has that key), then
    ``prepare(ctx)`` (checks, data, run folder); if ``prepare`` fails the group is torn down before the error
    propagates. Returns the context and what ``prepare`` returned."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # a package whose other ranks wait for a stage that rank 0 runs alone sets a longer collective timeout
    ctx = init_distributed(cfg.device, timeout_min=getattr(cfg, "collective_timeout_min", None))
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
