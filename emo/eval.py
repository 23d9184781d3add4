"""Evaluate an EMO checkpoint on the ImageNet validation split (or the synthetic set): top-1/top-5 of the EMA and
of the raw weights.

    python -m emo.eval --checkpoint runs/emo/default/<time>/last.pt
    python -m emo.eval -c emo/configs/emo_1m_in1k.yaml --checkpoint net.pth --data.root /data/imagenet

Accepted checkpoints:

* a ``train.py`` checkpoint (``last.pt``/``best.pt``): the EMA (``ema_top1``, ...) and the raw (``top1``, ...) weights
  are evaluated; without ``-c`` its own resolved config (model, data, evaluation transform) is used;
* the official trainer's ``{'net': ..., 'net_E': ...}``: ``net_E`` is reported as EMA, ``net`` as raw;
* a flat state_dict such as the released ``net.pth`` (or any layout :func:`emo.weights.unwrap_state_dict` reads):
  reported as ``top1``/``top5``.

The config (``-c``, or the checkpoint's, or configs/default.yaml) names the model and the data; its training keys
are accepted and ignored. A file that is not an emo checkpoint (another package's, text, missing) is refused before
anything is written. ``metrics.json`` goes to ``--output_dir`` (default ``<checkpoint folder>/eval/``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import emo  # noqa: F401  (registers the EMO models with timm)
from emo.config import DEFAULT_CONFIG, PACKAGE, EMOTrainConfig, parse_checkpoint_config
from emo.weights import unwrap_state_dict
from shared.classification import evaluate_weight_sets

__all__ = ['EMOEvalConfig', 'checkpoint_weight_sets', 'main', 'parse_args']


@dataclass
class EMOEvalConfig(EMOTrainConfig):
    """The training config plus the checkpoint to evaluate."""

    checkpoint: str = field(default='', metadata={'help': 'train.py checkpoint, official net.pth or state_dict'})


def checkpoint_weight_sets(checkpoint: Mapping[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """The weights held by a checkpoint, as ``{'ema': ..., 'raw': ...}`` or ``{'weights': ...}``.

    ``ema``/``raw`` for this repository's training checkpoints (``ema``/``model``) and for the official trainer's
    (``net_E``/``net``); ``weights`` for a single state_dict (e.g. the released ``net.pth``).
    """
    if isinstance(checkpoint.get('model'), Mapping):
        sets = {'ema': dict(checkpoint['ema'])} if checkpoint.get('ema') is not None else {}
        return {**sets, 'raw': dict(checkpoint['model'])}
    if 'net' in checkpoint or 'net_E' in checkpoint:
        sets = {}
        if checkpoint.get('net_E') is not None:
            sets['ema'] = unwrap_state_dict(checkpoint, use_ema=True)
        if checkpoint.get('net') is not None:
            sets['raw'] = unwrap_state_dict(checkpoint, use_ema=False)
        return sets
    return {'weights': unwrap_state_dict(checkpoint)}


def parse_args(argv: Sequence[str] | None = None) -> EMOEvalConfig:
    """Resolve the config: flags > ``-c`` > the checkpoint's own config > configs/default.yaml."""
    return parse_checkpoint_config(
        EMOEvalConfig, argv, DEFAULT_CONFIG, 'Evaluate an EMO checkpoint (EMA and raw weights) on the validation split.'
    )


def main(cfg: EMOEvalConfig) -> dict[str, Any]:
    """Evaluate every weight set of ``cfg.checkpoint`` on the validation split; writes and returns the metrics.

    Keys: ``top1``, ``top5``, ``loss`` (raw weights or the single state_dict) and ``ema_top1``, ``ema_top5``,
    ``ema_loss`` (EMA weights), in percent / nats, plus ``model``, ``checkpoint`` and ``weights`` (the sets found).
    """
    return evaluate_weight_sets(cfg, PACKAGE, checkpoint_weight_sets)


if __name__ == '__main__':
    main(parse_args())
