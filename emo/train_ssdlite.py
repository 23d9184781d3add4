"""COCO object detection with SSDLite-EMO: the paper's SSDLite recipe (320 x 320) on torchvision's SSD.

The recipe of the official mmdet configs (zhangzjn/EMO ``down-stream-tasks/mmdetection/configs/ssd_emo/
ssdlite_emo_{1M,2M,5M}_pretrain_coco.py``): 120 epochs of ``RepeatDataset(times=5)``, AdamW lr 1.2e-3 (betas
0.9/0.999), weight decay 0.05 except parameters whose name contains ``norm``, no gradient clipping, mmcv's
``CosineAnnealing`` (per epoch, to 0) with a 500-iteration linear warm-up from 1e-3 x lr, 24 images per GPU on 8 GPUs
(global batch 192; lr scaled linearly for other batches), the SSD augmentation (expand, min-IoU crop, flip,
photometric distortion; :class:`emo.data.SSDAugmentedCoco`), a fixed 320 x 320 input, the backbone initialised from
an ImageNet checkpoint with ``norm_eval``; COCO evaluation of the val split every 5 epochs and after the last. The
model is :func:`emo.ssdlite.build_ssdlite`, the config :class:`emo.config.SSDLiteConfig`; the loop is
``train_det.py``'s.

    cd emo && python train_ssdlite.py                         # embedded default: synthetic COCO set at 320 px, CPU
    python -m emo.train_ssdlite -c emo/configs/ssdlite_emo_1m_coco.yaml --data.root data/coco \\
        --pretrained_backbone net.pth
    torchrun --nproc_per_node=8 -m emo.train_ssdlite -c emo/configs/ssdlite_emo_1m_coco.yaml ...

The run folder gets ``config.yaml``, ``train.log``, ``log.csv``, TensorBoard scalars, ``last.pt``/``best.pt``
(best COCO AP) and ``metrics.json``; ``--resume last.pt`` continues a run exactly.
"""

from __future__ import annotations

from typing import Any

from emo import train_det
from emo.config import DEFAULT_SSDLITE_CONFIG, SSDLiteConfig
from shared.config import script_parser

__all__ = ['main', 'parse_args']


parse_args = script_parser(SSDLiteConfig, 'Train SSDLite-EMO on COCO (or the synthetic set).', DEFAULT_SSDLITE_CONFIG)


def main(cfg: SSDLiteConfig, on_epoch_end: train_det.EpochHook | None = None) -> dict[str, Any]:
    """Train and evaluate; returns (and writes to ``metrics.json``) the final metrics (see ``train_det.main``)."""
    return train_det.main(cfg, on_epoch_end)


if __name__ == '__main__':
    main(parse_args())
