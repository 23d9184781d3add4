"""ImageNet-1K training of EMO with the paper's recipe, on the shared supervised loop (`shared.classification`).

The recipe is the official one (zhangzjn/EMO ``configs/mobile/cls_emo.py`` and the resolved configs printed in
``resources/EMO_*/log_train.txt``): AdamW (0.9, 0.999), eps 1e-8, lr 6e-3 for a global batch of 2048 (scaled
linearly), weight decay 0.05 except 1-D parameters and biases, 300 epochs with 20 warm-up epochs from 1e-6, cosine
to 1e-6 per iteration, label smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1, random train interpolation, no random
erasing, no mixup/cutmix, EMA 0.9998 per iteration, gradient clipping at global L2 norm 5.0, drop path per variant,
native fp16 AMP; evaluation resize 256 / centre crop 224, bicubic. One YAML per variant in ``configs/``.

    cd emo && python train.py                               # embedded default: synthetic ImageFolder set, CPU
    python -m emo.train -c emo/configs/emo_1m_in1k.yaml --data.root /data/imagenet
    torchrun --nproc_per_node=8 -m emo.train -c emo/configs/emo_1m_in1k.yaml --data.root /data/imagenet

Every key of :class:`emo.config.EMOTrainConfig` is a command-line flag (``--lr 3e-3``, ``--data.batch_size 128``); an
unknown key is an error. The run folder (``runs/emo/<config>/<time>/`` unless ``--output_dir``) receives
``config.yaml``, ``train.log``, ``log.csv``, TensorBoard scalars, ``last.pt``/``best.pt`` and ``metrics.json``;
``eval_interval`` and ``checkpoint_interval`` count epochs. The loop (``train_one_epoch``, ``evaluate``) is
``shared.classification``'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import emo  # noqa: F401  (registers the EMO models with timm)
from emo.config import DEFAULT_CONFIG, PACKAGE, EMOTrainConfig, resolve_drop_path
from shared.augment import allow_zero_bit_posterize
from shared.classification import run_classification
from shared.config import script_parser

__all__ = ['main', 'parse_args']


def _print_summary(metrics: dict[str, Any]) -> None:
    last = metrics['last']
    parts = [
        f"{name} top-1 {last[prefix + 'top1']:.2f}  top-5 {last[prefix + 'top5']:.2f}"
        for name, prefix in (('EMA', 'ema_'), ('raw', ''))
        if prefix + 'top1' in last
    ]
    print(f"{metrics['model']} after {metrics['epochs']} epochs: " + ' | '.join(parts) + f"  ({metrics['run_dir']})")


_parse_config = script_parser(
    EMOTrainConfig, 'Train EMO on ImageNet (or the synthetic ImageFolder set).', DEFAULT_CONFIG
)


def parse_args(argv: Sequence[str] | None = None) -> EMOTrainConfig:
    """Resolve the training config (see :func:`shared.config.script_parser`); ``drop_path: null`` becomes the
    variant's official rate."""
    return resolve_drop_path(_parse_config(argv))


def main(cfg: EMOTrainConfig) -> dict[str, Any]:
    """Train with the resolved config; returns the metrics written to ``metrics.json``."""
    allow_zero_bit_posterize()  # Pillow rejects rand-m9-mstd0.5-inc1's 0-bit posterize (README, Fidelity notes)
    metrics = run_classification(cfg, package=PACKAGE)
    if int(os.environ.get('RANK', '0')) == 0:
        _print_summary(metrics)
    return metrics


if __name__ == '__main__':
    main(parse_args())
