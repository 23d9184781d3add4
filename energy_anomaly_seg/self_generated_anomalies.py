"""SLEEG's self-generated anomaly pixels (paper Sec. "Self-generated anomalies"; released code ``add_patch`` /
``render_patchv4`` / ``RandomRoadObject``), batched on tensors.

1. **Patch pool.** Every training image gives ``crops_per_image`` (2) rectangular crops with area U(0.03, 0.06) of the
   image and aspect (w/h) U(0.8, 1.2); they enter a FIFO pool of ``pool_size`` (30) *before* pasting, so a paste may
   come from the same image.
2. **Paste.** Each image receives ``pastes_per_image`` (10) pastes of random pooled crops at uniformly random places
   (the whole crop box inside the image). The pasted region is the crop's **convex polygon**:

   * ``"convex_hull"`` (released code): the convex hull of 15 uniformly random points in the crop box;
   * ``"harris"`` (the paper's wording): the convex hull of the crop's strongest Harris corners;
   * ``"square"`` (Table 4 ablation): the whole crop box.

   With probability ``noise_ratio`` (0.1) the crop content is replaced by N(0, 1) noise (normalised pixel space).
   Pasted pixels get segmentation label ``ignore_index`` (255) and OoD label 1; every other pixel OoD label 0.
   Later pastes cover earlier ones, as in the sequential loop of the released code.

Everything runs on tensors for the whole batch; the only Python loops run over polygon edges (<= 15) and hull
walk steps, never over pixels, crops or pastes. Randomness comes from a ``torch.Generator`` so a run can be resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AnomalyPatchPool", "PasteResult", "convex_hull", "harris_corner_points", "rasterize_convex_polygons"]

POLYGON_KINDS = ("convex_hull", "harris", "square")


def _uniform(generator: torch.Generator, shape: tuple[int, ...], low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return torch.rand(shape, generator=generator) * (high - low) + low


def convex_hull(points: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched convex hull of point sets in general position.

    Args:
        points: (N, K, 2) float (x, y).

    Returns:
        vertices (N, K, 2): the hull vertices in order (counter-clockwise in x-right/y-up axes), then the first
        vertex repeated to fill K rows; num_vertices (N,).

    A directed pair (i -> j) is a hull edge iff every point lies on its left (cross product >= -eps); each hull
    vertex has exactly one outgoing edge, and walking the edges from any hull vertex gives the ordered hull.
    """
    k = points.shape[1]
    p = points.double()
    edge = p[:, None, :, :] - p[:, :, None, :]  # (N, i, j, 2) = p_j - p_i
    rel = p[:, None, :, :] - p[:, :, None, :]  # (N, i, k, 2) = p_k - p_i
    cross = edge[:, :, :, None, 0] * rel[:, :, None, :, 1] - edge[:, :, :, None, 1] * rel[:, :, None, :, 0]
    not_self = ~torch.eye(k, dtype=torch.bool, device=points.device)
    is_edge = (cross >= -eps).all(dim=-1) & not_self  # (N, i, j)
    is_vertex = is_edge.any(dim=-1)
    successor = is_edge.float().argmax(dim=-1)  # first j of each hull vertex (unique in general position)
    current = is_vertex.float().argmax(dim=-1)  # any hull vertex to start from
    order = [current]
    for _ in range(k - 1):
        current = successor.gather(1, current[:, None])[:, 0]
        order.append(current)
    order = torch.stack(order, dim=1)
    num = is_vertex.sum(dim=1)
    # past the last hull vertex, repeat the first one: the closing edge stays an edge, the rest are degenerate
    order = torch.where(torch.arange(k, device=points.device)[None] < num[:, None], order, order[:, :1])
    vertices = points.gather(1, order[..., None].expand(-1, -1, 2))
    return vertices, num


