"""FPS, kNN grouping and 3-NN interpolation against brute-force NumPy references."""

import numpy as np
import torch

from lsfa.point_ops import farthest_point_sample, group_points, knn_indices, three_nn_interpolate


def _fps_reference(points: np.ndarray, n: int) -> list[int]:
    selected, min_dist = [0], np.full(len(points), np.inf)
    for _ in range(n - 1):
        min_dist = np.minimum(min_dist, ((points - points[selected[-1]]) ** 2).sum(1))
        selected.append(int(np.argmax(min_dist)))
    return selected


def test_fps_matches_bruteforce_with_ragged_batch():
    g = torch.Generator().manual_seed(0)
    points = torch.rand(3, 200, 3, generator=g, dtype=torch.float64)
    lengths = torch.tensor([200, 150, 90])
    idx = farthest_point_sample(points, 32, lengths)
    for b in range(3):
        ref = _fps_reference(points[b, : lengths[b]].numpy(), 32)
        assert idx[b].tolist() == ref
        assert int(idx[b].max()) < int(lengths[b])  # padding is never selected


def test_knn_matches_bruteforce_and_grouping_is_centred():
    g = torch.Generator().manual_seed(1)
    points = torch.rand(2, 120, 3, generator=g, dtype=torch.float64)
    queries = points[:, :10]
    d2, idx = knn_indices(queries, points, 7, chunk=3)
    for b in range(2):
        full = ((queries[b, :, None] - points[b, None]) ** 2).sum(-1).numpy()
        ref = np.argsort(full, axis=1, kind="stable")[:, :7]
        np.testing.assert_allclose(d2[b].numpy(), np.take_along_axis(full, ref, 1), atol=1e-12)
        assert (np.sort(idx[b].numpy(), 1) == np.sort(ref, 1)).all()
    groups, centres, gidx = group_points(points, 8, 5)
    assert groups.shape == (2, 8, 5, 3)
    torch.testing.assert_close(groups[:, :, 0], torch.zeros(2, 8, 3, dtype=torch.float64))  # nearest = centre itself
    torch.testing.assert_close(groups + centres[:, :, None], torch.stack([points[b][gidx[b]] for b in range(2)]))


def test_knn_ignores_padding():
    points = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [0.1, 0, 0]]])
    _, idx = knn_indices(points[:, :1], points, 2, lengths=torch.tensor([3]))
    assert idx[0, 0].tolist() == [0, 1]


def test_three_nn_interpolation_matches_numpy():
    rng = np.random.default_rng(0)
    targets, sources, feats = rng.random((1, 50, 3)), rng.random((1, 12, 3)), rng.random((1, 12, 5))
    out = three_nn_interpolate(*(torch.from_numpy(a) for a in (targets, sources, feats)), chunk=7).numpy()
    d2 = ((targets[0, :, None] - sources[0, None]) ** 2).sum(-1)
    nn3 = np.argsort(d2, 1)[:, :3]
    w = 1.0 / (np.take_along_axis(d2, nn3, 1) + 1e-8)
    w /= w.sum(1, keepdims=True)
    ref = (feats[0][nn3] * w[..., None]).sum(1)
    np.testing.assert_allclose(out[0], ref, rtol=1e-10)
