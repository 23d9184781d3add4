"""PatchCore-style memory banks of M3DM / LSFA (PatchCore stage of the release), in chunked torch.

* :func:`sparse_random_projection` + :func:`greedy_coreset`: greedy k-centre selection (start at index 0) in a
  Johnson-Lindenstrauss space (sklearn ``SparseRandomProjection(eps=0.9)`` dimension and distribution);
* :func:`nearest_neighbours`: exact chunked nearest-bank-entry search (``|a|^2 + |b|^2 - 2ab``; never the full
  queries x bank matrix);
* :func:`reweighted_image_score`: PatchCore's re-weighted image score (Roth et al., CVPR 2022, Eq. 7 as in M3DM);
* :func:`blur_anomaly_map`: bilinear upsampling to 224 and M3DM's "KNNGaussianBlur" (sigma 4);
* :class:`ModalityBank`: one modality's bank (normalisation, coreset, scoring);
* :class:`LateFusion`: decision-layer fusion with two SGD one-class SVMs (image level and pixel level).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

__all__ = [
    "LateFusion",
    "ModalityBank",
    "blur_anomaly_map",
    "greedy_coreset",
    "jl_min_dim",
    "nearest_neighbours",
    "reweighted_image_score",
    "sparse_random_projection",
]


def jl_min_dim(n_samples: int, eps: float = 0.9) -> int:
    """sklearn's ``johnson_lindenstrauss_min_dim``: 4 log(n) / (eps^2 / 2 - eps^3 / 3)."""
    return int(4 * math.log(n_samples) / (eps**2 / 2 - eps**3 / 3))


def sparse_random_projection(
    features: torch.Tensor, eps: float = 0.9, seed: int = 0, chunk: int = 65536
) -> torch.Tensor:
    """Project (N, D) features to the JL dimension with sklearn's sparse distribution (density 1 / sqrt(D), entries
    +-sqrt(1 / density) / sqrt(k), 0 otherwise). Returns the input unchanged when k >= D."""
    n, d = features.shape
    k = jl_min_dim(n, eps)
    if k >= d:
        return features
    g = torch.Generator().manual_seed(seed)
    density = 1.0 / math.sqrt(d)
    nonzero = torch.rand(d, k, generator=g) < density
    sign = torch.where(torch.rand(d, k, generator=g) < 0.5, -1.0, 1.0)
    matrix = (nonzero * sign * math.sqrt(1.0 / density) / math.sqrt(k)).to(features.device, features.dtype)
    out = features.new_empty(n, k)  # filled chunk by chunk: no second copy of the projected bank
    for i in range(0, n, chunk):
        torch.mm(features[i : i + chunk], matrix, out=out[i : i + chunk])
    return out