def rasterize_convex_polygons(vertices: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixels (integer coordinates, as ``skimage.draw.polygon``) inside ordered convex polygons.

    Args:
        vertices: (N, K, 2) (x, y), ordered as :func:`convex_hull` returns them (repeated vertices allowed).

    Returns:
        (N, height, width) bool.
    """
    ys = torch.arange(height, device=vertices.device, dtype=vertices.dtype)[:, None]
    xs = torch.arange(width, device=vertices.device, dtype=vertices.dtype)[None, :]
    inside = torch.ones(vertices.shape[0], height, width, dtype=torch.bool, device=vertices.device)
    nxt = vertices.roll(-1, dims=1)
    for t in range(vertices.shape[1]):  # one half-plane test per edge; degenerate (repeated) edges pass everything
        x0, y0 = vertices[:, t, 0, None, None], vertices[:, t, 1, None, None]
        ex, ey = nxt[:, t, 0, None, None] - x0, nxt[:, t, 1, None, None] - y0
        inside &= ex * (ys - y0) - ey * (xs - x0) >= 0
    return inside


def harris_corner_points(
    patches: torch.Tensor, sizes: torch.Tensor, num_points: int, generator: torch.Generator, k: float = 0.04
) -> torch.Tensor:
    """The ``num_points`` strongest Harris corners of each crop (3x3 Sobel gradients, 3x3 box window, response
    det - k trace^2, 5x5 non-maximum suppression), jittered by U(-0.5, 0.5) so the hull is in general position; crops
    with fewer corners are completed with uniformly random points.

    Args:
        patches: (P, 3, Hm, Wm) crops (valid region top-left); sizes: (P, 2) valid (h, w).

    Returns:
        (P, num_points, 2) float (x, y) within each crop's pixel centres [0, w-1] x [0, h-1].
    """
    p, _, hm, wm = patches.shape
    gray = patches.mean(dim=1, keepdim=True)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=patches.device) / 8
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    ix = F.conv2d(padded, sobel.view(1, 1, 3, 3))
    iy = F.conv2d(padded, sobel.t().contiguous().view(1, 1, 3, 3))
    window = torch.ones(1, 1, 3, 3, device=patches.device) / 9
    sxx, syy, sxy = (F.conv2d(v, window, padding=1) for v in (ix * ix, iy * iy, ix * iy))
    response = (sxx * syy - sxy * sxy - k * (sxx + syy) ** 2)[:, 0]
    ys = torch.arange(hm, device=patches.device)[None, :, None]
    xs = torch.arange(wm, device=patches.device)[None, None, :]
    h, w = sizes[:, 0, None, None].to(patches.device), sizes[:, 1, None, None].to(patches.device)
    valid = (ys >= 1) & (ys < h - 1) & (xs >= 1) & (xs < w - 1)
    response = torch.where(valid, response, torch.full_like(response, -math.inf))
    peak = response == F.max_pool2d(response[:, None], 5, stride=1, padding=2)[:, 0]
    score = torch.where(peak & (response > 0), response, torch.full_like(response, -math.inf)).flatten(1)
    top, idx = score.topk(min(num_points, score.shape[1]), dim=1)
    corners = torch.stack([(idx % wm).float(), (idx // wm).float()], dim=-1).cpu()
    box = sizes[:, None, :].flip(-1).float().cpu()  # (w, h)
    random_points = _uniform(generator, (p, top.shape[1], 2)) * (box - 1)
    jitter = _uniform(generator, (p, top.shape[1], 2), -0.5, 0.5)
    enough = (torch.isfinite(top).sum(dim=1) >= 3).cpu()[:, None, None]
    points = torch.where(enough & torch.isfinite(top).cpu()[..., None], corners + jitter, random_points)
    return points.clamp(min=torch.zeros(2), max=box - 1).to(patches.device)


@dataclass
class PasteResult:
    """What :meth:`AnomalyPatchPool.paste` did, for tests, visualisation and the input-gradient option."""

    vertices: torch.Tensor  # (B, P, K, 2) polygon vertices (x, y) in image coordinates
    num_vertices: torch.Tensor  # (B, P)
    winner: torch.Tensor  # (B, H, W) index of the visible paste per pixel, -1 where none
    coverage: torch.Tensor  # (B, H, W) number of pastes covering each pixel
    noise: torch.Tensor  # (B, P) bool: content replaced by noise
    source: torch.Tensor  # (B, P) pool slot of each paste
    offsets: torch.Tensor  # (B, P, 2) top-left (row, col) of each paste box


class AnomalyPatchPool:
    """FIFO pool of training crops and the batched convex-polygon paste of SLEEG.

    Args:
        pool_size: capacity (30 in the released code).
        crops_per_image: crops added per image (2).
        area_range: crop area as a fraction of the image area (0.03, 0.06).
        aspect_range: crop aspect w/h (0.8, 1.2).
        polygon: "convex_hull" (code), "harris" (paper wording) or "square" (ablation).
        hull_points: random points (convex_hull) or Harris corners (harris) per polygon (15).
        harris_k: Harris response constant.
    """

    def __init__(
        self,
        pool_size: int = 30,
        crops_per_image: int = 2,
        area_range: tuple[float, float] = (0.03, 0.06),
        aspect_range: tuple[float, float] = (0.8, 1.2),
        polygon: str = "convex_hull",
        hull_points: int = 15,
        harris_k: float = 0.04,
    ):
        if polygon not in POLYGON_KINDS:
            raise ValueError(f"unknown polygon kind {polygon!r}; expected one of {POLYGON_KINDS}")
        if hull_points < 3:
            raise ValueError(f"hull_points must be >= 3, got {hull_points}")
        self.pool_size, self.crops_per_image = pool_size, crops_per_image
        self.area_range, self.aspect_range = area_range, aspect_range
        self.polygon, self.hull_points, self.harris_k = polygon, hull_points, harris_k
        self.patches: torch.Tensor | None = None  # (pool, 3, Hm, Wm)
        self.sizes = torch.zeros(pool_size, 2, dtype=torch.long)  # valid (h, w) of each slot
        self.corners = torch.zeros(pool_size, hull_points, 2)  # Harris points (x, y) per slot
        self.count, self.next_slot = 0, 0
        self.image_size: tuple[int, int] | None = None

    def max_crop_size(self, height: int, width: int) -> tuple[int, int]:
        area = self.area_range[1] * height * width
        return (
            min(height, int(math.sqrt(area / self.aspect_range[0]))),
            min(width, int(math.sqrt(area * self.aspect_range[1]))),
        )

    def __len__(self) -> int:
        return self.count

    @torch.no_grad()
    def add(self, images: torch.Tensor, generator: torch.Generator) -> None:
        """Crop ``crops_per_image`` rectangles from every image of the batch (B, 3, H, W) into the pool."""
        b, c, height, width = images.shape
        if self.image_size != (height, width) or self.patches is None:
            hm, wm = self.max_crop_size(height, width)
            self.patches = images.new_zeros(self.pool_size, c, hm, wm)
            self.count, self.next_slot, self.image_size = 0, 0, (height, width)
        hm, wm = self.patches.shape[2:]
        n = b * self.crops_per_image
        aspect = _uniform(generator, (n,), *self.aspect_range)
        area = _uniform(generator, (n,), *self.area_range) * height * width
        # int() truncation of sqrt(aspect * area) / sqrt(area / aspect), as the released add_patch
        wc = torch.sqrt(aspect * area).long().clamp(1, min(width, wm))
        hc = torch.sqrt(area / aspect).long().clamp(1, min(height, hm))
        x0 = (torch.rand(n, generator=generator) * (width - wc + 1)).long()
        y0 = (torch.rand(n, generator=generator) * (height - hc + 1)).long()
        dev = images.device
        rows = (y0[:, None] + torch.arange(hm)).clamp(max=height - 1).to(dev)
        cols = (x0[:, None] + torch.arange(wm)).clamp(max=width - 1).to(dev)
        owner = torch.arange(b, device=dev).repeat_interleave(self.crops_per_image)
        crops = images[owner[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        valid = (torch.arange(hm)[None, :, None] < hc[:, None, None]) & (
            torch.arange(wm)[None, None, :] < wc[:, None, None]
        )
        crops = crops * valid[:, None].to(dev)
        sizes = torch.stack([hc, wc], dim=1)
        if self.polygon == "harris":
            corners = harris_corner_points(crops, sizes, self.hull_points, generator, self.harris_k).cpu()
        keep = slice(max(0, n - self.pool_size), n)  # more crops than slots: the last ones stay (FIFO)
        slots = (self.next_slot + torch.arange(n)[keep] - keep.start) % self.pool_size
        self.patches[slots.to(dev)] = crops[keep].to(self.patches.dtype)
        self.sizes[slots] = sizes[keep]
        if self.polygon == "harris":
            self.corners[slots] = corners[keep]
        self.next_slot = int((self.next_slot + len(slots)) % self.pool_size)
        self.count = min(self.pool_size, self.count + len(slots))

    @torch.no_grad()
    def paste(
        self,
        images: torch.Tensor,
        seg_labels: torch.Tensor,
        generator: torch.Generator,
        pastes_per_image: int = 10,
        noise_ratio: float = 0.1,
        ignore_index: int = 255,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, PasteResult]:
        """Paste pooled crops as convex polygons into copies of `images` (B, 3, H, W) and `seg_labels` (B, H, W).

        Returns:
            images, seg_labels (pasted pixels = ignore_index), ood_labels (B, H, W) int64 (1 pasted, 0 elsewhere),
            and a :class:`PasteResult`.
        """
        if self.count == 0 or self.patches is None:
            raise RuntimeError("the anomaly patch pool is empty: call add(images) before paste()")
        b, _, height, width = images.shape
        if self.image_size != (height, width):
            raise ValueError(f"pool crops come from {self.image_size} images, got a batch of {(height, width)}")
        dev = images.device
        p, k = pastes_per_image, self.hull_points
        hm, wm = self.patches.shape[2:]
        source = torch.randint(self.count, (b, p), generator=generator)
        noise = torch.rand(b, p, generator=generator) < noise_ratio
        sizes = self.sizes[source]  # (B, P, 2)
        box = sizes.flip(-1).float()[:, :, None, :]  # (w, h)
        if self.polygon == "convex_hull":
            # 15 uniform points over the crop's pixel centres [0, w-1] x [0, h-1] (the polygon never leaves the box)
            vertices, num = convex_hull(torch.rand(b * p, k, 2, generator=generator) * (box.reshape(-1, 1, 2) - 1))
        elif self.polygon == "harris":
            vertices, num = convex_hull(self.corners[source].reshape(b * p, k, 2))
        else:  # square: the box corners, half a pixel out so every pixel of the box is inside
            unit = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
            corners = unit * box.reshape(-1, 1, 2) - 0.5
            vertices = torch.cat([corners, corners[:, -1:].expand(-1, k - 4, -1)], 1) if k > 4 else corners
            num = torch.full((b * p,), 4)
        local = rasterize_convex_polygons(vertices.to(dev), hm, wm).view(b, p, hm, wm)
        row0 = (torch.rand(b, p, generator=generator) * (height - sizes[..., 0] + 1)).long()
        col0 = (torch.rand(b, p, generator=generator) * (width - sizes[..., 1] + 1)).long()
        offsets = torch.stack([row0, col0], dim=-1)

        # global pixel index of every local polygon pixel; the last paste covering a pixel wins
        ys = torch.arange(hm, device=dev)[None, None, :, None] + row0.to(dev)[:, :, None, None]
        xs = torch.arange(wm, device=dev)[None, None, None, :] + col0.to(dev)[:, :, None, None]
        flat = (torch.arange(b, device=dev)[:, None, None, None] * height + ys) * width + xs
        order = torch.arange(p, device=dev)[None, :, None, None].expand_as(flat)
        target, paste_id = flat[local], order[local]
        winner = torch.full((b * height * width,), -1, dtype=torch.long, device=dev)
        winner.scatter_reduce_(0, target, paste_id, reduce="amax")
        coverage = torch.zeros(b * height * width, dtype=torch.long, device=dev)
        coverage.scatter_add_(0, target, torch.ones_like(target))
        winner, coverage = winner.view(b, height, width), coverage.view(b, height, width)

        pasted = winner >= 0
        bi, yi, xi = pasted.nonzero(as_tuple=True)
        pi = winner[bi, yi, xi]
        src_rows, src_cols = yi - row0.to(dev)[bi, pi], xi - col0.to(dev)[bi, pi]
        content = self.patches[source.to(dev)[bi, pi], :, src_rows, src_cols]  # (n, 3)
        is_noise = noise.to(dev)[bi, pi]
        if is_noise.any():
            content[is_noise] = torch.randn(int(is_noise.sum()), content.shape[1], generator=generator).to(
                dev, content.dtype
            )
        images = images.clone()
        images[bi, :, yi, xi] = content.to(images.dtype)
        seg_labels = seg_labels.clone()
        seg_labels[pasted] = ignore_index
        ood_labels = pasted.long()
        vertices_img = vertices.view(b, p, -1, 2) + offsets.flip(-1)[:, :, None, :].float()
        return (
            images,
            seg_labels,
            ood_labels,
            PasteResult(vertices_img, num.view(b, p), winner, coverage, noise, source, offsets),
        )

    def state_dict(self) -> dict:
        """Tensors and numbers only (weights_only-loadable)."""
        return {
            "patches": self.patches.cpu() if self.patches is not None else torch.empty(0),
            "sizes": self.sizes.clone(),
            "corners": self.corners.clone(),
            "count": self.count,
            "next_slot": self.next_slot,
            "image_size": list(self.image_size) if self.image_size else [],
        }

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.patches = state["patches"].to(device) if state["patches"].numel() else None
        self.sizes, self.corners = state["sizes"].clone(), state["corners"].clone()
        self.count, self.next_slot = int(state["count"]), int(state["next_slot"])
        self.image_size = tuple(state["image_size"]) if state["image_size"] else None
