"""Throughput of SLEEG: OoD-head training iterations/s, test images/s with and without multi-scale + flip, and the
time of pixel-level AP + AUROC + FPR95 over 2x10^8 pixels (the size of FS Lost & Found val) via ``shared.metrics``.

    python bench.py --device cpu             # CPU: the embedded-default variant at its sizes + the metric timing
    python bench.py --device cuda            # CUDA: the paper's R101 at 512x1024 crops / 2048x1024 tests, AMP variants
    python bench.py --skip_models            # only the metric timing
    python bench.py --train_size [64,128] --batch_size 4 --iters 3

``--device auto`` (the default) picks CUDA when it is available, else the CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from energy_anomaly_seg.model import VARIANTS, create_model
from energy_anomaly_seg.self_generated_anomalies import AnomalyPatchPool
from energy_anomaly_seg.sleeg import SLEEGSettings, predict_anomaly_maps, sleeg_losses
from shared.benchmark import peak_memory_mb, synchronize
from shared.config import DeviceName, script_parser
from shared.metrics import ranking_metrics
from shared.training import autocast, resolve_device


@dataclass
class BenchConfig:
    """Benchmark settings (``--key value``); ``None`` sizes, variant and batch are picked by the device."""

    device: DeviceName = field(default="auto", metadata={"help": "auto: cuda when available"})
    variant: str | None = field(
        default=None,
        metadata={
            "help": "an energy_anomaly_seg.model.VARIANTS name (default: deeplabv3_r18_d8_tiny on CPU, "
            "deeplabv3_r101_d8 on CUDA)"
        },
    )
    train_size: tuple[int, int] | None = field(
        default=None, metadata={"help": "crop [H,W] (CPU [64,128], CUDA [512,1024])"}
    )
    test_size: tuple[int, int] | None = field(
        default=None, metadata={"help": "image [H,W] (CPU [128,256], CUDA [1024,2048])"}
    )
    batch_size: int | None = field(default=None, metadata={"help": "CPU 8, CUDA 8 (the paper's total batch)"})
    iters: int = field(default=5, metadata={"help": "timed training steps (after two warm-up steps)"})
    test_images: int = 3
    metric_pixels: float = 2e8
    skip_models: bool = field(default=False, metadata={"help": "only the metric timing"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads for the models (default: torch's)"})


def bench_train(
    variant: str, device: torch.device, batch: int, size: tuple[int, int], steps: int, amp: str, channels_last: bool
) -> float:
    """OoD-head iterations/s: pool + paste, frozen segmentor forward, refinement, TAE + TORE, backward, SGD step."""
    torch.manual_seed(0)
    model = create_model(variant).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.patch_head.parameters(), lr=0.01, momentum=0.9)
    pool, g = AnomalyPatchPool(), torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, *size, device=device)
    labels = torch.randint(0, 19, (batch, *size), device=device)
    settings = SLEEGSettings(refine_warmup_iters=0)
    times = []
    for i in range(steps + 2):
        synchronize(device)
        t0 = time.perf_counter()
        x = images.contiguous(memory_format=torch.channels_last) if channels_last else images
        with autocast(device, amp):
            loss, _ = sleeg_losses(model, x, labels, pool, g, settings, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return 1.0 / (sum(times[2:]) / steps)  # two warm-up steps


def bench_test(
    variant: str, device: torch.device, size: tuple[int, int], images: int, multi_scale: bool, amp: str
) -> float:
    """Test images/s at the original size `size`: one pass, or 4 scales x flip (8 passes)."""
    model = create_model(variant).to(device).eval()
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8)
    scales, flip = ((0.75, 1.0, 1.25, 1.5), True) if multi_scale else ((1.0,), False)
    img_scale = (size[1], size[0])
    with autocast(device, amp):
        predict_anomaly_maps(model, image, img_scale, scales, flip)
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(images):
            predict_anomaly_maps(model, image, img_scale, scales, flip)
        synchronize(device)
    return images / (time.perf_counter() - t0)


def bench_metrics(pixels: int, device: torch.device) -> dict[str, float]:
    """Seconds for AP, AUROC and FPR95 (strict) together over `pixels` float32 scores with uint8 labels (1 % anomaly,
    5 % void = 255), as eval.py pools them (``shared.metrics.ranking_metrics``: one sort for the three)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(pixels, dtype=torch.uint8)
    u = torch.rand(pixels, generator=g)
    labels[u < 0.01] = 1
    labels[u > 0.95] = 255
    scores = torch.randn(pixels, generator=g) + 2.0 * (labels == 1)
    del u
    scores, labels = scores.to(device), labels.to(device)
    cpu0 = time.process_time()
    synchronize(device)
    t0 = time.perf_counter()
    values = ranking_metrics(scores, labels, tpr=0.95, strict=True, ignore_index=255)
    synchronize(device)
    return {
        "AP_value": values["average_precision"],
        "AUROC_value": values["auroc"],
        "FPR95_value": values["fpr_at_tpr"],
        "total_s": time.perf_counter() - t0,
        "total_cpu_s": time.process_time() - cpu0,
    }  # CPU time of all threads of this process


