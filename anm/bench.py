"""Speed of one SANM training step against one DivideMix step, and the masker's share.

    python -m anm.bench                                   # supce_resnet18 width 16, 32 px, batch 64 (CUDA if any)
    python -m anm.bench --model supce_resnet18 --width 64 --device cuda --batch_size 64 --iters 20

Measures, on identical inputs (views already on the device, no data loading):
  dividemix   one DivideMix step: co-refinement/co-guessing (6 no-grad forwards), MixMatch over 4 groups,
              forward/backward, SGD step;
  masker      the adversarial masker alone on the 2B guessing images (attention, boxes, fills, modulation);
  sanm        one SANM step with the same two views: the DivideMix step + masker + 8-group MixMatch + L_rec;
  sanm_6views one SANM step as released on CIFAR: six views, the 12-group batch.
and prints milliseconds per step, images/s of the MixMatch forward and the masker's overhead in % of a DivideMix
step (the acceptance bound: at most 15 % on CPU). Peak CUDA memory is reported on GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from anm.masking import MaskerConfig, mask_images, modulate_labels
from anm.model import create_model
from anm.sanm import SANM
from shared.config import DeviceName, script_parser
from shared.logger import RunLogger
from shared.noisy.dividemix import DivideMixConfig
from shared.training import resolve_device


@dataclass
class BenchConfig:
    """Benchmark settings (``--key value``)."""

    model: str = field(default="supce_resnet18", metadata={"help": "an anm.model.VARIANTS name"})
    width: int = field(default=16, metadata={"help": "first-stage channels (64 = the paper's ResNet-18)"})
    img_size: int = field(default=32, metadata={"help": "input side (32 CIFAR)"})
    classes: int = 10
    batch_size: int = field(default=64, metadata={"help": "labeled (= unlabeled) batch B"})
    iters: int = field(default=5, metadata={"help": "timed steps per measurement (after one warm-up step)"})
    device: DeviceName = "auto"
    threads: int = 1


def _engine(args: BenchConfig, device: torch.device, views: int, masking: bool, log_dir: str) -> SANM:
    torch.manual_seed(0)
    nets = [create_model(args.model, args.classes, width=args.width).to(device) for _ in range(2)]
    images = torch.zeros(2 * args.batch_size, 3, args.img_size, args.img_size, dtype=torch.uint8)
    identity: Callable = lambda image: image.float()  # noqa: E731  (views are given as tensors below)
    return SANM(
        *nets,
        images,
        torch.randint(0, args.classes, (2 * args.batch_size,)),
        args.classes,
        identity,
        identity,
        images,
        torch.zeros(4, dtype=torch.int64),
        DivideMixConfig(batch_size=args.batch_size),
        device,
        RunLogger(log_dir, tensorboard=False),
        views={"warmup": [identity], "labeled": [identity] * views, "unlabeled": [identity] * views},
        masking=masking,
    )


def _time(fn: Callable[[], Any], steps: int, device: torch.device) -> float:
    fn()  # warm-up (allocations, cudnn choices)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def run(args: BenchConfig) -> dict[str, float]:
    """The four timings (seconds per step) and the masker overhead (%)."""
    import tempfile

    device = resolve_device(args.device)
    b, s = args.batch_size, args.img_size
    gen = torch.Generator().manual_seed(0)
    views6 = [torch.randn(b, 3, s, s, generator=gen).to(device) for _ in range(6)]
    weights = torch.rand(2 * b, generator=gen)
    idx_x, idx_u = torch.arange(b), torch.arange(b, 2 * b)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as log_dir:
        for name, views, masking in (("dividemix", 2, False), ("sanm", 2, True), ("sanm_6views", 6, True)):
            engine = _engine(args, device, views, masking, log_dir)
            vx, vu = views6[:views], [v.flip(0) for v in views6[:views]]
            results[name] = _time(
                lambda e=engine, vx=vx, vu=vu: e.train_step(0, vx, idx_x, vu, idx_u, weights, 20.0), args.iters, device
            )
        net = engine.nets[0]
        x = torch.cat([views6[4], views6[4].flip(0)])
        with torch.no_grad():
            fmap = net.forward_feature_map(x)
        targets = torch.softmax(torch.randn(2 * b, args.classes), 1).to(device)
        cfg = MaskerConfig()

        def masker() -> None:
            masked = mask_images(x, fmap, weights.to(device), cfg, gen)
            modulate_labels(targets, masked.ratio_max)

        results["masker"] = _time(masker, args.iters, device)
    results["masker_overhead_pct"] = 100 * results["masker"] / results["dividemix"]
    if device.type == "cuda":
        results["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return results


parse_args = script_parser(BenchConfig, "SANM vs DivideMix step time and the masker's share of a step")


def main(args: BenchConfig) -> dict[str, float]:
    torch.set_num_threads(args.threads)
    results = run(args)
    print(
        f"{args.model} width {args.width}, {args.img_size} px, B = {args.batch_size}, {resolve_device(args.device)}, "
        f"{args.threads} thread(s)"
    )
    print(f"{'step':<14}{'ms/step':>10}{'mixed img/s':>14}")
    for name, groups in (("dividemix", 4), ("sanm", 8), ("sanm_6views", 12), ("masker", 0)):
        rate = f"{groups * args.batch_size / results[name]:>14.0f}" if groups else f"{'':>14}"
        print(f"{name:<14}{1000 * results[name]:>10.1f}{rate}")
    print(f"masker overhead: {results['masker_overhead_pct']:.1f} % of a DivideMix step")
    if "peak_memory_mib" in results:
        print(f"peak CUDA memory: {results['peak_memory_mib']:.0f} MiB")
    return results


if __name__ == "__main__":
    main(parse_args())
