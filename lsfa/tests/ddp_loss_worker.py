"""Run by ``test_adaptation_ddp.py`` under ``torchrun --nproc_per_node=2`` (gloo, CPU): each process takes its half of
one batch, computes :func:`lsfa.adaptation.lsfa_loss` (the InfoNCE terms gathered over the processes), backpropagates
and averages the gradients as ``train.py`` does; rank 0 writes the logged terms and the averaged gradients to
``argv[1]``. The test compares them with one process on the whole batch (:func:`single_process_reference`).

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m lsfa.tests.ddp_loss_worker OUT.pt
"""

from __future__ import annotations

import sys

import torch

from lsfa.adaptation import AdaptationQueues, AdaptationSettings, lsfa_loss
from lsfa.model import create_model
from shared.distributed import all_reduce_gradients, cleanup_distributed, init_distributed

BATCH, GRID, XYZ_DIM, RGB_DIM = 4, 4, 12, 8
#: the rotation subset covers every non-empty patch, so that the term does not depend on the processes' draws
SETTINGS = AdaptationSettings(rotation_fraction=1.0)


def make_case() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """Adaptors and one batch of frozen features, the same in every process."""
    torch.manual_seed(0)
    adaptors = create_model("lsfa_adaptors_test", xyz_dim=XYZ_DIM, rgb_dim=RGB_DIM, num_heads=2, proj_dim=6)
    g = torch.Generator().manual_seed(1)
    valid = torch.rand(BATCH, GRID, GRID, generator=g) > 0.3
    batch = {
        "xyz": torch.randn(BATCH, XYZ_DIM, GRID, GRID, generator=g) * valid[:, None],
        "rgb": torch.randn(BATCH, RGB_DIM, GRID, GRID, generator=g),
        "rgb_rotated": torch.randn(BATCH, RGB_DIM, GRID, GRID, generator=g),
        "valid": valid,
        "class_ids": torch.tensor([0, 1, 0, 1]),
    }
    return adaptors, batch


def loss_and_gradients(adaptors: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """The logged terms and the (rank-averaged) gradients of one lsfa_loss step on ``batch`` (IFC not active)."""
    queues = AdaptationQueues(2, XYZ_DIM, RGB_DIM, patch_capacity=50, global_capacity=4)
    loss, logs = lsfa_loss(
        adaptors,
        batch["xyz"],
        batch["rgb"],
        batch["rgb_rotated"],
        batch["valid"],
        batch["class_ids"],
        queues,
        0,
        SETTINGS,
        torch.Generator().manual_seed(2),
    )
    loss.backward()
    all_reduce_gradients(adaptors.parameters())
    return {"loss": loss.item(), **logs}, {n: p.grad.clone() for n, p in adaptors.named_parameters()}


def main(out: str) -> None:
    ctx = init_distributed("cpu")
    try:
        adaptors, batch = make_case()
        per_rank = BATCH // ctx.world_size
        part = {k: v[ctx.rank * per_rank : (ctx.rank + 1) * per_rank] for k, v in batch.items()}
        logs, grads = loss_and_gradients(adaptors, part)
        if ctx.is_main:
            torch.save({"world_size": ctx.world_size, "logs": logs, "grads": grads}, out)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
