"""What several mixteacher test modules build: a toy semi-supervised batch, settings that mine every box."""

import torch

from mixteacher.config import MixTeacherSettings


def toy_batch(n_unlabeled: int = 2) -> dict:
    """One labeled 96 x 128 image with one box of class 2, ``n_unlabeled`` weak/strong pairs related by identity."""
    g = torch.Generator().manual_seed(0)
    return {
        "labeled_images": [torch.rand(3, 96, 128, generator=g)],
        "labeled_targets": [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([2])}],
        "weak_images": [torch.rand(3, 96, 128, generator=g) for _ in range(n_unlabeled)],
        "strong_images": [torch.rand(3, 96, 128, generator=g) for _ in range(n_unlabeled)],
        "weak_to_strong": torch.eye(3, dtype=torch.float64).expand(n_unlabeled, 3, 3).clone(),
    }


def mining_settings(mining_features: str, **overrides) -> MixTeacherSettings:
    """Settings under which the unlabeled branch runs at once and mining promotes whatever it can: no burn-in,
    promotion at any score difference (-1) and any IoU, no pseudo box dropped for its regression uncertainty."""
    return MixTeacherSettings(
        unsup_start=0,
        unsup_warmup=0,
        mining_diff_thr=-1.0,
        mining_iou_thr=0.0,
        reg_uncertainty_thr=1e9,
        mining_features=mining_features,
        **overrides,
    )
