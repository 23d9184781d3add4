"""Evaluate an SSDLite-EMO checkpoint of ``train_ssdlite.py`` on the COCO val split (or the synthetic set).

    python -m emo.eval_ssdlite --checkpoint runs/emo/ssdlite_default/<time>/last.pt
    python -m emo.eval_ssdlite -c emo/configs/ssdlite_emo_1m_coco.yaml --checkpoint last.pt --data.root data/coco

COCO bbox AP, AP50, AP75, APs, APm, APl (and AR, per-class AP) with pycocotools, as fractions in ``metrics.json``
(``--output_dir``, default ``<checkpoint folder>/eval/``) and in percent on the console; the same evaluation as
``eval_det.py``. Without ``-c`` the checkpoint's own config is used; command-line flags override it. A file that is
not an emo checkpoint is refused before anything is written.
"""

from __future__ import annotations

from emo import eval_det
from emo.config import DEFAULT_SSDLITE_CONFIG, SSDLiteConfig, parse_checkpoint_config
from shared.detection_training import checkpoint_eval_config, eval_script_parser

__all__ = ['SSDLiteEvalConfig', 'main', 'parse_args']


SSDLiteEvalConfig = checkpoint_eval_config(SSDLiteConfig, 'train_ssdlite.py', 'SSDLiteEvalConfig', __name__)
parse_args = eval_script_parser(
    parse_checkpoint_config,
    SSDLiteEvalConfig,
    DEFAULT_SSDLITE_CONFIG,
    'Evaluate an SSDLite-EMO checkpoint on the COCO val split.',
)
#: Evaluate the detector of ``cfg.checkpoint`` on the val split; writes and returns the metrics (``eval_det.py``'s).
main = eval_det.main


if __name__ == '__main__':
    main(parse_args())
