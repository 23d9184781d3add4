"""Benchmark: per-image training-step time of supervised-only vs MixTeacher with the teacher's real detection, the
burn-in step, teacher inference images/s at the regular and the mixed test scale, and peak memory (README,
Performance).

    python -m mixteacher.bench                          # MobileNetV2-FPN (the evidence detector), 800 x 1216, CPU
    python -m mixteacher.bench --detector r50_fpn --device cuda --amp bf16   # the paper detector on a GPU
    python -m mixteacher.bench --quick                  # 192 x 240 images (the embedded default's size)

Batch: 1 labeled + 4 unlabeled images (a fixed batch, not drawn by the sampler: the COCO-partial recipe's most
frequent composition per GPU, 74 % of its batches under the released sampler rule; 1.33 labeled on average),
80 classes. Steps timed:

* ``supervised``: Faster R-CNN losses of the labeled image at the regular scale, backward, SGD (the baseline);
* ``mixteacher labeled only``: MixTeacher's three-scale labeled losses of the same image (no unlabeled images);
* ``burn-in``: a MixTeacher step before ``unsup_start`` on the whole batch (the unlabeled branch must be skipped);
* ``mixteacher``: the full step after the burn-in: the EMA teacher's real pseudo-labelling on the weak views
  (mixed-scale features, RPN with the training proposal numbers, R-CNN, per-class NMS, score >= 0.5, 10x box
  jitter), the student's three-scale losses on all five images, mining, backward, SGD, EMA update.

With random heads no detection reaches 0.5 and every class of every proposal passes the 1e-3 test threshold (80k
boxes into NMS per image, which no trained detector produces), so the R-CNN classifier of teacher and student is
:class:`ScoringHead`: input-dependent class-1 scores that spread over confident (>= 0.9), low-confidence (0.5-0.9)
and discarded values like a trained teacher's (``score_fg`` moves the spread); the pseudo boxes kept per image are
printed. The steps are interleaved (one of each per round) and the median of
``iters`` rounds is reported, in wall-clock and in this process's CPU seconds (robust to other jobs on a shared
machine at 1 thread). Acceptance ratios: MixTeacher seconds per trained image / supervised seconds per labeled
image (<= 2.5), burn-in / supervised on the same labeled image (<= 1.1) and burn-in / MixTeacher labeled-only.
Then one more full step is taken apart (:func:`stage_seconds`, CPU seconds): the teacher's pseudo-labelling, the
labeled forward, the unlabeled forward (teacher + student), backward. ``--detector r50_fpn``: the random R50's frozen
BN statistics are first set from the bench batch (:func:`calibrate_frozen_bn`), else no pseudo box survives.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from mixteacher.config import MixTeacherSettings
from mixteacher.mix_teacher import MixTeacher
from mixteacher.model import MixedScaleFasterRCNN, create_model
from shared.benchmark import peak_memory_mb, seconds_per_call, synchronize
from shared.config import AmpMode, DeviceName, script_parser
from shared.detection import FrozenBN
from shared.training import autocast, resolve_device

__all__ = ["BenchConfig", "main", "parse_args", "run"]

UNSUP_START = 1000


@dataclass
class BenchConfig:
    """Benchmark settings (``--key value``)."""

    device: DeviceName = "auto"
    detector: str = "mobilenet_v2"
    quick: bool = False
    iters: int = 3
    warmup: int = 1
    amp: AmpMode = "off"
    threads: int | None = 1
    score_fg: float = 3.0
    msi_train: bool = True


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


class ScoringHead(nn.Module):
    """A stand-in for a trained R-CNN classifier: background logit ``bg``, class 1 ``fg + spread z`` with z the
    standardised projection of the RoI feature on a fixed random direction (so scores depend on the RoI and spread
    over confident, low-confidence and discarded values), every other class ``-3`` (probability < 1e-3, below the
    test score threshold, as for a trained detector)."""

    def __init__(self, in_features: int, num_classes: int, fg: float = 4.0, bg: float = 4.0, spread: float = 1.5):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("direction", torch.randn(in_features, generator=g))
        bias = torch.full((num_classes,), -3.0)
        bias[0], bias[1] = bg, fg
        self.bias = nn.Parameter(bias)
        self.spread = spread

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.direction
        z = (z - z.mean()) / z.std().clamp(min=1e-6) if z.numel() > 1 else z * 0
        logits = self.bias.expand(x.shape[0], -1).clone()
        logits[:, 1] = logits[:, 1] + self.spread * z
        return logits


def _detector(name: str, quick: bool) -> tuple[MixedScaleFasterRCNN, int, int]:
    if name == "mobilenet_v2":
        model = create_model(
            "r10_w16",
            80,
            backbone="mobilenet_v2",
            frozen_stages=1,
            **({} if quick else {"min_size": 800, "max_size": 1333}),
        )
        model.cfg.rpn_pre_nms_top_n_train, model.cfg.rpn_post_nms_top_n_train = 2000, 1000
        model.rpn._pre_nms_top_n["training"], model.rpn._post_nms_top_n["training"] = 2000, 1000
        model.roi_heads.fg_bg_sampler.batch_size_per_image = 512
    elif name == "r50_fpn":
        model = create_model("r50_fpn", 80)
    elif name == "tiny":  # the unit tests' detector and image size
        return create_model("tiny", 80), 96, 128
    else:
        raise ValueError(f"detector must be 'mobilenet_v2', 'r50_fpn' or 'tiny', got {name!r}")
    h, w = (192, 240) if quick else (800, 1216)
    return model, h, w


@torch.no_grad()
def calibrate_frozen_bn(model: MixedScaleFasterRCNN, images: list[torch.Tensor]) -> None:
    """Set every frozen BatchNorm's statistics to those of its input on ``images`` (one forward pass, layer by
    layer). A randomly initialised R50 with frozen unit statistics on caffe-style 0-255 inputs grows its activations
    to ~1e4 by ``layer4``, its RPN then proposes degenerate boxes and the teacher keeps no pseudo box, so the
    "full step" would time a step without pseudo labels; calibrated statistics give the activations of a pretrained
    backbone's scale (what the paper's R50 has)."""

    def set_stats(module: FrozenBN, args: tuple[torch.Tensor]) -> None:
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))
        module.weight.fill_(1.0)
        module.bias.zero_()

    hooks = [m.register_forward_pre_hook(set_stats) for m in model.modules() if isinstance(m, FrozenBN)]
    try:
        image_list, _ = model.preprocess(images)
        model.backbone.body(image_list.tensors)
    finally:
        for hook in hooks:
            hook.remove()


def stage_seconds(method: MixTeacher, batch: dict, step: int, device: torch.device) -> dict[str, float]:
    """CPU seconds of the parts of one full MixTeacher step, called one by one: the teacher's pseudo-labelling (no
    gradient), the labeled loss (three scales), the unlabeled student forward (its unsupervised loss minus the
    teacher's part, which it recomputes), backward of both."""
    out = {}

    def clock(name, fn):
        synchronize(device)
        t = time.process_time()
        value = fn()
        synchronize(device)
        out[name] = time.process_time() - t
        return value

    clock(
        "stage: teacher pseudo-labelling (mixed scale, detection, jitter)",
        lambda: method.pseudo_label(batch["weak_images"]),
    )
    sup = clock(
        "stage: labeled loss, forward (three scales)",
        lambda: method.supervised_loss(batch["labeled_images"], batch["labeled_targets"]),
    )
    unsup, _ = clock(
        "stage: unlabeled loss, forward (teacher + three-scale student)",
        lambda: method.unsupervised_loss(batch["weak_images"], batch["strong_images"], batch["weak_to_strong"]),
    )
    clock("stage: backward", lambda: (sum(sup.values()) + sum(unsup.values())).backward())
    method.student.zero_grad(set_to_none=True)
    return out


def run(cfg: BenchConfig, device: torch.device) -> dict[str, float]:
    """Median seconds (wall and CPU) per step kind, per-image ratios, pseudo-label counts, inference images/s."""
    torch.manual_seed(0)
    model, h, w = _detector(cfg.detector, cfg.quick)
    predictor = model.roi_heads.box_predictor
    predictor.cls_score = ScoringHead(predictor.cls_score.in_features, predictor.cls_score.out_features, cfg.score_fg)
    batch = _batch(1, 4, h, w, device)
    if cfg.detector == "r50_fpn":
        calibrate_frozen_bn(model.to(device), batch["labeled_images"] + batch["weak_images"])
    labeled_only = {**batch, "weak_images": [], "strong_images": []}
    methods = {
        "supervised": MixTeacher(copy.deepcopy(model), MixTeacherSettings(), "supervised").to(device).train(),
        "mixteacher": MixTeacher(
            model, MixTeacherSettings(unsup_start=UNSUP_START, unsup_warmup=0, msi_train=cfg.msi_train), "mixteacher"
        )
        .to(device)
        .train(),
    }
    steps = {  # name: (method, batch, step index)
        "supervised": ("supervised", labeled_only, 0),
        "mixteacher labeled only": ("mixteacher", labeled_only, 0),
        "burn-in": ("mixteacher", batch, 0),
        "mixteacher": ("mixteacher", batch, UNSUP_START),
    }
    optimizers = {
        k: torch.optim.SGD([p for p in m.student.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
        for k, m in methods.items()
    }
    logs: dict[str, float] = {}

    def step(name: str) -> None:
        key, step_batch, index = steps[name]
        method = methods[key]
        with autocast(device, cfg.amp):
            loss, out = method(step_batch, index)
        optimizers[key].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[key].step()
        method.update_teacher(index)
        logs.update(out)

    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for round_ in range(cfg.warmup + cfg.iters):
        for name in steps:
            synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            step(name)
            synchronize(device)
            if round_ >= cfg.warmup:
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    result = {}
    for name, pairs in times.items():
        result[f"{name} s"] = statistics.median(p[0] for p in pairs)
        result[f"{name} cpu s"] = statistics.median(p[1] for p in pairs)
    for unit in ("s", "cpu s"):
        sup = result[f"supervised {unit}"]
        result[f"ratio per image, mixteacher / supervised ({unit})"] = result[f"mixteacher {unit}"] / 5 / sup
        result[f"ratio burn-in / supervised ({unit})"] = result[f"burn-in {unit}"] / sup
        result[f"ratio burn-in / mixteacher labeled only ({unit})"] = (
            result[f"burn-in {unit}"] / result[f"mixteacher labeled only {unit}"]
        )
    for key in ("pseudo_boxes", "reg_boxes", "mined"):
        result[f"{key} per unlabeled image"] = logs.get(key, float("nan"))
    result.update(stage_seconds(methods["mixteacher"], batch, UNSUP_START, device))
    result["peak memory MiB"] = peak_memory_mb(device)
    teacher = methods["mixteacher"].teacher.eval()
    for scale in ("regular", "mixed"):

        def infer(scale=scale):
            with torch.no_grad(), autocast(device, cfg.amp):
                teacher.predict(batch["weak_images"], scale)

        seconds = seconds_per_call(infer, device, cfg.warmup, 1)
        result[f"teacher inference {scale} scale images/s"] = len(batch["weak_images"]) / seconds
    return result


parse_args = script_parser(
    BenchConfig, "MixTeacher benchmark (MobileNetV2-FPN or R50-FPN at 800 x 1216; --quick: 192 x 240)"
)


def main(cfg: BenchConfig) -> dict[str, float]:
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    result = run(cfg, device)
    h, w = (96, 128) if cfg.detector == "tiny" else (192, 240) if cfg.quick else (800, 1216)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(
        f"MixTeacher bench: {name}, {cfg.detector} detector, {h}x{w} images, 1 labeled + 4 unlabeled, amp {cfg.amp}, "
        f"median of {cfg.iters} interleaved rounds, torch {torch.__version__}"
    )
    for key, value in result.items():
        print(f"{key:<64}{value:>12.3f}")
    return result


if __name__ == "__main__":
    main(parse_args())