def greedy_coreset(
    features: torch.Tensor, num_samples: int, start: int = 0, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Greedy k-centre (farthest-point) selection: start at ``start``, then repeatedly take the point farthest (in
    Euclidean distance) from the selected set. Keeps one min-distance vector on the features' device; each step is
    one (N, d) pass. ``dtype`` (e.g. torch.float16 on CUDA, as the release) sets the compute precision.

    Returns:
        (num_samples,) int64 indices in selection order.
    """
    n = features.shape[0]
    num_samples = max(1, min(num_samples, n))
    x = features.to(dtype) if dtype is not None else features
    # Squared norms accumulated in float32 at least, without a float32 copy of a half-precision bank.
    sq = torch.linalg.vector_norm(x, dim=1, dtype=torch.promote_types(x.dtype, torch.float32)).square_().float()
    selected = torch.empty(num_samples, dtype=torch.long, device=x.device)
    min_dist = torch.full((n,), float("inf"), device=x.device)
    current = torch.tensor(start, device=x.device)
    for i in range(num_samples):  # inherently sequential; every step is vectorised over the bank
        selected[i] = current
        centre = x[current]
        dist = (sq - 2.0 * (x @ centre).float() + sq[current]).clamp_min_(0.0)
        min_dist = torch.minimum(min_dist, dist)
        current = torch.argmax(min_dist)
    return selected


def nearest_neighbours(
    queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk: int = 4096, bank_chunk: int = 262144
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest bank rows of every query (Euclidean), chunked over queries and bank rows.

    Returns:
        (distances (Q, k), indices (Q, k)), sorted by increasing distance.
    """
    bank_sq = torch.linalg.vector_norm(bank, dim=1).square_()  # no squared copy of the bank
    out_d, out_i = [], []
    for qs in range(0, queries.shape[0], chunk):
        q = queries[qs : qs + chunk]
        q_sq = q.square().sum(1, keepdim=True)
        best_d = best_i = None
        for bs in range(0, bank.shape[0], bank_chunk):
            # One (chunk, bank_chunk) buffer: |b|^2 - 2 q.b, then + |q|^2 in place.
            d = torch.addmm(bank_sq[None, bs : bs + bank_chunk], q, bank[bs : bs + bank_chunk].T, alpha=-2.0)
            d.add_(q_sq).clamp_min_(0.0)
            kk = min(k, d.shape[1])
            # min() needs no buffer beside d; CUDA's topk over 100k-wide rows allocates a second block of d's size.
            val, idx = d.min(1, keepdim=True) if kk == 1 else torch.topk(d, kk, dim=1, largest=False)
            del d  # free this block before the next one is allocated: one block alive at a time
            idx = idx + bs
            if best_d is not None:
                val, order = torch.topk(torch.cat([best_d, val], 1), min(k, best_d.shape[1] + kk), dim=1, largest=False)
                idx = torch.gather(torch.cat([best_i, idx], 1), 1, order)
            best_d, best_i = val, idx
        out_d.append(best_d.sqrt())
        out_i.append(best_i)
    return torch.cat(out_d), torch.cat(out_i)


def reweighted_image_score(
    patches: torch.Tensor, bank: torch.Tensor, min_dist: torch.Tensor, min_idx: torch.Tensor, eps: float = 0.0
) -> torch.Tensor:
    """PatchCore re-weighting of one image (M3DM ``compute_s_s_map``).

    s* = max_p min_m |P_p - M_m| at patch p*, m* its nearest bank entry; b1, b2 = the 2nd and 3rd nearest bank
    entries of m* (m* itself is the 1st); w = 1 - exp(s* / sqrt(d)) / (sum_b exp(|P_p* - b| / sqrt(d)) + eps);
    returns w * s*. ``eps`` = 1e-5 in M3DM's single-bank variants, 0 in the double / triple ones.
    """
    p_star = torch.argmax(min_dist)
    s_star = min_dist[p_star]
    m_star = bank[min_idx[p_star]]
    _, neighbours = nearest_neighbours(m_star[None], bank, k=3)
    support = bank[neighbours[0, 1:]]
    d = math.sqrt(patches.shape[1])
    dist = torch.linalg.vector_norm(patches[p_star][None] - support, dim=1)
    weight = 1.0 - torch.exp(s_star / d) / (torch.exp(dist / d).sum() + eps)
    return weight * s_star


def blur_anomaly_map(
    patch_scores: torch.Tensor, size: int = 224, sigma: float = 4.0, mode: str = "pil_uint8"
) -> torch.Tensor:
    """(B, g, g) patch distances -> (B, size, size) maps: bilinear upsampling (align_corners False), then

    * ``pil_uint8`` (release): divide by the map max, quantise to 8 bits (ToPILImage), PIL GaussianBlur(radius=sigma),
      back to float and times the max (ties from the quantisation included);
    * ``gaussian``: a float Gaussian blur (sigma, kernel 2 * ceil(4 sigma) + 1, reflect padding), no quantisation.
    """
    maps = F.interpolate(patch_scores[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    if mode == "gaussian":
        radius = math.ceil(4 * sigma)
        x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        kernel = kernel / kernel.sum()
        out = F.pad(maps[:, None], (radius, radius, radius, radius), mode="reflect")
        out = F.conv2d(out, kernel.view(1, 1, 1, -1))
        return F.conv2d(out, kernel.view(1, 1, -1, 1))[:, 0]
    if mode != "pil_uint8":
        raise ValueError(f"blur mode must be 'pil_uint8' or 'gaussian', got {mode!r}")
    out = torch.empty_like(maps)
    peak = maps.flatten(1).amax(1).clamp_min(1e-12)
    quantised = (maps / peak[:, None, None] * 255).to(torch.uint8).cpu().numpy()  # ToPILImage: mul(255).byte()
    for i, image in enumerate(quantised):  # one PIL call per 224 x 224 map
        blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=sigma)), dtype=np.float32)
        out[i] = torch.from_numpy(blurred / 255.0).to(maps.device) * peak[i]
    return out


