"""The configs of the PVG scripts: ImageNet classification (``train.py``/``eval.py``) and how an evaluation resolves
its config from a checkpoint.

Every training config inherits :class:`shared.config.RunConfig` (``output_dir``, ``name``, ``resume``, ``seed``,
``device``, ``amp``, ``threads``, ``log_interval``, ``eval_interval``, ``checkpoint_interval``, ``tensorboard``); the
intervals count epochs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from shared.checkpoint import load_checkpoint
from shared.classification import ClassificationConfig, DataConfig
from shared.config import parse_config, parse_eval_config

__all__ = ['CONFIG_DIR', 'DEFAULT_CONFIG', 'PACKAGE', 'PVGTrainConfig', 'ViGDataConfig', 'parse_checkpoint_config']

PACKAGE = 'pvg'
CONFIG_DIR = Path(__file__).resolve().parent / 'configs'
DEFAULT_CONFIG = CONFIG_DIR / 'default.yaml'

T = TypeVar('T')


@dataclass
class ViGDataConfig(DataConfig):
    """`shared.classification.DataConfig` with the ViG recipe's data defaults: the models' mean = std = 0.5,
    eval crop 0.9 (bicubic), RandAugment m9, colour jitter 0.4, random erasing 0.25, 128 images per GPU."""

    crop_pct: float = 0.9
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    re_prob: float = 0.25
    batch_size: int = field(default=128, metadata={'help': 'images per process'})
    eval_batch_size: int = 128


@dataclass
class PVGTrainConfig(ClassificationConfig):
    """`shared.classification.ClassificationConfig` with the ViG ImageNet recipe as defaults (README, Recipes):
    AdamW lr 2e-3 at a global batch of 1024, wd 0.05, 300 epochs with 20 warm-up epochs from 1e-6, cosine to 1e-5,
    label smoothing 0.1, mixup 0.8, cutmix 1.0, EMA 0.99996, drop path 0.1, no gradient clipping."""

    model: str = field(default='pvg_s', metadata={'help': 'timm model (pvig_ti/s/m/b, pvg_ti/s/m/b, *_test)'})
    drop_path: float = 0.1
    data: ViGDataConfig = field(default_factory=ViGDataConfig)
    lr: float = 2e-3
    lr_base_batch: int = field(default=1024, metadata={'help': 'lr is given for this global batch; scaled linearly'})
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    clip_grad: float | None = None
    mixup: float = 0.8
    cutmix: float = 1.0
    ema_decay: float | None = field(default=0.99996, metadata={'help': 'per-step EMA decay; null disables EMA'})


_NOT_INHERITED = ('output_dir', 'resume')


def _preparse(argv: Sequence[str]) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('--checkpoint', default=None)
    pre.add_argument('--output_dir', default=None)
    args = pre.parse_known_args(list(argv))[0]
    if not args.checkpoint and not {'-h', '--help'} & set(argv):
        pre.error('--checkpoint PATH is required')
    return args


def parse_checkpoint_config(schema: type[T], argv: Sequence[str] | None, default_config: Path, description: str) -> T:
    """An evaluation's config: the config stored in ``--checkpoint`` (without its ``output_dir``/``resume``; ``-c``
    and flags override it), else ``default_config`` (a file without a config, e.g. an official release);
    flags override it. A foreign, missing or unreadable checkpoint is an error before anything is written."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = _preparse(argv)
    stored = load_checkpoint(pre.checkpoint, package=PACKAGE).get('config') if pre.checkpoint else None
    if isinstance(stored, dict):
        cfg = parse_eval_config(schema, stored, argv, description, ignore=_NOT_INHERITED)
    else:
        cfg = parse_config(schema, argv, description, default_config=default_config)
    return cfg if pre.output_dir is not None else dataclasses.replace(cfg, output_dir=None)
