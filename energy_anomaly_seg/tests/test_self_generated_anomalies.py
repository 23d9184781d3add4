"""Self-generated anomalies: crop pool, convex hulls, polygon pastes and their labels."""

import numpy as np
import pytest
import torch
from matplotlib.path import Path as MplPath
from scipy.spatial import ConvexHull

from energy_anomaly_seg.self_generated_anomalies import (
    AnomalyPatchPool,
    convex_hull,
    harris_corner_points,
    rasterize_convex_polygons,
)


def test_convex_hull_matches_scipy():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(20, 15, 2, generator=g) * torch.tensor([40.0, 30.0])
    vertices, num = convex_hull(pts)
    for i in range(len(pts)):
        ref = ConvexHull(pts[i].numpy())
        assert num[i] == len(ref.vertices)
        ours = {tuple(v) for v in vertices[i, : num[i]].tolist()}
        assert ours == {tuple(pts[i, j].tolist()) for j in ref.vertices}


def test_rasterization_matches_point_in_polygon():
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(6, 15, 2, generator=g) * torch.tensor([25.0, 18.0])
    vertices, num = convex_hull(pts)
    mask = rasterize_convex_polygons(vertices, 18, 25)
    yy, xx = np.mgrid[0:18, 0:25]
    grid = np.stack([xx.ravel(), yy.ravel()], 1)
    for i in range(6):
        ref = MplPath(vertices[i, : num[i]].numpy()).contains_points(grid).reshape(18, 25)
        assert np.array_equal(mask[i].numpy(), ref)


def _is_convex(poly: np.ndarray) -> bool:
    edges = np.roll(poly, -1, 0) - poly
    cross = edges[:, 0] * np.roll(edges, -1, 0)[:, 1] - edges[:, 1] * np.roll(edges, -1, 0)[:, 0]
    return bool((cross > 0).all() or (cross < 0).all())


@pytest.mark.parametrize("polygon", ["convex_hull", "harris"])
def test_pastes_are_convex_inside_the_image_and_labels_land_exactly_on_them(polygon):
    g = torch.Generator().manual_seed(2)
    b, h, w = 3, 60, 100
    images = torch.rand(b, 3, h, w, generator=g) * 4 + 10  # far from N(0,1) noise and from zero padding
    images[:, :, 20:40, 30:60] += torch.arange(30.0) / 3  # some structure for the Harris corners
    seg = torch.randint(0, 19, (b, h, w), generator=g)
    pool = AnomalyPatchPool(polygon=polygon)
    pool.add(images, g)
    out, seg_out, ood, info = pool.paste(images, seg, g, pastes_per_image=10, noise_ratio=0.3)
    yy, xx = np.mgrid[0:h, 0:w]
    grid = np.stack([xx.ravel(), yy.ravel()], 1)
    for i in range(b):
        union = np.zeros((h, w), bool)
        for p in range(10):
            poly = info.vertices[i, p, : info.num_vertices[i, p]].numpy()
            assert len(poly) >= 3 and _is_convex(poly)
            assert (poly[:, 0] >= 0).all() and (poly[:, 0] <= w - 1).all()
            assert (poly[:, 1] >= 0).all() and (poly[:, 1] <= h - 1).all()
            union |= MplPath(poly).contains_points(grid).reshape(h, w)
        assert union.any()
        assert np.array_equal(ood[i].numpy() == 1, union)
        assert np.array_equal(seg_out[i].numpy() == 255, union)
        assert torch.equal(seg_out[i][~torch.from_numpy(union)], seg[i][~torch.from_numpy(union)])
        assert torch.equal(out[i][:, ~torch.from_numpy(union)], images[i][:, ~torch.from_numpy(union)])
    assert set(ood.unique().tolist()) == {0, 1}


def test_paste_content_comes_from_pool_crop_or_noise():
    g = torch.Generator().manual_seed(3)
    images = torch.arange(2 * 3 * 40 * 64, dtype=torch.float32).view(2, 3, 40, 64) + 100.0  # unique values
    pool = AnomalyPatchPool()
    pool.add(images, g)
    out, _, _, info = pool.paste(images, torch.zeros(2, 40, 64, dtype=torch.long), g, noise_ratio=0.5)
    bi, yi, xi = (info.winner >= 0).nonzero(as_tuple=True)
    pi = info.winner[bi, yi, xi]
    noisy = info.noise[bi, pi]
    src = pool.patches[info.source[bi, pi], :, yi - info.offsets[bi, pi, 0], xi - info.offsets[bi, pi, 1]]
    assert torch.equal(out[bi, :, yi, xi][~noisy], src[~noisy])
    assert noisy.any() and (out[bi, :, yi, xi][noisy].abs() < 8).all()  # N(0, 1), not image values >= 100


def test_pool_fifo_sizes_and_crop_geometry():
    g = torch.Generator().manual_seed(4)
    pool = AnomalyPatchPool(pool_size=30, crops_per_image=2)
    h, w = 120, 240
    for step in range(4):
        pool.add(torch.full((8, 3, h, w), float(step)), g)
    assert len(pool) == 30
    assert pool.next_slot == (4 * 16) % 30
    hc, wc = pool.sizes[:, 0].double(), pool.sizes[:, 1].double()
    assert ((hc * wc / (h * w)) <= 0.06 + 1e-9).all() and ((hc * wc / (h * w)) >= 0.03 * 0.9).all()
    assert ((wc / hc) > 0.75).all() and ((wc / hc) < 1.3).all()
    newest = (pool.next_slot - 1) % 30
    assert pool.patches[newest, 0, 0, 0] == 3.0  # FIFO: the last batch is in the pool
    restored = AnomalyPatchPool()
    restored.load_state_dict(pool.state_dict())
    assert torch.equal(restored.patches, pool.patches) and restored.count == 30


def test_square_polygons_cover_the_whole_crop_box():
    g = torch.Generator().manual_seed(5)
    pool = AnomalyPatchPool(polygon="square")
    images = torch.rand(1, 3, 50, 80, generator=g)
    pool.add(images, g)
    _, _, ood, info = pool.paste(images, torch.zeros(1, 50, 80, dtype=torch.long), g, pastes_per_image=1)
    (r, c), (hc, wc) = info.offsets[0, 0].tolist(), pool.sizes[info.source[0, 0]].tolist()
    expected = torch.zeros(50, 80, dtype=torch.long)
    expected[r : r + hc, c : c + wc] = 1
    assert torch.equal(ood[0], expected)


def test_harris_corners_find_the_corners_of_a_square():
    img = torch.zeros(1, 3, 40, 40)
    img[:, :, 10:30, 12:28] = 5.0
    pts = harris_corner_points(img, torch.tensor([[40, 40]]), 4, torch.Generator().manual_seed(0))
    corners = {(12, 10), (27, 10), (12, 29), (27, 29)}
    for x, y in pts[0].tolist():
        assert min(abs(x - cx) + abs(y - cy) for cx, cy in corners) <= 3
