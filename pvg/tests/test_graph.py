"""Graph construction against a brute-force reference (ties included), the fast path against the dense one (indices,
whole-model outputs and gradients), the memory bound of the fast path, and the fixed local graph of PSGC."""

import itertools

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import pvg  # noqa: F401  (registers the models)
from pvg.graph import knn_dense, knn_fast, knn_graph, knn_query_chunk, relative_position_bias, spatial_neighbours


def brute_force_knn(x, y, k, dilation, bias):
    """Python loops over queries: squared distances of normalised features (+ bias), sorted by (distance, index),
    every d-th of the first k * d. Returns the indices and each query's sorted distances (for ties)."""
    xn, yn = F.normalize(x.double(), dim=1), F.normalize(y.double(), dim=1)  # (B, C, N), (B, C, M)
    batch, _, n = xn.shape
    m = yn.shape[2]
    index = torch.empty(batch, n, k, dtype=torch.long)
    dists = torch.empty(batch, n, m, dtype=torch.float64)
    for b, i in itertools.product(range(batch), range(n)):
        row = [float(((xn[b, :, i] - yn[b, :, j]) ** 2).sum()) for j in range(m)]
        if bias is not None:
            row = [v + float(bias[0, i, j]) for j, v in enumerate(row)]
        order = sorted(range(m), key=lambda j: (row[j], j))
        index[b, i] = torch.tensor(order[: k * dilation : dilation])
        dists[b, i] = torch.tensor(row, dtype=torch.float64)
    return index, dists


def assert_same_graph(found, expected, dists, tol=1e-5):
    """Equal indices, except where distances tie (within tol): there the chosen neighbours must be as near."""
    same = found == expected
    if not same.all():
        picked = dists.gather(2, found)
        wanted = dists.gather(2, expected)
        torch.testing.assert_close(picked[~same], wanted[~same], rtol=0, atol=tol)


@pytest.mark.parametrize('reduction', [1, 2])
@pytest.mark.parametrize('with_bias', [False, True])
@pytest.mark.parametrize('dilation', [1, 2])
@pytest.mark.parametrize('mode', ['dense', 'fast'])
def test_knn_equals_brute_force(reduction, with_bias, dilation, mode):
    gen = torch.Generator().manual_seed(reduction * 10 + with_bias * 2 + dilation)
    x = torch.randn(2, 6, 8, 8, generator=gen)
    keys = F.avg_pool2d(x, reduction, reduction) if reduction > 1 else x
    bias = relative_position_bias(8, 64, reduction) if with_bias else None
    k = 4
    index = knn_graph(x.flatten(2), keys.flatten(2), k, dilation, bias, mode=mode, chunk_elements=50)
    expected, dists = brute_force_knn(x.flatten(2), keys.flatten(2), k, dilation, bias)
    assert index.shape == (2, 64, k)
    assert_same_graph(index, expected, dists)
    if reduction == 1 and not with_bias:
        assert (index[..., 0] == torch.arange(64)).all()  # each node is its own nearest neighbour


def test_knn_with_exact_ties_picks_equally_near_neighbours():
    """Duplicated key features give exactly equal distances: any of the tied keys is a correct neighbour."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(1, 4, 5, generator=gen)
    keys = torch.cat([base, base, base[..., :2]], dim=2)  # 12 keys, each value two or three times
    queries = torch.randn(1, 4, 7, generator=gen)
    expected, dists = brute_force_knn(queries, keys, 5, 1, None)
    for mode in ('dense', 'fast'):
        found = knn_graph(queries, keys, 5, 1, None, mode=mode, chunk_elements=24)
        assert_same_graph(found, expected, dists, tol=1e-6)
        # the selected distances, as multisets, equal the reference's
        torch.testing.assert_close(
            dists.gather(2, found).sort(-1).values, dists.gather(2, expected).sort(-1).values, rtol=0, atol=1e-6
        )


def test_fast_equals_dense_on_random_inputs():
    gen = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(3, 300, 16, generator=gen), dim=-1)
    y = F.normalize(torch.randn(3, 75, 16, generator=gen), dim=-1)
    bias = torch.randn(1, 300, 75, generator=gen) * 0.1
    dense = knn_dense(x, y, 9, 3, bias)
    for chunk in (75, 1000, 3 * 75 * 7, 1 << 24):
        assert torch.equal(knn_fast(x, y, 9, 3, bias, chunk_elements=chunk), dense)


@pytest.mark.parametrize('variant', ['pvig_test', 'pvg_test'])
def test_model_fast_path_equals_dense_path(variant):
    torch.manual_seed(0)
    model = timm.create_model(variant, num_classes=3)
    x = torch.randn(2, 3, 64, 64)
    outputs, grads = [], []
    for mode in ('dense', 'fast'):
        model.set_graph_mode(mode, chunk_elements=500)
        model.zero_grad()
        out = model(x)  # train mode: BN batch statistics, gradients through the gathered features
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in entries) any op produces, and whether one has a trailing N x N shape."""

    def __init__(self, n):
        super().__init__()
        self.n, self.largest, self.square = n, 0, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype.is_floating_point:
                self.largest = max(self.largest, t.numel())
                self.square |= t.dim() >= 2 and tuple(t.shape[-2:]) == (self.n, self.n)
        return out


