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

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import emo  # noqa: F401  (registers the EMO models with timm)
from emo.config import DEFAULT_CONFIG, PACKAGE, EMOTrainConfig, parse_checkpoint_config
from emo.weights import unwrap_state_dict
from shared.checkpoint import load_checkpoint
from shared.classification import build_classification_model, build_loaders, evaluate
from shared.distributed import cleanup_distributed, init_distributed
from shared.logger import RunLogger

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


_PREFIX = {'ema': 'ema_', 'raw': '', 'weights': ''}


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
    if not cfg.checkpoint:
        raise ValueError('--checkpoint PATH is required')
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = init_distributed(cfg.device)
    try:
        weight_sets = checkpoint_weight_sets(load_checkpoint(cfg.checkpoint, package=PACKAGE))
        # only the validation split is needed: build the loaders with it as the training split too
        data = dataclasses.replace(cfg.data, train_split=cfg.data.val_split, batch_size=1)
        _, val_loader, found_classes = build_loaders(data, ctx, cfg.seed)
        model = build_classification_model(
            dataclasses.replace(cfg, pretrained=None, drop_path=0.0), cfg.num_classes or found_classes
        ).to(ctx.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        out_dir = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.checkpoint).parent / 'eval'
        logger = RunLogger(out_dir, is_main=ctx.is_main, tensorboard=False, name='eval')
        metrics: dict[str, Any] = {
            'model': cfg.model,
            'checkpoint': str(cfg.checkpoint),
            'weights': sorted(weight_sets),
        }
        for name, state_dict in weight_sets.items():
            try:
                model.load_state_dict(state_dict, strict=True)
            except RuntimeError as err:
                raise RuntimeError(
                    f'{cfg.checkpoint} ({name} weights) does not fit {cfg.model} with '
                    f'{cfg.num_classes or found_classes} classes: {err}'
                ) from err
            result = evaluate(model, val_loader, ctx, cfg.amp, cfg.channels_last)
            metrics.update({_PREFIX[name] + k: v for k, v in result.items()})
            logger.info(
                f"{cfg.model} [{name}] top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}  "
                f"loss {result['loss']:.4f}"
            )
        logger.write_metrics(metrics)
        logger.info(f"metrics written to {out_dir / 'metrics.json'}")
        logger.close()
        return metrics
    finally:
        cleanup_distributed()


if __name__ == '__main__':
    main(parse_args())
