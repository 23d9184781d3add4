"""Coreset, chunked nearest neighbours, re-weighted score, blur and late fusion against references."""

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from sklearn.linear_model import SGDOneClassSVM
from sklearn.random_projection import johnson_lindenstrauss_min_dim

from lsfa.memory_bank import (
    LateFusion,
    ModalityBank,
    blur_anomaly_map,
    greedy_coreset,
    jl_min_dim,
    nearest_neighbours,
    reweighted_image_score,
    sparse_random_projection,
)


def _naive_k_center(x: np.ndarray, k: int) -> list[int]:
    selected = [0]
    while len(selected) < k:
        d = np.array([min(np.linalg.norm(p - x[s]) for s in selected) for p in x])
        selected.append(int(np.argmax(d)))
    return selected


def test_coreset_equals_naive_greedy_k_center():
    x = torch.randn(60, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert greedy_coreset(x, 12).tolist() == _naive_k_center(x.numpy(), 12)


def test_jl_dimension_and_projection_shape():
    for n in (1000, 300_000):
        assert jl_min_dim(n, 0.9) == johnson_lindenstrauss_min_dim(n, eps=0.9)
    x = torch.randn(1000, 600)
    y = sparse_random_projection(x, 0.9, seed=0)
    assert y.shape == (1000, jl_min_dim(1000, 0.9))
    assert torch.equal(y, sparse_random_projection(x, 0.9, seed=0))  # deterministic for a seed
    assert sparse_random_projection(x[:, :50]).shape == (1000, 50)  # no projection when k >= D


def test_nearest_neighbours_chunked_equals_cdist():
    g = torch.Generator().manual_seed(2)
    q, bank = (
        torch.randn(37, 8, generator=g, dtype=torch.float64),
        torch.randn(101, 8, generator=g, dtype=torch.float64),
    )
    d, i = nearest_neighbours(q, bank, k=3, chunk=10, bank_chunk=17)
    full = torch.cdist(q, bank)
    ref_d, ref_i = torch.topk(full, 3, largest=False)
    torch.testing.assert_close(d, ref_d)
    assert torch.equal(i, ref_i)


def test_reweighted_score_equals_hand_computation():
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    patches = torch.tensor([[0.1, 0.0], [3.0, 3.0]])
    d, i = nearest_neighbours(patches, bank)
    score = reweighted_image_score(patches, bank, d[:, 0], i[:, 0])
    # p* = [3, 3] (distance sqrt(8) to m* = [5, 5]); m*'s 2nd / 3rd neighbours are [0, 2] and [1, 0]
    s_star = math.sqrt(8.0)
    d_b1, d_b2 = math.hypot(3, 1), math.hypot(2, 3)
    w = 1 - math.exp(s_star / math.sqrt(2)) / (math.exp(d_b1 / math.sqrt(2)) + math.exp(d_b2 / math.sqrt(2)))
    assert float(score) == pytest.approx(w * s_star, rel=1e-6)


def test_blur_modes():
    patch = torch.zeros(1, 7, 7)
    patch[0, 3, 3] = 2.0
    pil = blur_anomaly_map(patch, size=56, sigma=4, mode="pil_uint8")
    up = torch.nn.functional.interpolate(patch[:, None], size=(56, 56), mode="bilinear", align_corners=False)[0, 0]
    q = (up / up.max() * 255).to(torch.uint8).numpy()
    ref = np.asarray(Image.fromarray(q).filter(ImageFilter.GaussianBlur(radius=4)), dtype=np.float32) / 255
    ref = ref * float(up.max())
    np.testing.assert_allclose(pil[0].numpy(), ref, rtol=1e-6)
    gauss = blur_anomaly_map(patch, size=56, sigma=4, mode="gaussian")
    assert gauss.sum() == pytest.approx(up.sum().item(), rel=0.05)  # mass preserved away from the borders
    peak = int(torch.argmax(gauss[0]))
    assert abs(peak // 56 - 28) <= 2 and abs(peak % 56 - 28) <= 2
    with pytest.raises(ValueError, match="blur mode"):
        blur_anomaly_map(patch, mode="box")


def test_late_fusion_equals_sklearn():
    g = torch.Generator().manual_seed(3)
    img, pix = torch.rand(20, 2, generator=g), torch.rand(4, 2, 8, 8, generator=g)
    fusion = LateFusion().fit(img, pix)
    s_img, s_pix = fusion.score(img[:5], pix[:2])
    ref = SGDOneClassSVM(nu=0.5, max_iter=1000, random_state=42).fit(img.double().numpy())
    np.testing.assert_allclose(s_img.numpy(), ref.score_samples(img[:5].double().numpy()), rtol=1e-5)
    assert s_pix.shape == (2, 8, 8)


def test_modality_bank_flags_an_outlier_patch():
    g = torch.Generator().manual_seed(4)
    normal = torch.randn(400, 16, generator=g)
    bank = ModalityBank(coreset_ratio=0.25).fit(normal)
    assert bank.bank.shape[0] == 100
    test = torch.randn(50, 16, generator=g)
    s_normal, _ = bank.score(test)
    test[7] += 12.0
    s_anomalous, dist = bank.score(test)
    assert int(dist.argmax()) == 7 and float(s_anomalous) > float(s_normal)


@pytest.mark.gpu
def test_coreset_and_knn_chunked_on_cuda_do_not_materialise_the_full_matrix():
    """The issue's sizes: 10 % of a 300k x 1152 bank, 3136 patches against 100k rows. Each stage's extra memory is
    bounded by its own working set, far below the distance matrix it would otherwise build."""
    device = torch.device("cuda")
    bank = torch.randn(300_000, 1152, device=device)

    def extra_peak(fn):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, torch.cuda.max_memory_allocated(device) - base

    projected, peak = extra_peak(lambda: sparse_random_projection(bank, 0.9))
    assert peak <= projected.numel() * 4 + (64 << 20)  # the output, one chunk's product, the small matrix
    idx, peak = extra_peak(lambda: greedy_coreset(projected, 30_000, dtype=torch.float16))
    assert idx.unique().numel() == 30_000
    assert peak <= projected.numel() * 2 + (64 << 20)  # the float16 copy and O(N) vectors (N x 30k would be 18 GB)
    queries, rows = torch.randn(3136, 1152, device=device), bank[:100_000]
    (d, _), peak = extra_peak(lambda: nearest_neighbours(queries, rows, k=1, chunk=1024))
    one_chunk = 1024 * 100_000 * 4
    assert peak <= one_chunk + (64 << 20) < 3136 * 100_000 * 4  # one chunk's distance block, not the full matrix
    reference = torch.cdist(queries[:256].double(), rows.double()).min(1)
    torch.testing.assert_close(d[:256, 0].double(), reference.values, rtol=1e-4, atol=1e-3)
