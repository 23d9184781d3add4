"""Benchmark: training iteration time (supervised-only step vs MixTeacher step), teacher inference images/s at the
regular and the mixed test scale, and peak memory, on CPU and (when present) CUDA.

    python mixteacher/bench.py --quick                 # embedded-default detector (r10_w16), 192 px images, CPU
    python -m mixteacher.bench --device cuda --amp bf16 # paper detector (r50_fpn), 800 x 1216 images, 1 + 4 images

A MixTeacher step is the teacher's mixed-scale pseudo-labelling with box jitter, the student's three-scale losses on
the labeled and unlabeled images, backward, SGD and the EMA update; the supervised step is plain Faster R-CNN on the
labeled images of the same batch. Pseudo labels are forced (the teacher's detections are replaced by fixed boxes
with scores 0.95 / 0.7 / 0.6) so the unsupervised branch and mining run at full cost even with random weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mixteacher.config import MixTeacherSettings
from mixteacher.mix_teacher import MixTeacher
from mixteacher.model import create_model
from shared.benchmark import peak_memory_mb, seconds_per_call
from shared.config import AmpMode, DeviceName, parse_config
from shared.training import autocast

__all__ = ["BenchConfig", "main", "parse_args", "run"]


@dataclass
class BenchConfig:
    """Benchmark settings (``--key value``)."""

    device: DeviceName = "auto"
    quick: bool = False
    iters: int | None = None
    warmup: int = 1
    amp: AmpMode = "off"
    threads: int | None = None


def _batch(n_labeled: int, n_unlabeled: int, h: int, w: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    box = torch.tensor([[0.1 * w, 0.1 * h, 0.5 * w, 0.45 * h], [0.5 * w, 0.5 * h, 0.9 * w, 0.95 * h]])
    return {
        "labeled_images": [torch.rand(3, h, w, generator=g).to(device) for _ in range(n_labeled)],
        "labeled_targets": [
            {"boxes": box.to(device), "labels": torch.tensor([1, 2], device=device)} for _ in range(n_labeled)
        ],
        "weak_images": [torch.rand(3, h, w, generator=g).to(device) for _ in range(n_unlabeled)],
        "strong_images": [torch.rand(3, h, w, generator=g).to(device) for _ in range(n_unlabeled)],
        "weak_to_strong": torch.eye(3, dtype=torch.float64).expand(n_unlabeled, 3, 3).to(device),
    }


def _forced_detect(h: int, w: int):
    boxes = torch.tensor(
        [
            [0.1 * w, 0.1 * h, 0.5 * w, 0.45 * h],
            [0.45 * w, 0.5 * h, 0.9 * w, 0.9 * h],
            [0.2 * w, 0.55 * h, 0.4 * w, 0.8 * h],
        ]
    )

    def detect(images, features):
        dev = images.tensors.device
        return [
            {
                "boxes": boxes.to(dev),
                "scores": torch.tensor([0.95, 0.7, 0.6], device=dev),
                "labels": torch.tensor([1, 2, 3], device=dev),
            }
            for _ in images.image_sizes
        ]

    return detect


def run(
    device: torch.device,
    variant: str,
    h: int,
    w: int,
    n_labeled: int,
    n_unlabeled: int,
    iters: int,
    warmup: int,
    amp: str,
    num_classes: int = 80,
) -> list[tuple[str, str, float, float]]:
    """Rows (measurement, unit, value, peak memory MiB) for the ``model.VARIANTS`` detector ``variant``."""
    rows = []
    batch = _batch(n_labeled, n_unlabeled, h, w, device)
    for method_name in ("supervised", "mixteacher"):
        torch.manual_seed(0)
        method = (
            MixTeacher(create_model(variant, num_classes), MixTeacherSettings(unsup_start=0), method_name)
            .to(device)
            .train()
        )
        method.teacher.detect = _forced_detect(h, w)
        optimizer = torch.optim.SGD([p for p in method.student.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
        step_batch = batch if method_name == "mixteacher" else {**batch, "weak_images": []}

        def step(method=method, optimizer=optimizer, step_batch=step_batch):
            with autocast(device, amp):
                loss, _ = method(step_batch, 100)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            method.update_teacher(100)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = seconds_per_call(step, device, warmup, iters)
        label = f"train step {method_name} ({n_labeled} labeled" + (
            f" + {n_unlabeled} unlabeled)" if method_name == "mixteacher" else ")"
        )
        rows.append((label, "s/iter", seconds, peak_memory_mb(device)))
    teacher = method.teacher.eval()
    images = batch["weak_images"] or batch["labeled_images"]
    for scale in ("regular", "mixed"):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def infer(scale=scale):
            with torch.no_grad(), autocast(device, amp):
                teacher.predict(images, scale)

        seconds = seconds_per_call(infer, device, warmup, iters)
        rows.append((f"teacher inference, {scale} scale", "images/s", len(images) / seconds, peak_memory_mb(device)))
    return rows


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    return parse_config(
        BenchConfig,
        argv,
        description="MixTeacher benchmark (--quick: embedded-default detector, "
        "192 x 240 images; else the paper detector at 800 x 1216)",
    )


def main(cfg: BenchConfig) -> list[tuple[str, str, float, float]]:
    device = torch.device(
        "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.quick:
        variant, h, w, n_l, n_u, iters, classes = "r10_w16", 192, 240, 2, 2, cfg.iters or 3, 6
    else:
        variant, h, w, n_l, n_u, iters, classes = "r50_fpn", 800, 1216, 1, 4, cfg.iters or 10, 80
    rows = run(device, variant, h, w, n_l, n_u, iters, cfg.warmup, cfg.amp, classes)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(
        f"MixTeacher bench: {name}, {'tiny' if cfg.quick else 'R50-FPN'} detector, {h}x{w} images, amp "
        f"{cfg.amp}, torch {torch.__version__}"
    )
    print(f"{'measurement':<52}{'value':>12}  unit       {'peak MiB':>9}")
    for label, unit, value, memory in rows:
        print(f"{label:<52}{value:>12.3f}  {unit:<10} {memory:>9.0f}")
    return rows


if __name__ == "__main__":
    main(parse_args())
