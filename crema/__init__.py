"""CREMA: Learning from Noisy Labels with Coarse-to-Fine Sample Credibility Modeling (Zhang et al., ECCV 2022
Workshops, arXiv 2208.10683), on the shared noisy-label engine :mod:`shared.noisy`.

* :mod:`crema.credibility`: credibility, the per-sample memory, the coarse GMM split, memory-based modulation and
  the selective label update (README, Method);
* :mod:`crema.losses`: the fine-level loss;
* :mod:`crema.coarse_to_fine`: the training loop (one network, or two co-divided networks);
* :mod:`crema.data` / :mod:`crema.text`: CIFAR, Clothing1M, digits in the CIFAR layout, and the optional IMDB path;
* :mod:`crema.model`: ``VARIANTS`` and :func:`create_model`.
"""

from crema.coarse_to_fine import CremaTrainer
from crema.credibility import (
    CredibilityMemory,
    coarse_split,
    credibility,
    js_divergence,
    modulation_weights,
    selective_label_update,
)
from crema.losses import crema_loss
from crema.model import VARIANTS, create_model

DEMO_INFO = {
    "task": "learning with noisy labels (coarse-to-fine sample credibility)",
    "dataset": "synthetic CIFAR-10-format set (2 000 train / 500 test, 16 px), 50 % symmetric noise",
    "metrics": ["test_acc"],
}

__all__ = [
    "DEMO_INFO",
    "VARIANTS",
    "CredibilityMemory",
    "CremaTrainer",
    "coarse_split",
    "create_model",
    "credibility",
    "crema_loss",
    "js_divergence",
    "modulation_weights",
    "selective_label_update",
]
