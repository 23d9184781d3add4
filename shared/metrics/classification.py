"""Classification metrics: top-k accuracy as in the torchvision classification references."""

from __future__ import annotations

from collections.abc import Sequence

from shared.metrics._inputs import ArrayLike, to_tensor


def topk_accuracy(
    logits: ArrayLike,
    targets: ArrayLike,
    topk: Sequence[int] = (1, 5),
) -> list[float]:
    """Top-k accuracy in percent, as ``accuracy`` in torchvision's ``references/classification/utils.py``.

    A sample counts as correct for k when its target class is among the k highest logits (``torch.topk``; which of
    several exactly tied logits is taken first is up to ``torch.topk``). A k larger than the number of classes is
    clamped to it (so it gives 100).

    Args:
        logits: (N, C) scores (logits or probabilities).
        targets: (N,) class indices, or (N, C) one-hot / soft targets (their argmax is the class, e.g. after
            mixup or label smoothing).
        topk: the values of k.

    Returns:
        One accuracy in [0, 100] per k, as Python floats.

    Raises:
        ValueError: wrong shapes, no sample, k < 1, or a class index outside [0, C).
    """
    logits = to_tensor(logits, "logits")
    targets = to_tensor(targets, "targets").to(logits.device)
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"topk_accuracy: logits must be (N, C) with N > 0, got {tuple(logits.shape)}")
    num_samples, num_classes = logits.shape
    if targets.ndim == 2:
        if targets.shape != logits.shape:
            raise ValueError(
                f"topk_accuracy: soft targets {tuple(targets.shape)} do not match logits {tuple(logits.shape)}"
            )
        targets = targets.argmax(dim=1)
    elif targets.shape != (num_samples,):
        raise ValueError(
            f"topk_accuracy: targets must be ({num_samples},) or ({num_samples}, {num_classes}), "
            f"got {tuple(targets.shape)}"
        )
    if targets.is_floating_point() or targets.is_complex():
        raise ValueError(f"topk_accuracy: class-index targets must be integers, got {targets.dtype}")
    if ((targets < 0) | (targets >= num_classes)).any():
        raise ValueError(f"topk_accuracy: targets must be class indices in [0, {num_classes})")
    if min(topk) < 1:
        raise ValueError(f"topk_accuracy: every k must be at least 1, got {tuple(topk)}")
    ks = [min(k, num_classes) for k in topk]
    top = logits.topk(max(ks), dim=1).indices
    hits = top == targets[:, None]
    return [float(hits[:, :k].any(dim=1).sum()) * 100.0 / num_samples for k in ks]
