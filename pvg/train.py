"""ImageNet-1K training of Pyramid ViG / PVG with the ViG recipe, on the shared supervised loop
(`shared.classification`).

The recipe is the official ViG one (README, Recipes): AdamW, lr 2e-3 for a global batch of 1024 (scaled linearly),
eps 1e-8, weight decay 0.05 except 1-D parameters and biases, 300 epochs with 20 warm-up epochs from 1e-6, cosine to
1e-5, label smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1, colour jitter 0.4, random erasing 0.25, mixup 0.8 and
cutmix 1.0, EMA 0.99996, drop path 0.1 (S), AMP; evaluation crop 0.9, bicubic, mean = std = 0.5. One YAML per
variant in ``configs/``.

    cd pvg && python train.py                               # embedded default: synthetic ImageFolder set, CPU
    python -m pvg.train -c pvg/configs/pvg_s_in1k.yaml --data.root /data/imagenet
    torchrun --nproc_per_node=8 -m pvg.train -c pvg/configs/pvig_s_in1k.yaml --data.root /data/imagenet

Every key of :class:`pvg.config.PVGTrainConfig` is a command-line flag; an unknown key is an error. The run folder
(``runs/pvg/<config>/<time>/`` unless ``--output_dir``) receives ``config.yaml``, ``train.log``, ``log.csv``,
TensorBoard scalars, ``last.pt``/``best.pt`` and ``metrics.json``; ``eval_interval`` and ``checkpoint_interval``
count epochs. The loop (``train_one_epoch``, ``evaluate``) is ``shared.classification``'s.
"""

from __future__ import annotations

import os
from typing import Any

import pvg  # noqa: F401  (registers the models with timm)
from pvg.config import DEFAULT_CONFIG, PACKAGE, PVGTrainConfig
from shared.classification import run_classification
from shared.config import script_parser

__all__ = ['main', 'parse_args']


parse_args = script_parser(
    PVGTrainConfig, 'Train Pyramid ViG / PVG on ImageNet (or the synthetic ImageFolder set).', DEFAULT_CONFIG
)


def main(cfg: PVGTrainConfig) -> dict[str, Any]:
    """Train with the resolved config; returns the metrics written to ``metrics.json``."""
    metrics = run_classification(cfg, package=PACKAGE)
    if int(os.environ.get('RANK', '0')) == 0:
        last = metrics['last']
        parts = [
            f"{name} top-1 {last[prefix + 'top1']:.2f}  top-5 {last[prefix + 'top5']:.2f}"
            for name, prefix in (('EMA', 'ema_'), ('raw', ''))
            if prefix + 'top1' in last
        ]
        print(
            f"{metrics['model']} after {metrics['epochs']} epochs: " + ' | '.join(parts) + f"  ({metrics['run_dir']})"
        )
    return metrics


if __name__ == '__main__':
    main(parse_args())
