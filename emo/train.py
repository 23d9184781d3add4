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

Every key of :class:`EMOTrainConfig` is a command-line flag (``--lr 3e-3``, ``--data.batch_size 128``); an unknown
key is an error. The run folder (``runs/emo/<config>/<time>/`` unless ``--output_dir``) receives ``config.yaml``,
``train.log``, ``log.csv``, TensorBoard scalars, ``last.pt``/``best.pt`` and ``metrics.json``.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import emo  # noqa: F401  (registers the EMO models with timm)
from shared.augment import allow_zero_bit_posterize
from shared.classification import ClassificationConfig, run_classification
from shared.config import config_name, parse_config

__all__ = ['DEFAULT_CONFIG', 'OFFICIAL_DROP_PATH', 'EMOTrainConfig', 'load_train_config', 'main', 'resolve_drop_path']

CONFIG_DIR = Path(__file__).resolve().parent / 'configs'
DEFAULT_CONFIG = CONFIG_DIR / 'default.yaml'

# Maximum stochastic-depth rate of the official constructors (fact sheet section 2.1); the same values are the
# defaults of the timm constructors in emo.model. Other models (emo_test, any timm model) default to 0.
OFFICIAL_DROP_PATH = {'emo_1m': 0.04036, 'emo_2m': 0.05, 'emo_5m': 0.05, 'emo_6m': 0.05}


@dataclass
class EMOTrainConfig(ClassificationConfig):
    """`shared.classification.ClassificationConfig` with EMO's defaults.

    The inherited defaults already are the EMO recipe (see the module docstring); this class names the model, makes
    the drop-path rate default to the variant's official value and adds the CPU thread count.
    """

    model: str = field(default='emo_1m', metadata={'help': 'timm model (emo_1m, emo_2m, emo_5m, emo_6m, emo_test)'})
    drop_path: float | None = field(default=None, metadata={
        'help': "maximum stochastic-depth rate; null: the variant's official rate (0.04036 EMO-1M, 0.05 others)"})
    torch_threads: int | None = field(default=None, metadata={
        'help': "intra-op CPU threads of each process (torch.set_num_threads); null: PyTorch's default"})


def resolve_drop_path(cfg: EMOTrainConfig) -> EMOTrainConfig:
    """Replace ``drop_path: null`` by the official rate of ``cfg.model`` (0 for models without one)."""
    if cfg.drop_path is not None:
        return cfg
    return dataclasses.replace(cfg, drop_path=OFFICIAL_DROP_PATH.get(cfg.model, 0.0))


def load_train_config(argv: Sequence[str] | None = None) -> EMOTrainConfig:
    """Resolve the training config: dataclass defaults < YAML (``-c``, else configs/default.yaml) < command line."""
    cfg = parse_config(EMOTrainConfig, argv, description='Train EMO on ImageNet (or the synthetic ImageFolder set).',
                       default_config=DEFAULT_CONFIG)
    return resolve_drop_path(cfg)


def _print_summary(metrics: dict[str, Any]) -> None:
    last = metrics['last']
    parts = [f"{name} top-1 {last[prefix + 'top1']:.2f}  top-5 {last[prefix + 'top5']:.2f}"
             for name, prefix in (('EMA', 'ema_'), ('raw', '')) if prefix + 'top1' in last]
    print(f"{metrics['model']} after {metrics['epochs']} epochs: " + ' | '.join(parts) + f"  ({metrics['run_dir']})")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train with the resolved config; returns the metrics written to ``metrics.json``."""
    cfg = load_train_config(argv)
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    allow_zero_bit_posterize()  # current Pillow rejects the 0-bit posterize of rand-m9-mstd0.5-inc1 (see emo.data)
    metrics = run_classification(cfg, package='emo', config_name=config_name(argv))
    if int(os.environ.get('RANK', '0')) == 0:
        _print_summary(metrics)
    return metrics


if __name__ == '__main__':
    main()
