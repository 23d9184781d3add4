"""Point-cloud operators in pure, batched PyTorch (no pointnet2_ops / knn_cuda, which users cannot build).

* :func:`farthest_point_sample` - the CUDA FPS of ``pointnet2_ops`` (start at index 0, greedy max-min distance);
* :func:`knn_indices` - the ``knn_cuda`` kNN (sorted by distance), chunked over the queries;
* :func:`group_points` - Point-MAE's ``Group``: FPS centres, kNN neighbourhoods expressed relative to the centre;
* :func:`three_nn_interpolate` - M3DM's point-feature alignment: 3-NN inverse-distance interpolation
  (weights proportional to 1 / (squared distance + 1e-8), normalised), chunked over the target points.

Every function runs on the device of its inputs; distance computations never materialise more than
``chunk`` x ``num_points`` entries per batch element.
"""

from __future__ import annotations

import torch

__all__ = ["farthest_point_sample", "gather_points", "group_points", "knn_indices", "three_nn_interpolate"]


def gather_points(points: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Batched gather: points (B, N, C), index (B, ...) -> (B, ..., C)."""
    b, _, c = points.shape
    flat = index.reshape(b, -1)
    out = torch.gather(points, 1, flat.unsqueeze(-1).expand(-1, -1, c))
    return out.reshape(*index.shape, c)


def farthest_point_sample(points: torch.Tensor, num_samples: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Farthest-point sampling, as ``pointnet2_ops.furthest_point_sample``: the first sample is index 0, each next
    one the point with the largest squared distance to the samples so far (ties: the lowest index).

    Args:
        points: (B, N, 3) coordinates.
        num_samples: number of centres G (<= the number of valid points).
        lengths: optional (B,) number of valid points per cloud; points at index >= length are padding and never
            selected (ragged clouds of different sizes in one batch).

    Returns:
        (B, G) int64 indices.
    """
    b, n, _ = points.shape
    smallest = int(lengths.min()) if lengths is not None else n
    if smallest < num_samples:
        raise ValueError(
            f"farthest_point_sample: a cloud has {smallest} valid points, fewer than num_samples={num_samples}"
        )
    coords = points.transpose(1, 2).contiguous()  # (B, 3, N): three contiguous planes
    if lengths is not None:
        # padding becomes a copy of point 0, the first centre: its distance to the selection is 0 from step one,
        # so it is never selected while a valid point remains
        pad = torch.arange(n, device=points.device)[None] >= lengths[:, None]
        coords = torch.where(pad[:, None], coords[:, :, :1], coords)
    min_dist = torch.full((b, n), float("inf"), device=points.device, dtype=points.dtype)
    index = torch.zeros(b, num_samples, dtype=torch.long, device=points.device)
    current = torch.zeros(b, 1, dtype=torch.long, device=points.device)
    dist = torch.empty_like(min_dist)
    # G sequential steps, each a vectorised distance update over all points of all clouds
    for i in range(1, num_samples):
        centre = torch.gather(coords, 2, current[:, None].expand(-1, 3, -1))  # (B, 3, 1)
        torch.sub(coords[:, 0], centre[:, 0], out=dist).square_()
        dist.addcmul_(coords[:, 1] - centre[:, 1], coords[:, 1] - centre[:, 1])
        dist.addcmul_(coords[:, 2] - centre[:, 2], coords[:, 2] - centre[:, 2])
        torch.minimum(min_dist, dist, out=min_dist)
        current = min_dist.argmax(dim=1, keepdim=True)
        index[:, i : i + 1] = current
    return index


def _squared_distances(queries: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B, Q, C) x (B, N, C) -> (B, Q, N) squared Euclidean distances, clamped at 0 (matmul form)."""
    d = (
        queries.square().sum(-1, keepdim=True)
        - 2.0 * queries @ points.transpose(1, 2)
        + points.square().sum(-1)[:, None]
    )
    return d.clamp_min_(0.0)


def knn_indices(
    queries: torch.Tensor, points: torch.Tensor, k: int, chunk: int = 1024, lengths: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest neighbours of each query among the points, sorted by increasing distance.

    Args:
        queries: (B, Q, C); points: (B, N, C); k: neighbours per query.
        chunk: queries per distance block (memory is B x chunk x N).
        lengths: optional (B,) valid points per cloud (padding is never returned while enough valid points exist).

    Returns:
        (squared distances (B, Q, k), indices (B, Q, k) int64).
    """
    n = points.shape[1]
    if k > n:
        raise ValueError(f"knn_indices: k={k} exceeds the number of points {n}")
    pad = None
    if lengths is not None:
        pad = torch.arange(n, device=points.device)[None, None] >= lengths[:, None, None]
    dists, idxs = [], []
    for start in range(0, queries.shape[1], chunk):
        d = _squared_distances(queries[:, start : start + chunk], points)
        if pad is not None:
            d = d.masked_fill(pad, float("inf"))
        value, index = torch.topk(d, k, dim=-1, largest=False, sorted=True)
        dists.append(value)
        idxs.append(index)
    return torch.cat(dists, 1), torch.cat(idxs, 1)


def group_points(
    points: torch.Tensor, num_group: int, group_size: int, lengths: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Point-MAE grouping: ``num_group`` FPS centres, ``group_size`` nearest neighbours each, centred.

    Returns:
        neighbourhoods (B, G, K, 3) relative to their centre, centres (B, G, 3), neighbour indices (B, G, K).
    """
    centre_idx = farthest_point_sample(points, num_group, lengths)
    centres = gather_points(points, centre_idx)
    _, idx = knn_indices(centres, points, group_size, lengths=lengths)
    neighbourhoods = gather_points(points, idx) - centres[:, :, None]
    return neighbourhoods, centres, idx


def three_nn_interpolate(
    targets: torch.Tensor, sources: torch.Tensor, features: torch.Tensor, chunk: int = 8192
) -> torch.Tensor:
    """Interpolate source features onto target points with M3DM's 3-NN inverse-distance weights.

    Args:
        targets: (B, N, 3) points that receive features; sources: (B, G, 3) points that carry them;
        features: (B, G, C).
        chunk: targets per distance block.

    Returns:
        (B, N, C) features, ``sum_j w_j f_j`` with ``w_j = (1 / (d_j^2 + 1e-8)) / sum_k (1 / (d_k^2 + 1e-8))`` over
        the 3 nearest sources (squared Euclidean distances, as pointnet2's ``three_nn``).
    """
    out = []
    for start in range(0, targets.shape[1], chunk):
        d2, idx = knn_indices(targets[:, start : start + chunk], sources, 3, chunk=chunk)
        w = 1.0 / (d2 + 1e-8)
        w = w / w.sum(-1, keepdim=True)
        out.append((gather_points(features, idx) * w[..., None]).sum(2))
    return torch.cat(out, 1)
