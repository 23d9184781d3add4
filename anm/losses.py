"""SANM's self-supervised reconstruction loss (Eq. 10) on the masked images (README, "Method").

``L_rec = MSE(M_D(M_E(x_max)), x) + MSE(M_D(M_E(x_min)), x)``: the decoder M_D rebuilds the *unmasked* normalised
view x from the encoder's feature map of each erased copy; the mean runs over pixels and channels. The two erased
groups go through the encoder in one forward pass (as released, so batch-norm statistics cover both), and the
gradient reaches the encoder that the classifier shares: the reconstruction is a label-free signal that regularises
the features of mislabeled samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["reconstruction_loss"]


def reconstruction_loss(
    model: nn.Module, x_max: torch.Tensor, x_min: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Eq. 10 for a model with ``forward_feature_map`` and ``reconstruct`` (all :mod:`anm.model` networks).

    Args:
        model: the network being trained (its encoder and ``recon_module`` receive the gradient).
        x_max, x_min: the two erased copies (``B x C x H x W``).
        target: the unmasked normalised images (``B x C x H x W``).
    """
    if not (x_max.shape == x_min.shape == target.shape):
        raise ValueError(
            f"x_max {tuple(x_max.shape)}, x_min {tuple(x_min.shape)} and target {tuple(target.shape)} differ"
        )
    recon = model.reconstruct(model.forward_feature_map(torch.cat([x_max, x_min])))
    if recon.shape[1:] != target.shape[1:]:
        raise ValueError(
            f"the decoder gives {tuple(recon.shape[1:])} images for {tuple(target.shape[1:])} inputs; "
            "pick the decoder layout of the input size (README, Method)"
        )
    batch = target.shape[0]
    return F.mse_loss(recon[:batch], target) + F.mse_loss(recon[batch:], target)
