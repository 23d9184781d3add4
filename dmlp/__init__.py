"""DMLP: Learning from Noisy Labels with Decoupled Meta Label Purifier (CVPR 2023, arXiv 2302.06810).

Public API: the purifier (`DMLPPurifier`, `PurifierConfig`, the closed-form solver of IPC, the seeded meta split),
its losses (`ipc_meta_loss`, `eac_loss`), and the data set-up (`build_task`). Backbones, SimCLR, DivideMix and the
datasets live in the shared noisy-label engine `shared.noisy`.
"""

from dmlp.data import DataConfig, NoisyTask, build_task
from dmlp.losses import eac_loss, ipc_meta_loss
from dmlp.purifier import DMLPPurifier, PurifierConfig, closed_form_solver, meta_split, ridge_gram_cholesky

DEMO_INFO = {
    "task": "learning with noisy labels (meta label purification)",
    "dataset": (
        "synthetic CIFAR-10-format set (5 000 train / 1 000 test, 16 px), 80 % symmetric noise, 100 clean "
        "meta samples (2 %)"
    ),
    "metrics": [
        "label_acc_noisy",
        "label_acc_purified",
        "test_acc_ce_noisy",
        "test_acc_meta_only",
        "test_acc_dmlp_naive",
    ],
}

__all__ = [
    "DEMO_INFO",
    "DMLPPurifier",
    "DataConfig",
    "NoisyTask",
    "PurifierConfig",
    "build_task",
    "closed_form_solver",
    "eac_loss",
    "ipc_meta_loss",
    "meta_split",
    "ridge_gram_cholesky",
]
