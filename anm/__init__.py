"""SANM: Learning with Noisy Labels via Self-supervised Adversarial Noisy Masking (Tu et al., CVPR 2023).

A plug-in on the shared DivideMix engine (README, "Method"):

* :mod:`anm.masking`: attention from the last feature map, argmax / argmin boxes sized by the clean probability,
  label modulation (Eq. 5, 7), vectorised over the batch;
* :mod:`anm.losses`: the reconstruction loss of the erased images (Eq. 10);
* :mod:`anm.model`: C2D's SupCE ResNet-18/50 and DivideMix's PreAct ResNet-18 with the decoder, the C2D checkpoint
  loader, the small CNN of the CPU evidence;
* :mod:`anm.sanm`: :class:`SANM`, the DivideMix subclass (12-group MixMatch batch + L_rec), and the CE arm.
"""

from anm.losses import reconstruction_loss
from anm.masking import MaskerConfig, attention_map, mask_images, modulate_labels
from anm.model import (
    VARIANTS,
    DigitsCNN,
    PreActResNet18SANM,
    ReconstructionDecoder,
    SupCEResNet,
    create_model,
    load_c2d_checkpoint,
)
from anm.sanm import SANM, CEBaseline, sanm_groups

DEMO_INFO = {
    "task": "learning with noisy labels (SANM on the DivideMix engine)",
    "dataset": "synthetic CIFAR-10-format set (2 000 train / 500 test, 16 px), 50 % symmetric noise",
    "metrics": ["test_acc"],
}

__all__ = [
    "DEMO_INFO",
    "SANM",
    "VARIANTS",
    "CEBaseline",
    "DigitsCNN",
    "MaskerConfig",
    "PreActResNet18SANM",
    "ReconstructionDecoder",
    "SupCEResNet",
    "attention_map",
    "create_model",
    "load_c2d_checkpoint",
    "mask_images",
    "modulate_labels",
    "reconstruction_loss",
    "sanm_groups",
]
