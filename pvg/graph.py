"""Graph construction and neighbour aggregation of Pyramid ViG and PVG (README, "Graph construction").

Two interchangeable paths build the dynamic kNN graph of a Grapher:

* ``dense``: the official-style reference. One (B, N, M) squared-distance matrix on L2-normalised features
  (``|x|^2 - 2 x.y + |y|^2``), plus the relative-position bias, ``topk(-dist, k * d)``, then every d-th neighbour
  (dilation). Aggregation gathers both the neighbours x_j and the centres x_i as (B, C, N, k) tensors and takes
  ``max_j (x_j - x_i)``, as the official ``MRConv2d`` does.
* ``fast``: the same distances, computed in query chunks so that no buffer holds more than ``chunk_elements``
  entries (no N x N or B x N x M distance matrix for large inputs; the relative-position bias it adds is the
  caller's (N, M) table: at a non-design input size the Grapher's bicubic resize, as official), and a lighter
  aggregation: only x_j is gathered from a (B * M, C) row table, and ``max_j (x_j - x_i) = max_j x_j - x_i``
  (exact in floating point, because rounding is monotone), so the repeated centre tensor is never built.

Both run under ``torch.no_grad()`` (no gradient flows through the neighbour choice, as in the official code), keep
the node itself as a neighbour, and return identical indices up to exact ties of the distance.
"""

from __future__ import annotations

import collections
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    'DEFAULT_CHUNK_ELEMENTS',
    'cached_spatial_neighbours',
    'gather_neighbours',
    'knn_dense',
    'knn_fast',
    'knn_graph',
    'knn_query_chunk',
    'relative_position_bias',
    'sincos_pos_embed_2d',
    'spatial_neighbours',
]

