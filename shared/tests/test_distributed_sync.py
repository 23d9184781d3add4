"""shared.distributed on two gloo processes: after broadcast_module / all_reduce_gradients every rank holds
rank 0's weights and the mean of the ranks' gradients (what DDP does), for loops whose loss bypasses a DDP forward;
gather_rank_states brings every rank's state (shapes differing by rank) to rank 0."""

import pytest
import torch

from shared.distributed import DistContext, all_reduce_gradients, broadcast_module, gather_rank_states
from shared.testing import assert_same_tensors, on_gloo_ranks


def _sync_rank(ctx: DistContext) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(100 + ctx.rank)  # different initialisation on each rank, as seed_everything(seed, rank) gives
    layer = torch.nn.Linear(3, 2)
    broadcast_module(layer)
    x = torch.full((4, 3), float(ctx.rank + 1))  # different data per rank
    layer(x).sum().backward()
    layer.bias.grad = None if ctx.rank == 1 else layer.bias.grad  # a parameter without a gradient counts as zero
    all_reduce_gradients(layer.parameters())
    return layer.weight.detach().clone(), layer.weight.grad.clone(), layer.bias.grad.clone()


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_hold_rank_0s_weights_and_the_mean_gradient():
    (w0, gw0, gb0), (w1, gw1, gb1) = on_gloo_ranks(_sync_rank)
    torch.manual_seed(100)
    assert torch.equal(w0, torch.nn.Linear(3, 2).weight.detach()) and torch.equal(w0, w1)
    # d sum / d W = sum over the 4 rows of x: rank 0 rows of 1s -> 4, rank 1 rows of 2s -> 8; the mean is 6
    assert torch.equal(gw0, torch.full((2, 3), 6.0)) and torch.equal(gw0, gw1)
    assert torch.equal(gb0, torch.full((2,), 2.0)) and torch.equal(gb0, gb1)  # (4 + 0) / 2


def _rank_state(rank: int) -> dict:
    """A per-rank state with nested dicts, lists, tuples, plain values and tensors whose shapes differ by rank."""
    return {
        "queue": {"features": torch.arange(6 * (rank + 1), dtype=torch.float16).view(-1, 3), "ptr": rank},
        "pool": [torch.full((rank + 1,), rank, dtype=torch.int64), (torch.empty(0), "tag")],
        "count": 10 + rank,
    }


def _gather_rank(ctx: DistContext) -> list | None:
    return gather_rank_states(_rank_state(ctx.rank), ctx)


@pytest.mark.slow
@pytest.mark.ddp
def test_gather_rank_states_brings_every_ranks_state_to_rank_0():
    gathered, on_rank_1 = on_gloo_ranks(_gather_rank)
    assert on_rank_1 is None and len(gathered) == 2  # only rank 0 receives
    for rank in range(2):
        expected = _rank_state(rank)
        assert_same_tensors(gathered[rank]["queue"]["features"], expected["queue"]["features"], f"rank {rank}")
        assert gathered[rank]["queue"]["ptr"] == rank and gathered[rank]["count"] == 10 + rank
        assert_same_tensors(gathered[rank]["pool"][0], expected["pool"][0], f"rank {rank}")
        assert isinstance(gathered[rank]["pool"][1], tuple) and gathered[rank]["pool"][1][1] == "tag"
        assert gathered[rank]["pool"][1][0].shape == (0,)
