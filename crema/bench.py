"""Benchmark CREMA's per-epoch overhead: credibility pass, memory / weights / label update, GMM split, train step.

    python -m crema.bench --device cpu                     # CPU, small measured batches, extrapolated per epoch
    python -m crema.bench --device cuda                    # GPU (also the training step with AMP / channels-last)
    python -m crema.bench --scales cifar --iters 1         # one scale ([cifar,clothing1m] for both, the default)

At CIFAR scale (50 000 images, PreAct ResNet-18, 32 px) and Clothing1M scale (64 000 sampled images per epoch,
ResNet-50, 224 px) it measures the images/s of the credibility pass (eval-mode forward + softmax + JS) on
``--iters`` batches, extrapolates the seconds per epoch, and times the parts that run on the whole training set at
once: the ring-buffer push, the modulation weights and the selective label update (vectorised, on the device) and
the GMM split (scikit-learn on the CPU, DivideMix's settings). Also a training step (images/s, peak memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from crema.credibility import CredibilityMemory, coarse_split, credibility, modulation_weights, selective_label_update
from crema.model import create_model
from shared.benchmark import peak_memory_mb, seconds_per_call
from shared.config import DeviceName, script_parser
from shared.training import resolve_device

SCALES = {
    "cifar": {"arch": "preact_resnet18", "classes": 10, "size": 32, "samples": 50000, "batch": 512, "train_batch": 64},
    "clothing1m": {"arch": "resnet50", "classes": 14, "size": 224, "samples": 64000, "batch": 128, "train_batch": 32},
}


@dataclass
class BenchConfig:
    """Benchmark settings (``--key value``)."""

    device: DeviceName = "auto"
    scales: list[str] = field(
        default_factory=lambda: list(SCALES), metadata={"help": f"one or more of {', '.join(SCALES)}"}
    )
    iters: int = field(default=2, metadata={"help": "timed batches per measurement"})
    cpu_batch: int = field(default=16, metadata={"help": "batch on CPU (the GPU uses the recipe's eval batch)"})
    threads: int = 1


def bench_scale(name: str, device: torch.device, iters: int, cpu_batch: int | None) -> dict[str, float]:
    """Seconds per epoch of each CREMA part at one scale."""
    s = SCALES[name]
    batch = cpu_batch if device.type == "cpu" and cpu_batch else s["batch"]
    model = create_model(s["arch"], s["classes"]).to(device).eval()
    images = torch.randn(batch, 3, s["size"], s["size"], device=device)
    labels = torch.randint(0, s["classes"], (batch,), device=device)

    @torch.no_grad()
    def credibility_batch() -> torch.Tensor:
        return credibility(F.softmax(model(images), 1), labels)

    per_batch = seconds_per_call(credibility_batch, device, warmup=1, iters=iters)
    n = s["samples"]
    memory = CredibilityMemory(n, 5, device)
    idx = torch.arange(n, device=device)
    scores = torch.rand(n, device=device)
    probs = torch.softmax(torch.randn(n, s["classes"], device=device) * 3, 1)
    given = torch.randint(0, s["classes"], (n,), device=device)
    for _ in range(5):
        memory.push(idx, scores, probs.argmax(1))

    def memory_parts() -> None:
        memory.push(idx, scores, probs.argmax(1))
        modulation_weights(memory)
        selective_label_update(probs, given, scores < 0.5, torch.full_like(given, -1), 0.9, memory.stable())

    out = {
        "credibility_img_s": batch / per_batch,
        "credibility_s_epoch": per_batch * n / batch,
        "memory_update_s_epoch": seconds_per_call(memory_parts, device, warmup=1, iters=3),
        "gmm_s_epoch": seconds_per_call(lambda: coarse_split(scores.cpu()), torch.device("cpu"), warmup=1, iters=3),
    }
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train_batch = min(s["train_batch"], batch)
    x, y = images[:train_batch], labels[:train_batch]

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out["train_img_s"] = train_batch / seconds_per_call(step, device, warmup=1, iters=iters)
    out["peak_mem_mb"] = peak_memory_mb(device)
    return out


parse_args = script_parser(BenchConfig, "CREMA per-epoch overhead benchmark (CIFAR and Clothing1M scales)")


def main(args: BenchConfig) -> dict[str, dict[str, float]]:
    if not args.scales or any(name not in SCALES for name in args.scales):
        raise ValueError(f"scales must be one or more of {list(SCALES)}, got {args.scales!r}")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    results = {name: bench_scale(name, device, args.iters, args.cpu_batch) for name in args.scales}
    keys = list(next(iter(results.values())))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} thread(s)"
    print(f"device {device} ({name})")
    print("| scale | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.3g}" for k in keys) + " |")
    return results


if __name__ == "__main__":
    main(parse_args())
