"""Conversion of metric inputs (numpy arrays, torch tensors, array-likes) to torch tensors."""

from __future__ import annotations

import numpy as np
import torch

# What the metrics accept: a torch tensor (evaluated on its device) or a numpy array (evaluated on the CPU).
ArrayLike = torch.Tensor | np.ndarray


def to_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """Return ``x`` as a torch tensor without copying where possible.

    Tensors are detached and stay on their device; numpy arrays (and array-likes) become CPU tensors that share
    memory with the array when it is contiguous.

    Args:
        x: a torch tensor, a numpy array or anything ``numpy.asarray`` accepts.
        name: the argument's name, used in error messages.

    Returns:
        The tensor.

    Raises:
        TypeError: ``x`` cannot be converted (e.g. an object array).
    """
    if isinstance(x, torch.Tensor):
        return x.detach()
    array = np.ascontiguousarray(x)
    if array.dtype == object:
        raise TypeError(f"{name} must be numeric, got an array of Python objects")
    return torch.from_numpy(array)
