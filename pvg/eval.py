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

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import pvg  # noqa: F401  (registers the models with timm)
from pvg.config import DEFAULT_CONFIG, PACKAGE, PVGTrainConfig, parse_checkpoint_config
from pvg.weights import unwrap_state_dict
from shared.checkpoint import load_checkpoint
from shared.classification import build_classification_model, build_loaders, evaluate
from shared.distributed import cleanup_distributed, init_distributed
from shared.logger import RunLogger

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


_PREFIX = {'ema': 'ema_', 'raw': '', 'weights': ''}


def parse_args(argv: Sequence[str] | None = None) -> PVGEvalConfig:
    """Resolve the config: flags > ``-c`` > the checkpoint's own config > configs/default.yaml."""
    return parse_checkpoint_config(
        PVGEvalConfig, argv, DEFAULT_CONFIG, 'Evaluate a PVG / Pyramid ViG checkpoint on the validation split.'
    )


def main(cfg: PVGEvalConfig) -> dict[str, Any]:
    """Evaluate every weight set of ``cfg.checkpoint``; writes and returns the metrics (percent / nats)."""
    if not cfg.checkpoint:
        raise ValueError('--checkpoint PATH is required')
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = init_distributed(cfg.device)
    try:
        weight_sets = checkpoint_weight_sets(load_checkpoint(cfg.checkpoint, package=PACKAGE))
        data = dataclasses.replace(cfg.data, train_split=cfg.data.val_split, batch_size=1)
        _, val_loader, found_classes = build_loaders(data, ctx, cfg.seed)
        num_classes = cfg.num_classes or found_classes
        model = build_classification_model(dataclasses.replace(cfg, pretrained=None, drop_path=0.0), num_classes)
        model = model.to(ctx.device)
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
                    f'{cfg.checkpoint} ({name} weights) does not fit {cfg.model} with {num_classes} classes: {err}'
                ) from err
            result = evaluate(model, val_loader, ctx, cfg.amp, cfg.channels_last)
            metrics.update({_PREFIX[name] + k: v for k, v in result.items()})
            logger.info(f"{cfg.model} [{name}] top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}")
        logger.write_metrics(metrics)
        logger.close()
        return metrics
    finally:
        cleanup_distributed()


if __name__ == '__main__':
    main(parse_args())
