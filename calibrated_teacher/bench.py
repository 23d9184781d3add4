"""Speed of Calibrated Teacher: one training iteration (teacher inference + merge + student step with FIoU) against
a supervised RetinaNet step on the same images, inference throughput, and the calibrator's fit time.

    python -m calibrated_teacher.bench                                  # CPU, MobileNetV2-FPN at 192 px
    python -m calibrated_teacher.bench --variant retinanet_r101_fpn --img_size 800 --device cuda --amp bf16

Prints a table (README, Performance). Random weights (speed does not depend on them), synthetic images with three
sparse boxes each.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from calibrated_teacher.calibration import ScoreCalibrator
from calibrated_teacher.config import CalibratedTeacherSettings
from calibrated_teacher.model import VARIANTS, build_detector
from calibrated_teacher.teacher_student import CalibratedTeacher
from shared.benchmark import seconds_per_call
from shared.config import AmpMode, DeviceName, script_parser
from shared.training import autocast, resolve_device

__all__ = ["BenchConfig", "main", "parse_args"]


@dataclass
class BenchConfig:
    """Benchmark settings (``--key value``)."""

    variant: str = field(default="retinanet_mnv2_fpn", metadata={"help": "a calibrated_teacher.model.VARIANTS name"})
    img_size: int = field(default=192, metadata={"help": "image height (width 1.25x)"})
    batch_size: int = 2
    iters: int = 3
    device: DeviceName = "auto"
    amp: AmpMode = "off"
    threads: int = 1
    calib_pairs: int = field(default=100_000, metadata={"help": "(score, label) pairs of the Platt fit"})


def _batch(n: int, size: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, int(size * 1.25), generator=g).to(device) for _ in range(n)]
    boxes = torch.tensor([[10.0, 10.0, 60.0, 70.0], [80.0, 40.0, 150.0, 120.0], [30.0, 100.0, 90.0, 180.0]])
    boxes = (boxes * size / 192).to(device)
    target = {"boxes": boxes, "labels": torch.tensor([0, 1, 2], device=device), "image_id": 0}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    return {
        "weak": images,
        "strong": images,
        "weak_to_strong": torch.eye(3, dtype=torch.float64).expand(n, 3, 3),
        "weak_target": [target] * n,
        "strong_target": [target] * n,
        "dropped": [empty] * n,
    }


def main(args: BenchConfig) -> list[dict]:
    """Run the measurements; returns the table rows."""
    if args.variant not in VARIANTS:
        raise ValueError(f"unknown variant {args.variant!r}; valid: {sorted(VARIANTS)}")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = replace(VARIANTS[args.variant], min_size=args.img_size, max_size=int(args.img_size * 1.25))
    settings = replace(CalibratedTeacherSettings(), merge_start=0, fiou=True, ori_thr=0.0, calibration_window=1)
    rows = []
    batch = _batch(args.batch_size, args.img_size, device)
    for name, method_name in (("supervised step", "supervised"), ("calibrated teacher step", "calibrated_teacher")):
        method = CalibratedTeacher(build_detector(80, cfg), settings, method_name).to(device).train()
        params = [p for p in method.student.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

        def step(method=method, optimizer=optimizer) -> None:
            with autocast(device, args.amp):
                loss, _ = method(batch, 10)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            method.update_teacher(10)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = seconds_per_call(step, device, iters=args.iters)
        memory = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
        rows.append({"what": name, "ms": 1000 * seconds, "img_s": args.batch_size / seconds, "peak_MiB": memory})
    method.teacher.eval()

    @torch.no_grad()
    def infer() -> None:
        with autocast(device, args.amp):
            method.teacher(batch["weak"])

    seconds = seconds_per_call(infer, device, iters=args.iters)
    rows.append(
        {"what": "inference", "ms": 1000 * seconds, "img_s": args.batch_size / seconds, "peak_MiB": float("nan")}
    )
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(args.calib_pairs, generator=g)
    labels = torch.rand(args.calib_pairs, generator=g) < scores
    seconds = seconds_per_call(lambda: ScoreCalibrator().fit(scores, labels), torch.device("cpu"), iters=3)
    rows.append(
        {
            "what": f"Platt fit, {args.calib_pairs} pairs",
            "ms": 1000 * seconds,
            "img_s": float("nan"),
            "peak_MiB": float("nan"),
        }
    )
    print(
        f"{args.variant} at {args.img_size} px, batch {args.batch_size}, {device}, amp {args.amp}, "
        f"{args.threads} thread(s)"
    )
    print(f"| {'what':<32} | {'ms':>9} | {'img/s':>8} | {'peak MiB':>8} |")
    for r in rows:
        print(f"| {r['what']:<32} | {r['ms']:9.1f} | {r['img_s']:8.2f} | {r['peak_MiB']:8.0f} |")
    return rows


parse_args = script_parser(BenchConfig, "Calibrated Teacher benchmark (step time vs supervised RetinaNet, Platt fit)")


if __name__ == "__main__":
    main(parse_args())
