"""The common noisy-label engine of dmlp, anm and crema.

* :mod:`shared.noisy.data`: CIFAR-10/100 (official pickles, also the synthetic ones) and Clothing1M (official key
  lists, clean val/test splits) with noisy-label files; label-file export/import (hard + soft).
* :mod:`shared.noisy.models`: PreAct ResNet-18 (CIFAR) and ResNet-50 (Clothing1M) with a feature output.
* :mod:`shared.noisy.simclr`: SimCLR pretraining (CIFAR recipe, batched augmentation) and external SSL checkpoints.
* :mod:`shared.noisy.features`: frozen feature extraction to an ``N x d`` tensor.
* :mod:`shared.noisy.supervised`: CE training on given labels (baselines, naive retraining), DDP + exact resume.
* :mod:`shared.noisy.dividemix`: the DivideMix engine with its CIFAR and Clothing1M defaults.
* :mod:`shared.noisy.metrics`: label accuracy of corrected labels, best/last test accuracy.
"""

from shared.noisy.data import (
    CifarSplit,
    CifarTrainTransform,
    Clothing1M,
    LabelFile,
    Normalize,
    ViewDataset,
    load_cifar,
    load_label_file,
    noisy_labels_for,
    save_label_file,
)
from shared.noisy.dividemix import DivideMix, DivideMixConfig, cifar_defaults, clothing1m_defaults
from shared.noisy.features import extract_features
from shared.noisy.metrics import AccuracyTracker, label_accuracy
from shared.noisy.models import PreActResNet18, build_backbone, preact_resnet18, resnet50_noisy
from shared.noisy.simclr import SimCLR, SimCLRAugment, load_ssl_checkpoint, nt_xent_loss
from shared.noisy.supervised import SupervisedConfig, evaluate_accuracy, train_supervised

__all__ = [
    "AccuracyTracker",
    "CifarSplit",
    "CifarTrainTransform",
    "Clothing1M",
    "DivideMix",
    "DivideMixConfig",
    "LabelFile",
    "Normalize",
    "PreActResNet18",
    "SimCLR",
    "SimCLRAugment",
    "SupervisedConfig",
    "ViewDataset",
    "build_backbone",
    "cifar_defaults",
    "clothing1m_defaults",
    "evaluate_accuracy",
    "extract_features",
    "label_accuracy",
    "load_cifar",
    "load_label_file",
    "load_ssl_checkpoint",
    "noisy_labels_for",
    "nt_xent_loss",
    "preact_resnet18",
    "resnet50_noisy",
    "save_label_file",
    "train_supervised",
]
