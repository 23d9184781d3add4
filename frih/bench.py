"""Benchmark FRIH: inference latency / images/s at 256, 1024, 2048 px, K-means cost, training-step images/s.

    python bench.py --device cpu             # CPU: full-resolution inference at 256, low-res mode at 1024/2048
    python -m frih.bench --device cuda       # CUDA: full resolution at 256/1024/2048, fp32 + fp16/bf16 AMP,
                                             # channels-last; add --compile for torch.compile
    python bench.py --models frih256 issam256 --sizes 256 512 --modes full --iters 5

Prints a Markdown table (and writes it as JSON with --output_json). Latency is the mean wall time of `--iters`
calls after `--warmup` calls, with cuda.synchronize; "peak MB" is torch.cuda.max_memory_allocated on CUDA and the
process's peak RSS on CPU (cumulative over the run, so it only grows). Full-resolution FRIH at 2048 px costs about
64x the 256 px cost; the low-res mode runs the network at 256 px and applies the change at full size
(frih/inference.py).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from frih.inference import Harmonizer
from frih.losses import FRIHLoss
from frih.model import count_parameters, create_model, normalize_image
from frih.submasks import kmeans_submasks
from shared.benchmark import peak_memory_mb, seconds_per_call
from shared.config import AmpMode, DeviceName, script_parser
from shared.training import autocast, resolve_device


@dataclass
class BenchConfig:
    """Benchmark settings (``--key value``; lists as ``--sizes [256,1024]`` or ``--sizes 256 1024``)."""

    device: DeviceName = field(default="auto", metadata={"help": "where to run (auto: cuda when available)"})
    models: list[str] = field(
        default_factory=lambda: ["frih256", "issam256"], metadata={"help": "names of frih.model.VARIANTS"}
    )
    sizes: list[int] | None = field(default=None, metadata={"help": "default: 256 1024 2048"})
    modes: list[Literal["full", "lowres"]] | None = field(
        default=None,
        metadata={"help": "default: CUDA full+lowres at every size; CPU full at 256 and lowres at 1024/2048"},
    )
    amp: list[AmpMode] | None = field(default=None, metadata={"help": "default: off on CPU; off fp16 bf16 on CUDA"})
    channels_last: bool = field(default=False, metadata={"help": "also run channels-last (default on CUDA)"})
    compile: bool = field(default=False, metadata={"help": "also run torch.compile'd (slow first call)"})
    batch_size: int = field(default=1, metadata={"help": "inference batch"})
    train_batch: int | None = field(default=None, metadata={"help": "default: 16 on CUDA, 2 on CPU"})
    warmup: int | None = field(default=None, metadata={"help": "default: 3 on CUDA, 1 on CPU"})
    iters: int | None = field(default=None, metadata={"help": "default: 20 on CUDA, 2 on CPU"})
    threads: int | None = field(default=None, metadata={"help": "torch intra-op CPU threads"})
    no_train: bool = field(default=False, metadata={"help": "skip the training-step benchmark"})
    output_json: str | None = field(default=None, metadata={"help": "write the rows as JSON"})


def _inputs(batch: int, size: int, device: torch.device, fg: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    comp = torch.rand(batch, 3, size, size, generator=g).to(device)
    mask = torch.zeros(batch, 1, size, size, device=device)
    side = int(size * fg**0.5)
    mask[:, :, (size - side) // 2 : (size + side) // 2, (size - side) // 2 : (size + side) // 2] = 1.0
    return comp, mask


def bench_inference(
    model_name: str,
    size: int,
    mode: str,
    batch: int,
    amp: str,
    channels_last: bool,
    compile_: bool,
    device: torch.device,
    warmup: int,
    iters: int,
) -> dict:
    model = create_model(model_name).to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_:
        model = torch.compile(model)
        model.size_divisor = model._orig_mod.size_divisor
    harmonizer = Harmonizer(model, device, mode=mode, lowres_size=256, amp=amp)
    comp, mask = _inputs(batch, size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = seconds_per_call(lambda: harmonizer.predict(comp, mask, return_coarse=False), device, warmup, iters)
    return {
        "what": "inference",
        "model": model_name,
        "size": size,
        "mode": mode,
        "batch": batch,
        "amp": amp,
        "channels_last": channels_last,
        "compile": compile_,
        "ms": 1000 * seconds,
        "images_per_s": batch / seconds,
        "peak_mb": peak_memory_mb(device),
    }


def bench_kmeans(size: int, batch: int, device: torch.device, warmup: int, iters: int, k: int = 3) -> dict:
    comp, mask = _inputs(batch, size, device)
    seconds = seconds_per_call(lambda: kmeans_submasks(comp * 255, mask, k), device, warmup, iters)
    return {
        "what": "kmeans",
        "model": f"K={k}, 10 iters, 25% fg",
        "size": size,
        "mode": "-",
        "batch": batch,
        "amp": "off",
        "channels_last": False,
        "compile": False,
        "ms": 1000 * seconds,
        "images_per_s": batch / seconds,
        "peak_mb": peak_memory_mb(device),
    }


def bench_train_step(
    model_name: str, size: int, batch: int, amp: str, device: torch.device, warmup: int, iters: int
) -> dict:
    model = create_model(model_name).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = FRIHLoss(module_weight=1.0)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    comp, mask = _inputs(batch, size, device)
    comp, target = normalize_image(comp), normalize_image(comp.flip(-1))

    def step() -> None:
        with autocast(device, amp):
            out = model(comp, mask)
        loss, _ = criterion(out, target, mask)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = seconds_per_call(step, device, warmup, iters)
    return {
        "what": "train step",
        "model": model_name,
        "size": size,
        "mode": "-",
        "batch": batch,
        "amp": amp,
        "channels_last": False,
        "compile": False,
        "ms": 1000 * seconds,
        "images_per_s": batch / seconds,
        "peak_mb": peak_memory_mb(device),
    }


def format_rows(rows: list[dict]) -> str:
    head = "| what | model | size | mode | batch | amp | ch-last | compile | ms | images/s | peak MB |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['what']} | {r['model']} | {r['size']} | {r['mode']} | {r['batch']} | {r['amp']} | "
            f"{'yes' if r['channels_last'] else 'no'} | {'yes' if r['compile'] else 'no'} | {r['ms']:.1f} | "
            f"{r['images_per_s']:.2f} | {r['peak_mb']:.0f} |"
        )
    return "\n".join(lines)


parse_args = script_parser(BenchConfig, __doc__.splitlines()[0])


def _settings(cfg: BenchConfig, cuda: bool) -> dict[str, Any]:
    """The defaults that depend on the device, filled in: CUDA runs more and longer than CPU."""
    return {
        "sizes": cfg.sizes or [256, 1024, 2048],
        "amps": cfg.amp or (["off", "fp16", "bf16"] if cuda else ["off"]),
        "warmup": cfg.warmup if cfg.warmup is not None else (3 if cuda else 1),
        "iters": cfg.iters or (20 if cuda else 2),
        "layouts": [False, True] if (cuda or cfg.channels_last) else [False],
        "compiles": [False, True] if cfg.compile else [False],
    }


def _report(rows: list[dict]) -> None:
    print(format_rows(rows[-1:]).splitlines()[-1], flush=True)


def run_inference_benchmarks(cfg: BenchConfig, s: dict[str, Any], device: torch.device) -> list[dict]:
    """Every (model, size, mode, amp, layout, compile) inference row; CPU runs lowres above 256 px only."""
    rows = []
    cuda = device.type == "cuda"
    for m, size in itertools.product(cfg.models, s["sizes"]):
        modes = cfg.modes or (["full", "lowres"] if cuda else (["full"] if size <= 256 else ["lowres"]))
        for mode, amp, cl, comp in itertools.product(modes, s["amps"], s["layouts"], s["compiles"]):
            if mode == "lowres" and size <= 256:
                continue
            rows.append(bench_inference(m, size, mode, cfg.batch_size, amp, cl, comp, device, s["warmup"], s["iters"]))
            _report(rows)
    return rows


def main(cfg: BenchConfig) -> list[dict]:
    """Run the benchmarks, print the table, write it as JSON with --output_json; returns the rows."""
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    s = _settings(cfg, cuda)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"frih bench on {name}, torch {torch.__version__}")
    for m in cfg.models:
        print(f"  {m}: {count_parameters(create_model(m)):,} parameters")
    rows = run_inference_benchmarks(cfg, s, device)
    for size, batch in ((256, 16), (1024, 1), (2048, 1)):
        rows.append(bench_kmeans(size, batch, device, s["warmup"], s["iters"]))
        _report(rows)
    if not cfg.no_train:
        train_batch = cfg.train_batch or (16 if cuda else 2)
        for m, amp in itertools.product(cfg.models, s["amps"]):
            rows.append(bench_train_step(m, 256, train_batch, amp, device, s["warmup"], s["iters"]))
            _report(rows)
    print()
    print(format_rows(rows))
    if cfg.output_json:
        Path(cfg.output_json).write_text(
            json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=2)
        )
    return rows


if __name__ == "__main__":
    main(parse_args())
