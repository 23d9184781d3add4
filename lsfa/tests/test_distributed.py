"""torchrun semantics of the adaptor training: the total batch splits over the processes, the InfoNCE terms see the
whole batch (gathered), and last.pt keeps every process's IFC queues (README, Recipes: several GPUs)."""

import pytest
import torch

from lsfa import train as lsfa_train
from lsfa.adaptation import AdaptationQueues
from lsfa.tests import ddp_loss_worker
from shared.distributed import DistContext, gather_rank_states, own_rank_entry, rank_entry_count
from shared.testing import assert_same_tensors, run_torchrun


def _ctx(world_size: int, rank: int = 0) -> DistContext:
    return DistContext(rank=rank, world_size=world_size, local_rank=rank, device=torch.device("cpu"))


def test_batch_size_must_split_over_the_processes():
    lsfa_train.check_batch_split(8, 4)
    lsfa_train.check_batch_split(3, 1)
    with pytest.raises(ValueError, match=r"data.batch_size 6 .* 4 torchrun processes .* --data.batch_size 4"):
        lsfa_train.check_batch_split(6, 4)
    cfg = lsfa_train.parse_args(["--data.batch_size", "8"])
    with pytest.raises(ValueError, match="divisible"):  # before a sampler or loader is built
        lsfa_train.build_loader(cfg, list(range(16)), _ctx(3))


def test_queues_are_saved_per_process_and_each_restores_its_own():
    queues = AdaptationQueues(2, 4, 3, patch_capacity=5, global_capacity=2)
    queues.rgb.push(1, torch.ones(2, 3))
    state = queues.state_dict()
    assert gather_rank_states(state, _ctx(1)) == [state]  # one process: a list of one
    entries = [{"rank": torch.tensor(r)} for r in range(3)]
    assert [int(own_rank_entry(entries, r)["rank"]) for r in range(3)] == [0, 1, 2]
    assert int(own_rank_entry(entries[:1], 2)["rank"]) == 0  # fewer entries than ranks: rank 0's
    old = {"rank": torch.tensor(0)}  # the layout before per-rank queues: one state (rank 0's) for every rank
    assert own_rank_entry(old, 1) is old
    assert rank_entry_count(entries) == 3 and rank_entry_count(old) == 1


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_compute_the_contrastive_terms_over_the_global_batch(tmp_path):
    """Two gloo processes with 2 images each give the loss terms and the (averaged) gradients of one process with
    all 4 images: the InfoNCE negatives are the global batch, and the gathered rows' gradients reach their owner."""
    out = tmp_path / "ddp.pt"
    run_torchrun("lsfa.tests.ddp_loss_worker", [str(out)], timeout=300)
    ddp = torch.load(out, weights_only=True)
    assert ddp["world_size"] == 2
    adaptors, batch = ddp_loss_worker.make_case()
    logs, grads = ddp_loss_worker.loss_and_gradients(adaptors, batch)  # no process group here: one process
    assert logs["loss_cm_global"] > 0 and logs["loss_ifc"] == 0.0
    for key in ("loss", "loss_cm_patch", "loss_rot", "loss_cm_global"):
        assert ddp["logs"][key] == pytest.approx(logs[key], rel=1e-5), key
    for name, grad in grads.items():
        torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.ddp
def test_resumed_torchrun_processes_restore_their_own_queues(tmp_path, monkeypatch):
    """Each process fills its IFC queues from its own images; last.pt keeps both, and a resumed process takes its
    own (nothing is left to train, so the resumed run's last.pt must hold exactly the restored queues)."""
    from lsfa.tests.test_train import TINY

    monkeypatch.setenv("SYNTHETIC_DATA_ROOT", str(tmp_path / "synthetic"))
    args = [*TINY, "--eval.methods", "--threads", "1", "--optim.epochs", "1"]
    run_torchrun("lsfa.train", [*args, "--output_dir", str(tmp_path / "first")])
    first = torch.load(tmp_path / "first" / "last.pt", weights_only=True)
    assert isinstance(first["queues"], list) and len(first["queues"]) == 2
    assert not torch.equal(first["queues"][0]["rgb"]["buffer"], first["queues"][1]["rgb"]["buffer"])
    run_torchrun(
        "lsfa.train", [*args, "--resume", str(tmp_path / "first" / "last.pt"), "--output_dir", str(tmp_path / "again")]
    )
    again = torch.load(tmp_path / "again" / "last.pt", weights_only=True)
    assert_same_tensors(first["queues"], again["queues"], "queues")
