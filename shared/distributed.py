"""Process-group set-up for `torchrun`, seeding per rank, and small collective helpers.

`init_distributed()` reads the variables torchrun exports (RANK, WORLD_SIZE, LOCAL_RANK). Without them it returns a
plain single-process context, so one script runs both ways::

    python train.py                                   # one process
    torchrun --standalone --nproc_per_node=2 train.py # DDP: nccl on CUDA, gloo on CPU
"""

from __future__ import annotations

import datetime
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "RANK_SEED_STRIDE",
    "DistContext",
    "all_gather_objects",
    "all_reduce_gradients",
    "all_reduce_mean",
    "barrier",
    "broadcast_module",
    "cleanup_distributed",
    "gather_rank_states",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "loader_seed",
    "own_rank_entry",
    "rank_entry_count",
    "seed_everything",
    "seed_worker",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process runs: its rank, the world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(
    device: str | None = None, backend: str | None = None, timeout_min: float | None = None
) -> DistContext:
    """Initialise the default process group when launched by torchrun, else return a single-process context.

    Args:
        device: "cuda", "cpu", or "auto" / None (CUDA when available).
        backend: process-group backend; default nccl on CUDA, gloo on CPU.
        timeout_min: how long a collective may wait, in minutes (default: torch's, 10 min for NCCL): longer for
            runs in which the other ranks wait while rank 0 alone runs a stage.
    """
    want_cuda = torch.cuda.is_available() if device in (None, "auto") else device.startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"device '{device}' requested but CUDA is not available to torch")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        extra = {} if timeout_min is None else {"timeout": datetime.timedelta(minutes=timeout_min)}
        dist.init_process_group(
            backend=backend or ("nccl" if want_cuda else "gloo"), device_id=dev if want_cuda else None, **extra
        )
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    """Destroy the process group if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process. Collective: every rank calls it."""
    world = get_world_size()
    if world == 1:
        return [obj]
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, obj)
    return parts


@dataclass(frozen=True)
class _TensorSlot:
    """Where a tensor stood in a state sent by :func:`gather_rank_states` (its shape and dtype; the data follows)."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def _split_tensors(obj: Any, tensors: list[torch.Tensor]) -> Any:
    """``obj`` with every tensor replaced by a :class:`_TensorSlot`; the tensors go to ``tensors``, in order."""
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        return _TensorSlot(tuple(obj.shape), obj.dtype)
    if isinstance(obj, dict):
        return {k: _split_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_split_tensors(v, tensors) for v in obj)
    return obj


def _fill_slots(obj: Any, make: Callable[[_TensorSlot], torch.Tensor]) -> Any:
    """The inverse of :func:`_split_tensors`: each slot of ``obj`` replaced by ``make(slot)``, in the same order."""
    if isinstance(obj, _TensorSlot):
        return make(obj)
    if isinstance(obj, dict):
        return {k: _fill_slots(v, make) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fill_slots(v, make) for v in obj)
    return obj


def gather_rank_states(state: Any, ctx: DistContext) -> list[Any] | None:
    """Every process's ``state`` (nested dicts, lists and tuples of tensors and plain values, e.g. a feature queue or
    a crop pool) on rank 0, in rank order; ``None`` on the other ranks; ``[state]`` in one process. Collective: every
    rank calls it.

    Rank 0's entry is its own state. Of the others, the structure, the plain values and each tensor's shape and dtype
    travel as one small object (``gather_object``); the tensors follow one at a time by point-to-point messages and
    arrive as CPU tensors, so a GB-sized state is never pickled and rank 0 holds at most one foreign tensor on its
    device. Shapes may differ between ranks."""
    if not ctx.distributed:
        return [state]
    tensors: list[torch.Tensor] = []
    skeleton = _split_tensors(state, tensors)
    skeletons: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(skeleton, skeletons, dst=0)
    wire = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    gathered: list[Any] | None = [state] if ctx.is_main else None
    for src in range(1, ctx.world_size):
        if ctx.rank == src:
            for tensor in tensors:
                dist.send(tensor.detach().to(wire).contiguous(), dst=0)
        elif ctx.is_main:

            def receive(slot: _TensorSlot, src: int = src) -> torch.Tensor:
                buffer = torch.empty(slot.shape, dtype=slot.dtype, device=wire)
                dist.recv(buffer, src=src)
                return buffer.cpu()

            gathered.append(_fill_slots(skeletons[src], receive))
    return gathered


def own_rank_entry(entries: list[Any] | Any, rank: int) -> Any:
    """This process's part of a per-rank checkpoint entry (a :func:`gather_rank_states` list): entry ``rank``. An
    entry that is not a list (written before the per-rank layout: rank 0's state alone) is every rank's, as it was
    then; a list written by fewer processes than now resume it gives the extra ranks rank 0's entry."""
    if not isinstance(entries, list):
        return entries
    return entries[rank] if rank < len(entries) else entries[0]


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor | float) -> float:
    """Mean of a scalar over all ranks (the value itself in a single process)."""
    t = torch.as_tensor(value, dtype=torch.float64)
    if get_world_size() > 1:
        backend = dist.get_backend()
        if backend == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        t = t / get_world_size()
    return float(t)


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into every rank's `module` (what DDP does at construction), for
    loops that compute their loss outside a DDP forward. A no-op in one process."""
    if get_world_size() > 1:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src)


def all_reduce_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """Average the gradients of `parameters` over the ranks, in one flat bucket (DDP's reduction, for loops whose
    loss does not go through a DDP forward, so DDP's hooks never fire). Parameters without a gradient count as
    zero on that rank. A no-op in one process."""
    world = get_world_size()
    if world == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).clone()
        offset += n


def rank_entry_count(entries: list[Any] | Any) -> int:
    """How many processes wrote a per-rank checkpoint entry (1 for the layout before per-rank entries)."""
    return len(entries) if isinstance(entries, list) else 1


#: Offset between the ranks' loader seeds (``loader_seed``): far above any ``seed * 100_003 + epoch``.
RANK_SEED_STRIDE = 2**40


def loader_seed(base: int, rank: int) -> int:
    """Seed of rank ``rank``'s training-loader generator (the source of its workers' seeds) for a ``base`` seed:
    ``base`` on rank 0, a distinct stream on every other rank, so that worker k of two ranks does not draw the same
    augmentations for different images."""
    return base + rank * RANK_SEED_STRIDE


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch (CPU and CUDA) with `seed + rank`; returns the seed used."""
    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return s


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: derive python/numpy seeds from the worker's torch seed (set by the loader)."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
