"""PVG (ACM MM 2023, arXiv 2308.00574) on an exact Pyramid ViG (NeurIPS 2022, arXiv 2206.00272).

Importing this package registers ``pvig_ti``, ``pvig_s``, ``pvig_m``, ``pvig_b`` (the official Pyramid ViG,
state_dict-compatible with the released files), ``pvg_ti``, ``pvg_s``, ``pvg_m``, ``pvg_b`` (PVG: PSGC, MaxE,
GraphLU) and the tiny ``pvig_test``/``pvg_test`` with timm. Scripts: ``train.py``/``eval.py`` (ImageNet
classification), ``train_det.py``/``eval_det.py`` (COCO Mask R-CNN, ``pvg.detection``), ``export_onnx.py``,
``bench.py``, ``evidence.py``.
"""

from pvg.graph import knn_dense, knn_fast, knn_graph, relative_position_bias, spatial_neighbours
from pvg.model import (
    FFN,
    DynamicGraphConv,
    Grapher,
    GraphLU,
    MaxE,
    MaxRelativeConv,
    PyramidViG,
    psgc_global_channels,
    pvg_b,
    pvg_m,
    pvg_s,
    pvg_test,
    pvg_ti,
    pvig_b,
    pvig_m,
    pvig_s,
    pvig_test,
    pvig_ti,
)
from pvg.weights import OFFICIAL_RELEASE, checkpoint_filter_fn, load_official_checkpoint, unwrap_state_dict

__all__ = [
    'FFN',
    'OFFICIAL_RELEASE',
    'DynamicGraphConv',
    'GraphLU',
    'Grapher',
    'MaxE',
    'MaxRelativeConv',
    'PyramidViG',
    'checkpoint_filter_fn',
    'knn_dense',
    'knn_fast',
    'knn_graph',
    'load_official_checkpoint',
    'psgc_global_channels',
    'pvg_b',
    'pvg_m',
    'pvg_s',
    'pvg_test',
    'pvg_ti',
    'pvig_b',
    'pvig_m',
    'pvig_s',
    'pvig_test',
    'pvig_ti',
    'relative_position_bias',
    'spatial_neighbours',
    'unwrap_state_dict',
]

# `make demo`: python -m pvg.train (configs/default.yaml), then python -m pvg.eval on its last.pt
DEMO_INFO = {
    'task': 'image classification (PVG backbone, EMA and raw weights)',
    'dataset': 'synthetic 10-class ImageFolder set, 48 px (ImageNet train/val layout)',
    'metrics': ['ema_top1', 'ema_top5', 'top1'],
}
