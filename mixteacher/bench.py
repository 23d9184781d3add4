"""Benchmark: training iteration time (supervised-only step vs MixTeacher step), teacher inference images/s at the
regular and the mixed test scale, and peak memory, on CPU and (when present) CUDA.

    python mixteacher/bench.py --quick                 # embedded-default detector, 192 px images, CPU
    python -m mixteacher.bench --device cuda --amp bf16 # paper detector (R50-FPN), 800 x 1216 images, 1 + 4 images

A MixTeacher step is the teacher's mixed-scale pseudo-labelling with box jitter, the student's three-scale losses on
the labeled and unlabeled images, backward, SGD and the EMA update; the supervised step is plain Faster R-CNN on the
labeled images of the same batch. Pseudo labels are forced (the teacher's detections are replaced by fixed boxes
with scores 0.95 / 0.7 / 0.6) so the unsupervised branch and mining run at full cost even with random weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from mixteacher.mix_teacher import MixTeacher, MixTeacherSettings
from mixteacher.model import DetectorConfig, MixedScaleFasterRCNN
from shared.benchmark import peak_memory_mb, seconds_per_call
from shared.training import autocast

__all__ = ["main"]

TINY = DetectorConfig(depth=10, base_width=16, norm="gn", caffe_style=False, pixel_style="pytorch", frozen_stages=-1,
                      fpn_channels=64, anchor_sizes=(16, 32, 64, 128, 256), rpn_pre_nms_top_n_train=500,
                      rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=300,
                      representation_size=256, roi_sampling_ratio=2, box_batch_size_per_image=64, min_size=192,
                      max_size=240)


def _batch(n_labeled: int, n_unlabeled: int, h: int, w: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    box = torch.tensor([[0.1 * w, 0.1 * h, 0.5 * w, 0.45 * h], [0.5 * w, 0.5 * h, 0.9 * w, 0.95 * h]])
    return {
        "labeled_images": [torch.rand(3, h, w, generator=g).to(device) for _ in range(n_labeled)],
        "labeled_targets": [{"boxes": box.to(device), "labels": torch.tensor([1, 2], device=device)}
                            for _ in range(n_labeled)],
        "weak_images": [torch.rand(3, h, w, generator=g).to(device) for _ in range(n_unlabeled)],
        "strong_images": [torch.rand(3, h, w, generator=g).to(device) for _ in range(n_unlabeled)],
        "weak_to_strong": torch.eye(3, dtype=torch.float64).expand(n_unlabeled, 3, 3).to(device),
    }


def _forced_detect(h: int, w: int):
    boxes = torch.tensor([[0.1 * w, 0.1 * h, 0.5 * w, 0.45 * h], [0.45 * w, 0.5 * h, 0.9 * w, 0.9 * h],
                          [0.2 * w, 0.55 * h, 0.4 * w, 0.8 * h]])

    def detect(images, features):
        dev = images.tensors.device
        return [{"boxes": boxes.to(dev), "scores": torch.tensor([0.95, 0.7, 0.6], device=dev),
                 "labels": torch.tensor([1, 2, 3], device=dev)} for _ in images.image_sizes]

    return detect




def run(device: torch.device, cfg: DetectorConfig, h: int, w: int, n_labeled: int, n_unlabeled: int, iters: int,
        warmup: int, amp: str, num_classes: int = 80) -> list[tuple[str, str, float, float]]:
    """Rows (measurement, unit, value, peak memory MiB)."""
    rows = []
    batch = _batch(n_labeled, n_unlabeled, h, w, device)
    for method_name in ("supervised", "mixteacher"):
        torch.manual_seed(0)
        method = MixTeacher(MixedScaleFasterRCNN(num_classes, cfg), MixTeacherSettings(unsup_start=0),
                            method_name).to(device).train()
        method.teacher.detect = _forced_detect(h, w)
        optimizer = torch.optim.SGD([p for p in method.student.parameters() if p.requires_grad], lr=1e-4,
                                    momentum=0.9)
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
        label = (f"train step {method_name} ({n_labeled} labeled" +
                 (f" + {n_unlabeled} unlabeled)" if method_name == "mixteacher" else ")"))
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


def main(argv: list[str] | None = None) -> list[tuple[str, str, float, float]]:
    parser = argparse.ArgumentParser(description="MixTeacher benchmark")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="embedded-default detector, 192 x 240 images")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        cfg, h, w, n_l, n_u, iters, classes = TINY, 192, 240, 2, 2, args.iters or 3, 6
    else:
        cfg, h, w, n_l, n_u, iters, classes = DetectorConfig(), 800, 1216, 1, 4, args.iters or 10, 80
    rows = run(device, cfg, h, w, n_l, n_u, iters, args.warmup, args.amp, classes)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"MixTeacher bench: {name}, {'tiny' if args.quick else 'R50-FPN'} detector, {h}x{w} images, amp "
          f"{args.amp}, torch {torch.__version__}")
    print(f"{'measurement':<52}{'value':>12}  unit       {'peak MiB':>9}")
    for label, unit, value, memory in rows:
        print(f"{label:<52}{value:>12.3f}  {unit:<10} {memory:>9.0f}")
    return rows


if __name__ == "__main__":
    main()
