"""FRIH stage-2 region split: batched K-means of the composite's foreground colours into K disjoint submasks.

Paper: `FRIH: Fine-Grained Region-Aware Image Harmonization` - https://arxiv.org/abs/2205.06448 (AAAI 2024).
The abstract says the input foreground mask "is adaptively clustered into several submasks by the corresponding
pixel RGB values in the composite image". Everything below that sentence is a design choice [HYP] (README, "Fidelity
notes", items 2-5); each choice is a keyword argument:

* Points: the RGB values (0-255) of the pixels whose mask value is > `threshold` (resized masks are soft).
* Initialisation (deterministic, no random numbers): the foreground pixel at each luminance quantile
  (k + 0.5) / K, k = 0..K-1.
* `iters` Lloyd iterations, all images of the batch at once on the tensor's device (no per-sample sklearn).
* Empty clusters: during the iterations an empty cluster is re-seeded at the foreground pixel farthest from its
  centre (one re-seed per image and iteration); when no pixel is farther than 0 (fewer distinct colours than K)
  the cluster stays empty and its submask is all zero.
* Order: clusters are sorted by ascending centre luminance (module k always sees the k-th darkest region), empty
  clusters last; ties keep the cluster index order (stable sort).

The submasks partition the binarised mask exactly: every foreground pixel is in exactly one submask and
`submasks.sum(1) == (mask > threshold)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LUMINANCE_WEIGHTS", "SubmaskResult", "kmeans_submasks"]

# ITU-R BT.601 luma weights, used to order the clusters and to initialise them.
LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass
class SubmaskResult:
    """Output of `kmeans_submasks`.

    Attributes:
        submasks: (B, K, H, W) float {0, 1}, disjoint, summing to the binarised mask.
        centers: (B, K, 3) cluster centres in the input's RGB scale, sorted by luminance (empty clusters last).
        counts: (B, K) number of foreground pixels in each submask.
        labels: (B, H, W) int64 cluster index of each pixel after sorting, -1 outside the foreground.
    """

    submasks: torch.Tensor
    centers: torch.Tensor
    counts: torch.Tensor
    labels: torch.Tensor


def _sq_distances(points: torch.Tensor, sq_norms: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """(B, N, K) squared Euclidean distances |x|^2 - 2 x.c + |c|^2 in one batched matmul (used for the argmin only;
    sklearn's KMeans does the same)."""
    return torch.baddbmm(
        sq_norms[..., None] + centers.square().sum(-1)[:, None], points, centers.transpose(1, 2), alpha=-2.0
    )


@torch.no_grad()
def kmeans_submasks(
    rgb: torch.Tensor, mask: torch.Tensor, num_clusters: int, iters: int = 10, threshold: float = 0.5
) -> SubmaskResult:
    """Cluster the foreground pixels of each image by colour into `num_clusters` hard submasks.

    Args:
        rgb: (B, 3, H, W) colours used for clustering (the composite, 0-255 by convention).
        mask: (B, 1, H, W) or (B, H, W) foreground mask in [0, 1].
        num_clusters: K >= 1.
        iters: Lloyd iterations (fixed count: no host synchronisation inside the loop).
        threshold: a pixel is foreground when mask > threshold.

    Returns:
        A `SubmaskResult`; the computation carries no gradient.
    """
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"rgb must have shape (B, 3, H, W), got {tuple(rgb.shape)}")
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.shape[0] != rgb.shape[0] or mask.shape[1] != 1 or mask.shape[2:] != rgb.shape[2:]:
        raise ValueError(f"mask must have shape (B, 1, H, W) matching rgb {tuple(rgb.shape)}, got {tuple(mask.shape)}")
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
    b, _, h, w = rgb.shape
    k_count = num_clusters
    dev = rgb.device
    points = rgb.detach().float().flatten(2).transpose(1, 2)  # (B, N, 3)
    fg = mask.detach().flatten(1) > threshold  # (B, N)
    n_fg = fg.sum(1)  # (B,)
    luma_w = torch.tensor(LUMINANCE_WEIGHTS, device=dev, dtype=points.dtype)

    # Foreground pixels first, by ascending luminance; only they take part (B, M = max foreground count, padded).
    order = torch.sort((points @ luma_w).masked_fill(~fg, float("inf")), dim=1, stable=True).indices
    m_max = max(int(n_fg.max()), 1)
    idx = order[:, :m_max]
    valid = torch.arange(m_max, device=dev)[None] < n_fg[:, None]  # (B, M)
    weight = valid.to(points.dtype)
    pts = points.gather(1, idx[..., None].expand(-1, -1, 3))  # (B, M, 3)
    sq_norms = pts.square().sum(-1)

    # Deterministic initialisation at the luminance quantiles (k + 0.5) / K of the foreground pixels.
    quantiles = (torch.arange(k_count, device=dev, dtype=torch.float64) + 0.5) / k_count
    rank = torch.floor(quantiles[None] * n_fg[:, None].double()).long()
    rank = torch.minimum(rank, (n_fg[:, None] - 1).clamp(min=0))
    centers = pts.gather(1, rank[..., None].expand(-1, -1, 3)).clone()  # (B, K, 3)

    batch_idx = torch.arange(b, device=dev)
    cluster_idx = torch.arange(k_count, device=dev)[None]
    for _ in range(iters):
        assign = _sq_distances(pts, sq_norms, centers).argmin(-1)  # ties -> lowest index
        counts = torch.zeros(b, k_count, device=dev, dtype=points.dtype).scatter_add_(1, assign, weight)
        sums = torch.zeros(b, k_count, 3, device=dev, dtype=points.dtype).scatter_add_(
            1, assign[..., None].expand(-1, -1, 3), pts * weight[..., None]
        )
        means = sums / counts.clamp(min=1)[..., None]
        empty = counts == 0
        # Re-seed the first empty cluster of each image at its farthest foreground pixel (if any is > 0 away).
        own_center = centers.gather(1, assign[..., None].expand(-1, -1, 3))
        own = (pts - own_center).square().sum(-1).masked_fill(~valid, -1.0)  # exact, so equal colours give 0
        far_dist, far_idx = own.max(1)
        first_empty = torch.where(empty.any(1), empty.float().argmax(1), torch.full_like(n_fg, -1))
        reseed = (first_empty[:, None] == cluster_idx) & (far_dist > 0)[:, None]
        far_point = pts[batch_idx, far_idx]  # (B, 3)
        centers = torch.where(empty[..., None], centers, means)
        centers = torch.where(reseed[..., None], far_point[:, None].expand(-1, k_count, -1), centers)

    assign = _sq_distances(pts, sq_norms, centers).argmin(-1)
    counts = torch.zeros(b, k_count, device=dev, dtype=points.dtype).scatter_add_(1, assign, weight)
    key = (centers @ luma_w).masked_fill(counts == 0, float("inf"))
    perm = torch.sort(key, dim=1, stable=True).indices  # new position j holds old cluster perm[:, j]
    inverse = torch.argsort(perm, dim=1)  # old cluster i goes to new position inverse[:, i]
    fg_labels = inverse.gather(1, assign).masked_fill(~valid, -1)
    labels = torch.full((b, h * w), -1, device=dev, dtype=torch.long).scatter_(1, idx, fg_labels)
    out_dtype = rgb.dtype if rgb.is_floating_point() else torch.float32
    submasks = (labels[:, None] == torch.arange(k_count, device=dev)[None, :, None]).to(out_dtype)
    submasks = submasks.reshape(b, k_count, h, w)
    return SubmaskResult(
        submasks=submasks,
        centers=centers.gather(1, perm[..., None].expand(-1, -1, 3)),
        counts=counts.gather(1, perm),
        labels=labels.reshape(b, h, w),
    )
