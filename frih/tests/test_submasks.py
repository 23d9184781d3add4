"""Batched K-means submasks: exact partition, deterministic luminance order, empty clusters, sklearn agreement."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from frih.submasks import LUMINANCE_WEIGHTS, kmeans_submasks


def _three_colour_image(order=(0, 1, 2)):
    """8x12 image: three vertical bands of clearly different colours (dark blue, mid red, light yellow)."""
    colours = torch.tensor([[10.0, 20.0, 90.0], [200.0, 40.0, 30.0], [240.0, 230.0, 120.0]])
    img = torch.zeros(1, 3, 8, 12)
    for band, c in enumerate(order):
        img[0, :, :, band * 4 : (band + 1) * 4] = colours[c][:, None, None]
    return img, colours


def test_submasks_partition_the_binarised_soft_mask_exactly():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(4, 3, 23, 31, generator=g) * 255
    mask = torch.rand(4, 1, 23, 31, generator=g)  # soft values around the 0.5 threshold
    mask[2] = 0.0  # an image without foreground
    res = kmeans_submasks(rgb, mask, num_clusters=3)
    fg = (mask[:, 0] > 0.5).float()
    assert res.submasks.shape == (4, 3, 23, 31)
    assert set(res.submasks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(res.submasks.sum(1), fg)  # disjoint and covering
    assert torch.equal(res.counts.sum(1), fg.flatten(1).sum(1))
    assert torch.equal(res.labels >= 0, fg.bool())
    assert res.submasks[2].sum() == 0 and torch.isfinite(res.centers[[0, 1, 3]]).all()


def test_known_colour_regions_are_recovered_and_sorted_dark_to_bright():
    mask = torch.ones(1, 1, 8, 12)
    for order in [(0, 1, 2), (2, 0, 1), (1, 2, 0)]:
        img, colours = _three_colour_image(order)
        res = kmeans_submasks(img, mask, num_clusters=3)
        luma = colours @ torch.tensor(LUMINANCE_WEIGHTS)
        rank = torch.argsort(luma)  # cluster k must hold the k-th darkest colour
        for k in range(3):
            band = order.index(int(rank[k]))
            expected = torch.zeros(8, 12)
            expected[:, band * 4 : (band + 1) * 4] = 1
            assert torch.equal(res.submasks[0, k], expected), (order, k)
            assert torch.allclose(res.centers[0, k], colours[rank[k]])
        assert (res.centers[0] @ torch.tensor(LUMINANCE_WEIGHTS)).diff().gt(0).all()


def test_deterministic_and_independent_of_the_batch():
    g = torch.Generator().manual_seed(1)
    rgb = torch.rand(3, 3, 16, 16, generator=g) * 255
    mask = (torch.rand(3, 1, 16, 16, generator=g) > 0.3).float()
    a = kmeans_submasks(rgb, mask, 4)
    b = kmeans_submasks(rgb, mask, 4)
    assert torch.equal(a.submasks, b.submasks) and torch.equal(a.centers, b.centers)
    for i in range(3):
        alone = kmeans_submasks(rgb[i : i + 1], mask[i : i + 1], 4)
        assert torch.equal(alone.submasks[0], a.submasks[i])


def test_fewer_colours_than_clusters_leaves_empty_submasks_last():
    img = torch.full((2, 3, 6, 6), 100.0)
    img[1, :, :, 3:] = 30.0  # image 1: two colours, the darker one on the right
    mask = torch.zeros(2, 1, 6, 6)
    mask[:, :, 1:5, 1:5] = 1.0
    res = kmeans_submasks(img, mask, num_clusters=3)
    assert res.counts[0].tolist() == [16.0, 0.0, 0.0]
    assert res.submasks[0, 1:].sum() == 0
    assert res.counts[1].tolist() == [8.0, 8.0, 0.0]
    assert torch.equal(res.submasks[1, 0, 1:5, 3:5], torch.ones(4, 2))  # darkest first
    assert res.submasks[1, 2].sum() == 0


def test_agrees_with_sklearn_lloyd_from_the_same_start():
    rng = np.random.default_rng(3)
    centres = np.array([[30, 40, 50], [120, 200, 60], [220, 90, 180], [250, 250, 240]], dtype=np.float64)
    pts = np.concatenate([c + rng.normal(0, 25, (150, 3)) for c in centres]).clip(0, 255)
    rng.shuffle(pts)
    rgb = torch.from_numpy(pts.T.reshape(1, 3, 20, 30)).float()
    mask = torch.ones(1, 1, 20, 30)
    ours = kmeans_submasks(rgb, mask, num_clusters=4, iters=100)
    # same deterministic start: pixels at the luminance quantiles (k + 0.5) / K
    luma = pts @ np.array(LUMINANCE_WEIGHTS)
    order = np.argsort(luma, kind="stable")
    init = pts[order[(np.floor((np.arange(4) + 0.5) / 4 * len(pts))).astype(int)]]
    km = KMeans(4, init=init, n_init=1, max_iter=100, tol=0, algorithm="lloyd").fit(pts.astype(np.float32))
    ref_centres = km.cluster_centers_[np.argsort(km.cluster_centers_ @ np.array(LUMINANCE_WEIGHTS))]
    np.testing.assert_allclose(ours.centers[0].numpy(), ref_centres, atol=1e-2)
    ref_labels = np.argsort(np.argsort(km.cluster_centers_ @ np.array(LUMINANCE_WEIGHTS)))[km.labels_]
    assert (ours.labels[0].flatten().numpy() == ref_labels).mean() == 1.0


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="rgb must have shape"):
        kmeans_submasks(torch.zeros(1, 4, 8, 8), torch.ones(1, 1, 8, 8), 3)
    with pytest.raises(ValueError, match="mask must have shape"):
        kmeans_submasks(torch.zeros(1, 3, 8, 8), torch.ones(1, 1, 4, 8), 3)
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans_submasks(torch.zeros(1, 3, 8, 8), torch.ones(1, 1, 8, 8), 0)
