"""Benchmark DMLP: purifier steps/s at CIFAR scale (49 000 x 512), SimCLR and DivideMix training images/s.

    python bench.py                          # CPU (paper sizes; slow on a laptop)
    python bench.py --quick                  # CPU smoke: fewer rows, width-16 backbone, 16 px
    python -m dmlp.bench --device cuda       # CUDA

Purifier: one IPC step = closed-form solve (cached Cholesky of the 7 000-row batch's Gram matrix), meta loss on 1 000
meta rows, backward into Y, Adam step; an EAC pass = 14 Adam steps of the linear classifier on 500 rows; "epoch" =
7 IPC steps + 7 EAC passes + EMA feedback. SimCLR: one step on a batch of two augmented views (images/s counts
source images). DivideMix: one MixMatch step of one network (4 no-grad passes of both networks, one training pass on
the mixed 4B batch), images/s counts labeled images. Peak memory: torch.cuda.max_memory_allocated on CUDA, the
process's peak RSS on CPU (cumulative). Prints a Markdown table; --output_json writes JSON.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from dmlp.purifier import DMLPPurifier, PurifierConfig
from shared.benchmark import peak_memory_mb, seconds_per_call, synchronize
from shared.config import DeviceName, script_parser
from shared.noisy.data import CIFAR_MEAN, CIFAR_STD
from shared.noisy.dividemix import co_guess, co_refine, linear_rampup, mixmatch, mixmatch_losses, uniform_prior_penalty
from shared.noisy.models import PreActResNet18
from shared.noisy.simclr import SimCLR, SimCLRAugment, nt_xent_loss
from shared.training import resolve_device


@dataclass
class BenchConfig:
    """Benchmark settings (``--key value``): device, sizes, threads, iterations, JSON output."""

    device: DeviceName = "auto"
    quick: bool = field(default=False, metadata={"help": "small sizes for a CPU smoke run"})
    threads: int | None = field(default=None, metadata={"help": "torch intra-op CPU threads"})
    iters: int | None = field(default=None, metadata={"help": "timed iterations (null: 3 with --quick, else 10)"})
    output_json: str | None = field(default=None, metadata={"help": "also write the rows as JSON"})


def bench_purifier(rows: int, dim: int, device: torch.device, warmup: int, iters: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, dim, generator=g)
    y = torch.randint(0, 10, (rows,), generator=g)
    xv, yv = torch.randn(1000, dim, generator=g), torch.randint(0, 10, (1000,), generator=g)
    cfg = PurifierConfig(ipc_batch=min(7000, rows))
    t0 = time.perf_counter()
    purifier = DMLPPurifier(x, y, xv, yv, 10, cfg, device)
    synchronize(device)
    setup = time.perf_counter() - t0
    ipc = seconds_per_call(lambda: purifier.ipc_step(0), device, warmup, iters)
    eac = seconds_per_call(lambda: purifier.eac_steps(0), device, warmup, iters)
    epoch = seconds_per_call(purifier.run_epoch, device, 1, max(1, iters // 5))
    shape = f"{rows} x {dim}, {len(purifier.batches)} batches"
    return [
        {"what": "purifier IPC step", "shape": shape, "per_s": 1 / ipc, "unit": "steps/s"},
        {"what": "purifier EAC pass (14 steps)", "shape": shape, "per_s": 1 / eac, "unit": "passes/s"},
        {"what": "purifier epoch (IPC+EAC+EMA)", "shape": shape, "per_s": 1 / epoch, "unit": "epochs/s"},
        {"what": "purifier set-up (Cholesky)", "shape": shape, "per_s": 1 / setup, "unit": "1/s"},
    ]


def _sgd_update(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _backbone_row(
    what: str, step, width: int, size: int, batch: int, unit: str, device: torch.device, warmup: int, iters: int
) -> dict:
    """Time ``step`` (one training step on ``batch`` images) and describe it as a table row."""
    sec = seconds_per_call(step, device, warmup, iters)
    return {"what": what, "shape": f"PreAct R18 w{width}, {size} px, batch {batch}", "per_s": batch / sec, "unit": unit}


def bench_simclr(width: int, size: int, batch: int, device: torch.device, warmup: int, iters: int) -> dict:
    model = SimCLR(PreActResNet18(0, width), 128).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    aug = SimCLRAugment(CIFAR_MEAN[10], CIFAR_STD[10])
    images = torch.rand(batch, 3, size, size, device=device)

    def step():
        _sgd_update(opt, nt_xent_loss(model(aug(images)), model(aug(images))))

    return _backbone_row("SimCLR train step", step, width, size, batch, "img/s", device, warmup, iters)


def bench_dividemix(width: int, size: int, batch: int, device: torch.device, warmup: int, iters: int) -> dict:
    net, other = PreActResNet18(10, width).to(device), PreActResNet18(10, width).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    x1, x2, u1, u2 = (torch.randn(batch, 3, size, size, device=device) for _ in range(4))
    onehot = F.one_hot(torch.randint(0, 10, (batch,)), 10).float().to(device)
    w = torch.rand(batch, device=device)
    generator = torch.Generator().manual_seed(0)  # the engine's MixMatch draws come from the run's generator

    def step():
        net.train()
        other.eval()
        with torch.no_grad():
            px = (F.softmax(net(x1), 1) + F.softmax(net(x2), 1)) / 2
            tx = co_refine(onehot, w, px, 0.5)
            tu = co_guess([F.softmax(m(u), 1) for m in (net, other) for u in (u1, u2)], 0.5)
        mixed, target, _ = mixmatch(torch.cat([x1, x2, u1, u2]), torch.cat([tx, tx, tu, tu]), 4.0, generator)
        logits = net(mixed)
        lx, lu = mixmatch_losses(logits[: 2 * batch], target[: 2 * batch], logits[2 * batch :], target[2 * batch :])
        _sgd_update(opt, lx + linear_rampup(20, 10, 25) * lu + uniform_prior_penalty(logits))

    return _backbone_row("DivideMix MixMatch step", step, width, size, batch, "labeled img/s", device, warmup, iters)


parse_args = script_parser(BenchConfig, "DMLP benchmark: purifier steps/s, SimCLR and DivideMix training images/s")


def main(args: BenchConfig) -> list[dict]:
    """Run the benchmarks, print the Markdown table, return the rows."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    iters = args.iters or (3 if args.quick else 10)
    rows = 14000 if args.quick else 49000
    width, size, batch = (16, 16, 64) if args.quick else (64, 32, 128 if device.type == "cpu" else 512)
    results = bench_purifier(rows, 512, device, 1, iters)
    results.append(bench_simclr(width, size, batch, device, 1, iters))
    results.append(bench_dividemix(width, size, 64, device, 1, iters))
    peak = peak_memory_mb(device)
    print(
        f"device {device} | torch {torch.__version__} | threads {torch.get_num_threads()} | peak memory {peak:.0f} MB"
    )
    print("| what | shape | throughput |\n|---|---|---|")
    for r in results:
        print(f"| {r['what']} | {r['shape']} | {r['per_s']:.2f} {r['unit']} |")
    if args.output_json:
        Path(args.output_json).write_text(
            json.dumps({"device": str(device), "peak_mb": peak, "rows": results}, indent=1)
        )
    return results


if __name__ == "__main__":
    main(parse_args())
