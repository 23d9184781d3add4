"""Evaluate a Pyramid ViG / PVG checkpoint on the ImageNet validation split (or the synthetic set): top-1/top-5 of the
EMA and of the raw weights.

    python -m pvg.eval --checkpoint runs/pvg/default/<time>/last.pt
    python -m pvg.eval -c pvg/configs/pvig_s_in1k.yaml --checkpoint pvig_s_82.1.pth.tar --data.root /data/imagenet

Accepted checkpoints: a ``train.py`` checkpoint (``last.pt``/``best.pt``: EMA reported as ``ema_top1`` ..., raw as
``top1`` ...; its own resolved config is used unless ``-c`` is given), or an official release file / any layout
:func:`pvg.weights.unwrap_state_dict` reads (reported as ``top1``/``top5``). Every weight must fit the model
(strict load). ``metrics.json`` goes to ``--output_dir`` (default ``<checkpoint folder>/eval/``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import pvg  # noqa: F401  (registers the models with timm)
from pvg.config import DEFAULT_CONFIG, PACKAGE, PVGTrainConfig, parse_checkpoint_config
from pvg.weights import unwrap_state_dict
from shared.classification import evaluate_weight_sets

__all__ = ['PVGEvalConfig', 'checkpoint_weight_sets', 'main', 'parse_args']


@dataclass
class PVGEvalConfig(PVGTrainConfig):
    """The training config plus the checkpoint to evaluate."""

    checkpoint: str = field(default='', metadata={'help': 'train.py checkpoint, official release file or state_dict'})


def checkpoint_weight_sets(checkpoint: Mapping[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """``{'ema': ..., 'raw': ...}`` for this repository's training checkpoints, else ``{'weights': ...}``."""
    if isinstance(checkpoint.get('model'), Mapping) and 'optimizer' in checkpoint:
        sets = {'ema': dict(checkpoint['ema'])} if checkpoint.get('ema') is not None else {}
        return {**sets, 'raw': dict(checkpoint['model'])}
    return {'weights': unwrap_state_dict(checkpoint)}


def parse_args(argv: Sequence[str] | None = None) -> PVGEvalConfig:
    """Resolve the config: flags > ``-c`` > the checkpoint's own config > configs/default.yaml."""
    return parse_checkpoint_config(
        PVGEvalConfig, argv, DEFAULT_CONFIG, 'Evaluate a PVG / Pyramid ViG checkpoint on the validation split.'
    )


def main(cfg: PVGEvalConfig) -> dict[str, Any]:
    """Evaluate every weight set of ``cfg.checkpoint``; writes and returns the metrics (percent / nats)."""
    return evaluate_weight_sets(cfg, PACKAGE, checkpoint_weight_sets)


if __name__ == '__main__':
    main(parse_args())
