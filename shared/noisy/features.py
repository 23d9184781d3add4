"""Frozen feature extraction: a backbone with ``forward_features`` -> an ``N x d`` float tensor."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["extract_features"]


@torch.no_grad()
def extract_features(
    model: nn.Module,
    data: torch.Tensor | Dataset,
    transform: Callable | None = None,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> torch.Tensor:
    """Pooled features of every sample, in order, with the model in eval mode (BN running statistics).

    Args:
        model: has ``forward_features(x) -> B x d``.
        data: an in-memory uint8/float image tensor ``N x 3 x H x W`` (``transform`` is applied to each batch), or a
            dataset whose items are ``(image, ...)`` or an image (``transform`` is the dataset's business).
        transform: batch transform for tensor input (e.g. :class:`shared.noisy.data.Normalize`).
        batch_size: images per forward pass.
        device: where to run.
        num_workers: DataLoader workers for dataset input.

    Returns:
        float32 ``N x d`` tensor on the CPU.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    chunks = []
    if isinstance(data, torch.Tensor):
        for start in range(0, len(data), batch_size):
            batch = data[start : start + batch_size].to(device)
            batch = transform(batch) if transform is not None else batch.float()
            chunks.append(model.forward_features(batch).float().cpu())
    else:
        loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        for item in loader:
            batch = item[0] if isinstance(item, (list, tuple)) else item
            chunks.append(model.forward_features(batch.to(device)).float().cpu())
    model.train(was_training)
    if not chunks:
        raise ValueError("no samples to extract features from")
    return torch.cat(chunks)