#: Largest distance buffer of the fast path, in entries (2^24 fp32 entries = 64 MiB).
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.reshape(-1, 1).double() * omega.reshape(1, -1)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_pos_embed_2d(dim: int, grid_size: int) -> torch.Tensor:
    """2-D sin-cos position embedding (MAE form) of a ``grid_size`` x ``grid_size`` grid: (grid_size^2, dim), float64.

    Half of the channels encode one grid axis, half the other; each half is [sin, cos] of the position times
    ``1 / 10000^(2i / (dim / 2))``.
    """
    if dim % 4:
        raise ValueError(f'the sin-cos embedding needs a channel count divisible by 4, got {dim}')
    coords = torch.arange(grid_size, dtype=torch.float64)
    grid_w, grid_h = torch.meshgrid(coords, coords, indexing='xy')  # numpy.meshgrid(w, h) order
    return torch.cat([_sincos_1d(dim // 2, grid_w), _sincos_1d(dim // 2, grid_h)], dim=1)


def relative_position_bias(dim: int, num_nodes: int, reduction: int = 1) -> torch.Tensor:
    """The frozen relative-position term of a Pyramid ViG Grapher, (1, N, floor(sqrt(N) / r)^2), float32 (a new
    tensor; N / r^2 keys when r divides the grid side, as at every stage of a 224-px model).

    R = 2 * P P^T / dim for the sin-cos embedding P of the sqrt(N) x sqrt(N) grid, bicubically resized to
    (N, N / r^2) along its flattened axes, stored negated (it is added to the distance before ``topk(-dist)``:
    nodes with similar positions are preferred).
    """
    return _relative_position_bias(dim, num_nodes, reduction).clone()


@functools.lru_cache(maxsize=16)
def _relative_position_bias(dim: int, num_nodes: int, reduction: int) -> torch.Tensor:
    grid = math.isqrt(num_nodes)
    if grid * grid != num_nodes:
        raise ValueError(f'relative position bias needs a square node grid, got {num_nodes} nodes')
    with torch.device('cpu'):  # a fixed table: computed on the CPU even under a device context
        pos = sincos_pos_embed_2d(dim, grid)
        rel = (2.0 * pos @ pos.T / pos.shape[1]).float()[None, None]
    rel = F.interpolate(
        rel, size=(num_nodes, (grid // reduction) ** 2), mode='bicubic', align_corners=False
    )  # keys: the r-pooled grid, floor(sqrt(N) / r)^2 (= N / r^2 when r divides the side, as at 224 px)
    return -rel[:, 0]


def knn_query_chunk(batch: int, num_keys: int, chunk_elements: int) -> int:
    """Query rows per chunk of the fast path: the largest count whose (batch, rows, keys) buffer fits."""
    return max(1, chunk_elements // max(1, batch * num_keys))


def _distances(x: torch.Tensor, y: torch.Tensor, y_sq: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Squared distances of queries (B, n, C) to keys (B, M, C) in the official order of operations."""
    dist = (x * x).sum(-1, keepdim=True) + (-2.0 * torch.matmul(x, y.transpose(1, 2))) + y_sq
    return dist + bias if bias is not None else dist


@torch.no_grad()
def knn_dense(
    x: torch.Tensor, y: torch.Tensor, k: int, dilation: int = 1, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference kNN: the whole (B, N, M) distance matrix, then top-k and dilation.

    Args:
        x: L2-normalised queries (B, N, C).
        y: L2-normalised keys (B, M, C).
        k: Neighbours kept per query.
        dilation: Keep every d-th of the k * d nearest.
        bias: Added to the distances, broadcastable to (B, N, M) (the relative-position term).
    Returns:
        Key indices (B, N, k), int64, nearest first.
    """
    _check_neighbours(y.shape[1], k, dilation)
    dist = _distances(x, y, (y * y).sum(-1).unsqueeze(1), bias)
    return torch.topk(-dist, k * dilation, dim=-1).indices[..., ::dilation]


@torch.no_grad()
def knn_fast(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    dilation: int = 1,
    bias: torch.Tensor | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """The kNN of :func:`knn_dense`, computed over query chunks of at most ``chunk_elements`` distances each."""
    _check_neighbours(y.shape[1], k, dilation)
    batch, num_queries, _ = x.shape
    rows = knn_query_chunk(batch, y.shape[1], chunk_elements)
    y_sq = (y * y).sum(-1).unsqueeze(1)
    if rows >= num_queries:
        dist = _distances(x, y, y_sq, bias)
        return torch.topk(-dist, k * dilation, dim=-1).indices[..., ::dilation]
    out = torch.empty(batch, num_queries, k, dtype=torch.long, device=x.device)
    for start in range(0, num_queries, rows):
        stop = min(start + rows, num_queries)
        part_bias = bias[..., start:stop, :] if bias is not None else None
        dist = _distances(x[:, start:stop], y, y_sq, part_bias)
        out[:, start:stop] = torch.topk(-dist, k * dilation, dim=-1).indices[..., ::dilation]
    return out


def knn_graph(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    dilation: int = 1,
    bias: torch.Tensor | None = None,
    mode: str = 'fast',
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Dilated kNN graph of node features x (B, C, N) against keys y (B, C, M) (normalised here, over channels).

    ``mode`` is ``'fast'`` (chunked) or ``'dense'`` (the official-style reference). Returns (B, N, k) key indices.
    """
    with torch.no_grad():
        xq = F.normalize(x.detach().float(), p=2.0, dim=1).transpose(1, 2)
        yk = F.normalize(y.detach().float(), p=2.0, dim=1).transpose(1, 2)
        bias = bias.float() if bias is not None else None
        if mode == 'dense':
            return knn_dense(xq, yk, k, dilation, bias)
        if mode == 'fast':
            return knn_fast(xq, yk, k, dilation, bias, chunk_elements)
    raise ValueError(f"graph mode must be 'fast' or 'dense', got {mode!r}")


def _check_neighbours(num_keys: int, k: int, dilation: int) -> None:
    if k < 1 or dilation < 1:
        raise ValueError(f'k and dilation must be >= 1, got k={k}, dilation={dilation}')
    if k * dilation > num_keys:
        raise ValueError(
            f'k * dilation = {k} * {dilation} = {k * dilation} neighbours requested from only {num_keys} nodes; '
            'use a larger input or a smaller k/dilation'
        )


def gather_neighbours(y: torch.Tensor, index: torch.Tensor, mode: str = 'fast') -> torch.Tensor:
    """Neighbour features of y (B, C, M) at index (B, N, k), read from a (B * M, C) row table.

    ``'dense'`` returns the official layout (B, C, N, k) (a permuted view); ``'fast'`` returns (B, N, k, C), which the
    caller reduces over k directly.
    """
    batch, channels, num_keys = y.shape
    offset = torch.arange(batch, device=y.device).view(-1, 1, 1) * num_keys
    rows = y.transpose(1, 2).reshape(batch * num_keys, channels)
    picked = rows[(index + offset).reshape(-1)].view(batch, index.shape[1], index.shape[2], channels)
    return picked.permute(0, 3, 1, 2) if mode == 'dense' else picked


_NEIGHBOURS: collections.OrderedDict[tuple[int, int, int, str], torch.Tensor] = collections.OrderedDict()


def cached_spatial_neighbours(height: int, width: int, k: int, device: str) -> torch.Tensor:
    """:func:`spatial_neighbours` on ``device``, computed once per grid size and shared by every Grapher (the 32 most
    recent sizes: multi-scale training visits a few dozen). A table built while tracing (ONNX / torch.export, where
    it is a fake tensor) is not kept: it must not outlive its trace."""
    key = (height, width, k, device)
    index = _NEIGHBOURS.get(key)
    if index is not None:
        _NEIGHBOURS.move_to_end(key)
        return index
    index = spatial_neighbours(height, width, k, torch.device(device))
    if type(index) is torch.Tensor and not torch.compiler.is_compiling():
        _NEIGHBOURS[key] = index
        if len(_NEIGHBOURS) > 32:
            _NEIGHBOURS.popitem(last=False)
    return index


def spatial_neighbours(height: int, width: int, k: int, device: torch.device | None = None) -> torch.Tensor:
    """The k grid positions nearest to each node of an H x W grid (Euclidean, ties by raster index), (N, k).

    The fixed local graph of PSGC: inside the image it is the 3 x 3 window for k = 9; near the border the k nearest
    in-image positions (itself first), so every node keeps k distinct neighbours.

    Each node's candidates are the positions of a (2R + 1)^2 window around it (R from sqrt(k), doubled until the
    k-th distance of every node is at most R, which puts every position as near as the k-th inside the window), so
    time and memory grow with N k, not N^2: a 200 x 336 stage-1 grid of an 800 x 1344 COCO image is 67 200 nodes.
    """
    if k > height * width:
        raise ValueError(f'{k} local neighbours requested on a {height} x {width} grid')
    # numpy, so that tracers (torch.export, ONNX) see a constant table
    ys, xs = np.divmod(np.arange(height * width), width)
    radius = max(1, int(np.ceil(np.sqrt(k))))
    while True:
        span = np.arange(-radius, radius + 1)
        dy, dx = (d.reshape(-1) for d in np.meshgrid(span, span, indexing='ij'))  # raster order of the window
        cy, cx = ys[:, None] + dy, xs[:, None] + dx
        inside = (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
        dist = np.where(inside, dy * dy + dx * dx, np.iinfo(np.int64).max // 4)
        cand = cy * width + cx  # raster index of each candidate; increasing along the window for a fixed node
        order = np.argsort(dist, axis=1, kind='stable')[:, :k]  # ties by window order = raster order
        kth = np.take_along_axis(dist, order[:, -1:], axis=1)
        if (kth <= radius * radius).all() or 2 * radius + 1 >= 2 * max(height, width):
            break
        radius *= 2
    index = np.take_along_axis(cand, order, axis=1)
    return torch.from_numpy(np.ascontiguousarray(index)).to(device=device, dtype=torch.long)