parse_args = script_parser(
    BenchConfig, "SLEEG throughput: OoD-head training it/s, test images/s (1 pass and 4 scales x flip), pixel metrics"
)


def main(cfg: BenchConfig) -> None:
    if cfg.variant is not None and cfg.variant not in VARIANTS:
        raise ValueError(f"unknown variant {cfg.variant!r}; valid: {sorted(VARIANTS)}")
    default_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    variant = cfg.variant or ("deeplabv3_r101_d8" if cuda else "deeplabv3_r18_d8_tiny")
    train_size = tuple(cfg.train_size or ((512, 1024) if cuda else (64, 128)))
    test_size = tuple(cfg.test_size or ((1024, 2048) if cuda else (128, 256)))
    batch = cfg.batch_size or 8
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"SLEEG bench on {where}, torch {torch.__version__}, sleeg_{variant}")
    rows = []
    if not cfg.skip_models:
        modes = [("fp32", "off", False)] + (
            [("bf16", "bf16", False), ("bf16 channels-last", "bf16", True)] if cuda else []
        )
        for label, amp, cl in modes:
            it_s = bench_train(variant, device, batch, train_size, cfg.iters, amp, cl)
            single = bench_test(variant, device, test_size, cfg.test_images, False, amp)
            multi = bench_test(variant, device, test_size, cfg.test_images, True, amp)
            rows.append((label, it_s, it_s * batch, single, multi, peak_memory_mb(device)))
        print(
            f"\ntrain: batch {batch} x {train_size[0]}x{train_size[1]} crops; test: {test_size[0]}x{test_size[1]} "
            "images (multi-scale = 0.75/1.0/1.25/1.5 x flip, 8 passes)"
        )
        print(
            f"{'mode':<20}{'train it/s':>11}{'train img/s':>12}{'test img/s':>11}{'test MS+flip img/s':>20}"
            f"{'peak MB':>9}"
        )
        for label, it_s, img_s, single, multi, mb in rows:
            print(f"{label:<20}{it_s:>11.3f}{img_s:>12.2f}{single:>11.3f}{multi:>20.3f}{mb:>9.0f}")
    torch.set_num_threads(default_threads)  # the metrics use every core
    m = bench_metrics(int(cfg.metric_pixels), device)
    print(
        f"\nAP + AUROC + FPR95 over {int(cfg.metric_pixels):.2e} pixels (shared.metrics.ranking_metrics, exact, as "
        f"eval.py calls it): {m['total_s']:.1f} s wall, {m['total_cpu_s']:.1f} s CPU ({torch.get_num_threads()} "
        f"threads)"
    )


if __name__ == "__main__":
    main(parse_args())
