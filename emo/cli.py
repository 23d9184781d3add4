"""Command-line helpers of the training and evaluation scripts (run-folder naming, evaluation config resolution)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from shared.checkpoint import load_checkpoint
from shared.config import parse_config

__all__ = ['parse_eval_config']

T = TypeVar('T')


def _preparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-c', '--config', default=None)
    parser.add_argument('--checkpoint', default=None)
    parser.add_argument('--output_dir', default=None)
    return parser


def _preparse(argv: Sequence[str]) -> argparse.Namespace:
    return _preparser().parse_known_args(list(argv))[0]


def parse_eval_config(schema: type[T], argv: Sequence[str] | None, default_config: Path,
                      description: str) -> tuple[T, dict[str, Any] | None]:
    """Resolve an evaluation config and load the checkpoint it names (``--checkpoint``).

    The YAML layer is ``-c FILE`` if given, else the config stored in the checkpoint (the training run's own, without
    its ``output_dir``/``resume``), else ``default_config``; it overrides the dataclass defaults and command-line
    flags override it. ``output_dir`` comes from the command line only (else None: the caller writes next to the
    checkpoint), never from a training config.

    Returns:
        (config, loaded checkpoint); a missing ``--checkpoint`` is a usage error (exit status 2).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = _preparse(argv)
    if not pre.checkpoint and not {'-h', '--help'} & set(argv):
        _preparser().error('--checkpoint PATH is required')
    checkpoint = load_checkpoint(pre.checkpoint) if pre.checkpoint else None
    stored = checkpoint.get('config') if isinstance(checkpoint, Mapping) else None
    with tempfile.TemporaryDirectory() as tmp:
        if pre.config is None and isinstance(stored, Mapping):
            default_config = Path(tmp) / 'checkpoint_config.yaml'
            stored = {k: v for k, v in stored.items() if k not in ('output_dir', 'resume')}
            default_config.write_text(yaml.safe_dump(stored, sort_keys=False))
        cfg = parse_config(schema, argv, description=description, default_config=default_config)
    if pre.output_dir is None:
        cfg = dataclasses.replace(cfg, output_dir=None)
    return cfg, checkpoint
