"""EMO (ICCV 2023, arXiv 2301.01146): iRMB blocks and the EMO-1M/2M/5M/6M backbones.

Importing this package registers ``emo_1m``, ``emo_2m``, ``emo_5m``, ``emo_6m`` and ``emo_test`` with timm, so
``timm.create_model("emo_1m")`` works. Scripts: ``train.py``/``eval.py`` (ImageNet classification),
``train_det.py``/``eval_det.py`` (COCO RetinaNet), ``train_ssdlite.py``/``eval_ssdlite.py`` (COCO SSDLite, 320 px),
``train_seg.py``/``eval_seg.py`` (ADE20K DeepLabv3 / PSPNet), ``export_onnx.py``, ``bench.py``.
"""

from emo.model import (
    EMO,
    ConvNormAct,
    LayerNorm2d,
    MSPatchEmb,
    emo_1m,
    emo_2m,
    emo_5m,
    emo_6m,
    emo_test,
    fuse_batchnorm,
    iRMB,
)
from emo.weights import (
    OFFICIAL_CHECKPOINTS,
    checkpoint_filter_fn,
    download_official_checkpoint,
    load_official_checkpoint,
    unwrap_state_dict,
)

__all__ = [
    'EMO',
    'OFFICIAL_CHECKPOINTS',
    'ConvNormAct',
    'LayerNorm2d',
    'MSPatchEmb',
    'checkpoint_filter_fn',
    'download_official_checkpoint',
    'emo_1m',
    'emo_2m',
    'emo_5m',
    'emo_6m',
    'emo_test',
    'fuse_batchnorm',
    'iRMB',
    'load_official_checkpoint',
    'unwrap_state_dict',
]

# `make demo`: python -m emo.train (configs/default.yaml), then python -m emo.eval on its last.pt
DEMO_INFO = {
    'task': 'image classification (EMO backbone, EMA and raw weights)',
    'dataset': 'synthetic 10-class ImageFolder set, 48 px (ImageNet train/val layout)',
    'metrics': ['ema_top1', 'ema_top5', 'top1'],
}