@pytest.mark.parametrize('mode', ['fast', 'dense'])
def test_56x56_stage_at_batch_64_allocates_no_n_by_n_buffer_on_the_fast_path(mode):
    """A stage-1-sized graph without key reduction (N = M = 3136), batch 64, on the meta device (shapes only): the
    fast path's largest float tensor stays within the chunk budget; the dense path builds the B x N x N matrix."""
    n, batch, chunk = 56 * 56, 64, 1 << 22
    x = torch.empty(batch, 16, n, device='meta')
    recorder = _LargestTensor(n)
    with recorder:
        knn_graph(x, x, 9, 1, None, mode=mode, chunk_elements=chunk)
    if mode == 'fast':
        assert not recorder.square
        assert recorder.largest <= max(chunk, batch * n * 16) < n * n
        assert knn_query_chunk(batch, n, chunk) == 20  # rows per chunk: 64 x 20 x 3136 entries
    else:
        assert recorder.square and recorder.largest >= batch * n * n


def test_spatial_neighbours_are_the_3x3_window_inside_the_image():
    index = spatial_neighbours(6, 7, 9)
    node = 2 * 7 + 3  # row 2, column 3
    window = {(2 + dy) * 7 + 3 + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    assert set(index[node].tolist()) == window and index[node, 0] == node
    corner = set(index[0].tolist())  # near the border: the 9 nearest in-image nodes, all distinct
    assert len(corner) == 9 and {0, 1, 7, 8} <= corner


@pytest.mark.parametrize('height, width', [(1, 1), (1, 9), (2, 3), (4, 4), (5, 13), (9, 2), (14, 14), (20, 28)])
def test_spatial_neighbours_equal_the_all_pairs_definition(height, width):
    """The window search gives exactly the k nearest of all N positions, ties by raster index."""
    ys, xs = np.divmod(np.arange(height * width), width)
    dist = (ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2
    for k in (1, 2, 5, 9, 16, 25, 49):
        if k <= height * width:
            expected = np.argsort(dist, axis=1, kind='stable')[:, :k]
            assert spatial_neighbours(height, width, k).numpy().tolist() == expected.tolist(), k


def test_spatial_neighbours_of_a_coco_sized_grid_need_no_n_by_n_table():
    """Stage 1 of an 800 x 1344 image: 67 200 nodes (an N x N distance table would be 36 GB); the window search
    takes well under a second and the interior rows are the 3 x 3 window."""
    index = spatial_neighbours(200, 336, 9)
    assert index.shape == (67_200, 9)
    node = 100 * 336 + 100
    assert sorted(index[node].tolist()) == sorted((100 + dy) * 336 + 100 + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def test_bad_neighbour_requests_are_errors():
    x = torch.randn(1, 4, 10)
    with pytest.raises(ValueError, match='neighbours requested'):
        knn_graph(x, x, 5, 3)
    with pytest.raises(ValueError, match='graph mode'):
        knn_graph(x, x, 3, 1, mode='sparse')


def test_a_neighbour_table_built_while_tracing_is_not_kept():
    """Under an exporter's fake-tensor mode the table is a fake tensor: it must not be served to later eager calls
    (it was, after an ONNX export: '.numpy() is not supported for tensor subclasses')."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pvg.graph import cached_spatial_neighbours

    with FakeTensorMode():
        traced = cached_spatial_neighbours(13, 11, 9, 'cpu')
    assert type(traced) is not torch.Tensor
    eager = cached_spatial_neighbours(13, 11, 9, 'cpu')
    assert type(eager) is torch.Tensor and torch.equal(eager, spatial_neighbours(13, 11, 9))
    assert cached_spatial_neighbours(13, 11, 9, 'cpu') is eager  # kept once built eagerly
