"""The plumbing the train/eval entry scripts of the packages share (see CONTRIBUTING.md, "Package template").

* :func:`parse_checkpoint_config`: an evaluation script's config, from the checkpoint it evaluates;
* :func:`run_distributed`: a script's ``main``: set the thread count, start the process group (one process or
  ``torchrun``), run the body, always tear the group down;
* :func:`load_trained_checkpoint` and :func:`load_strict`: read a package's training checkpoint for evaluation and
  load its model weights strictly, each refusal naming the file;
* :func:`open_eval_logger` and :func:`finish_run`: the evaluation output folder (``--output_dir``, default
  ``<checkpoint folder>/eval/``) and the end of a run (``metrics.json``, the summary lines, the logger closed);
* :func:`wrap_ddp`: the training model, in DistributedDataParallel when the run has several processes;
* :func:`end_epoch`: the end of a training epoch (checkpoint when due, the epoch row logged, the hook called).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from shared.checkpoint import load_checkpoint, save_last_and_best
from shared.config import parse_config, parse_eval_config
from shared.distributed import DistContext, cleanup_distributed, init_distributed
from shared.logger import RunLogger

__all__ = [
    "end_epoch",
    "finish_run",
    "load_strict",
    "load_trained_checkpoint",
    "open_eval_logger",
    "parse_checkpoint_config",
    "run_distributed",
    "wrap_ddp",
]

T = TypeVar("T")


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
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--checkpoint", default=None)
    pre.add_argument("--output_dir", default=None)
    args = pre.parse_known_args(list(argv))[0]
    if not args.checkpoint and not {"-h", "--help"} & set(argv):
        pre.error("--checkpoint PATH is required")
    return args


def parse_checkpoint_config(
    schema: type[T],
    argv: Sequence[str] | None,
    default_config: Path,
    description: str,
    package: str,
    upgrade: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    not_inherited: Sequence[str] = ("output_dir", "resume"),
) -> T:
    """The config of an evaluation script: the config stored in ``--checkpoint`` (without its ``not_inherited``
    keys; ``-c`` and flags override it; ``upgrade`` maps an older stored config to the current keys), else
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
        stored = upgrade(stored) if upgrade is not None else stored
        cfg = parse_eval_config(schema, stored, argv, description, ignore=tuple(not_inherited))
    else:
        cfg = parse_config(schema, argv, description, default_config=default_config)
    return cfg if pre.output_dir is not None else dataclasses.replace(cfg, output_dir=None)