class ModalityBank:
    """One modality's memory bank: fit on the training patches, coreset, score test patches.

    Args:
        coreset_ratio: fraction kept by the greedy coreset (0.1), or 1 for no coreset.
        coreset_size: explicit size overriding the ratio (used for the release's rgb rule).
        projection_eps: JL eps of the sparse random projection before the coreset (0.9).
        coreset_dtype: compute precision of the coreset distances (float16 on CUDA, as the release).
        seed: seed of the random projection.
    """

    def __init__(
        self,
        coreset_ratio: float = 0.1,
        projection_eps: float = 0.9,
        seed: int = 0,
        coreset_dtype: torch.dtype | None = None,
    ):
        self.coreset_ratio, self.projection_eps, self.seed = coreset_ratio, projection_eps, seed
        self.coreset_dtype = coreset_dtype
        self.bank: torch.Tensor | None = None

    def fit(self, patches: torch.Tensor, coreset_size: int | None = None) -> ModalityBank:
        """patches (N, d), already normalised."""
        n = patches.shape[0]
        size = coreset_size if coreset_size is not None else int(n * self.coreset_ratio)
        if size >= n or size <= 0:
            self.bank = patches
        else:
            projected = sparse_random_projection(patches, self.projection_eps, self.seed)
            self.bank = patches[greedy_coreset(projected, size, dtype=self.coreset_dtype)]
        return self

    def score(
        self, patches: torch.Tensor, reweight_eps: float = 0.0, chunk: int = 4096
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, d) patches of one image -> (re-weighted image score, per-patch min distances (P,))."""
        if self.bank is None:
            raise RuntimeError("ModalityBank.score before fit")
        dist, idx = nearest_neighbours(patches, self.bank, k=1, chunk=chunk)
        dist, idx = dist[:, 0], idx[:, 0]
        return reweighted_image_score(patches, self.bank, dist, idx, reweight_eps), dist


class LateFusion:
    """Decision-layer fusion (M3DM / LSFA ``--memory_bank multiple``): sklearn ``SGDOneClassSVM(nu=0.5,
    max_iter=1000, random_state=42)`` on the image-score vectors and on every pixel of the training maps; the test
    score is ``score_samples`` used as is (as the release; for a linear one-class SVM on non-negative anomaly scores
    it is the learned positive weighting of the modality scores)."""

    def __init__(self, nu: float = 0.5, max_iter: int = 1000, seed: int = 42):
        from sklearn.linear_model import SGDOneClassSVM

        self.image_svm = SGDOneClassSVM(nu=nu, max_iter=max_iter, random_state=seed)
        self.pixel_svm = SGDOneClassSVM(nu=nu, max_iter=max_iter, random_state=seed)

    def fit(self, image_vectors: torch.Tensor, pixel_vectors: torch.Tensor) -> LateFusion:
        """image_vectors (N, k); pixel_vectors (N, k, H, W)."""
        self.image_svm.fit(image_vectors.double().cpu().numpy())
        self.pixel_svm.fit(pixel_vectors.movedim(1, -1).reshape(-1, pixel_vectors.shape[1]).double().cpu().numpy())
        return self

    def score(self, image_vectors: torch.Tensor, pixel_vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(self.image_svm.score_samples(image_vectors.double().cpu().numpy()))
        n, k, h, w = pixel_vectors.shape
        pixels = self.pixel_svm.score_samples(pixel_vectors.movedim(1, -1).reshape(-1, k).double().cpu().numpy())
        return images.float(), torch.from_numpy(pixels).float().reshape(n, h, w)
