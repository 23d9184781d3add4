"""Per-stage cost of the M3DM / LSFA pipeline: feature extraction, FPS + grouping, coreset, kNN scoring, a whole
``score_class`` (with its peak GPU memory over the train tokens), one-class SVM fit, AUPRO (exact and M3DM's).
Prints a table (and writes it as JSON with ``--output_json rows.json``).

    python bench.py                      # paper sizes (ViT-B/8 + Point-MAE, 300k x 1152 bank): meant for a GPU
    python bench.py --quick              # reduced sizes for a CPU (what the README reports for the 2-core machine)
    python bench.py --device cuda --amp bf16     # --amp off (default), bf16 or fp16
    python bench.py --quick --threads 1 --output_json rows.json   # --device auto (default): cuda when available

Random weights and random data: the figures are costs, not accuracies.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lsfa.memory_bank import (
    LateFusion,
    greedy_coreset,
    nearest_neighbours,
    reweighted_image_score,
    sparse_random_projection,
)
from lsfa.model import FeatureExtractor, create_model, create_point_encoder, create_rgb_backbone
from lsfa.point_ops import group_points
from lsfa.scoring import ScoringSettings, SplitFeatures, score_class
from shared.benchmark import peak_memory_mb, seconds_per_call, synchronize
from shared.config import AmpMode, DeviceName, script_parser
from shared.metrics import aupro
from shared.training import autocast, resolve_device

__all__ = ["BenchConfig", "main", "parse_args"]


@dataclass
class BenchConfig:
    """Benchmark settings (``--key value``)."""

    quick: bool = field(default=False, metadata={"help": "reduced sizes for a CPU"})
    device: DeviceName = field(default="auto", metadata={"help": "auto: cuda when available"})
    amp: AmpMode = field(default="off", metadata={"help": "mixed precision: off, bf16 or fp16"})
    threads: int | None = field(default=None, metadata={"help": "torch intra-op CPU threads (default: torch's)"})
    output_json: str | None = field(default=None, metadata={"help": "write the rows as JSON"})


SIZES = {
    # name: rgb variant, point variant, images per batch, points per cloud, bank rows, knn bank rows, ocsvm images,
    # aupro maps, patches per image, grid
    "paper": dict(
        rgb="dino_vitb8",
        point="point_mae",
        batch=8,
        points=30_000,
        bank=300_000,
        knn_bank=100_000,
        ocsvm_images=200,
        aupro_maps=150,
        patches=3136,
        grid=56,
        dim=1152,
        rgb_dim=768,
        score_train=60,
    ),
    "quick": dict(
        rgb="vit_tiny8_d2",
        point="point_mae_tiny",
        batch=4,
        points=10_000,
        bank=20_000,
        knn_bank=10_000,
        ocsvm_images=20,
        aupro_maps=40,
        patches=784,
        grid=28,
        dim=1152,
        rgb_dim=768,
        score_train=8,
    ),
}


def _organised_cloud(batch: int, points: int, device: torch.device) -> torch.Tensor:
    """(B, 3, 224, 224) clouds with ``points`` valid pixels (a centred square object on a zero background)."""
    side = int(points**0.5)
    xyz = torch.zeros(batch, 3, 224, 224, device=device)
    lo = (224 - side) // 2
    yy, xx = torch.meshgrid(torch.arange(side, device=device), torch.arange(side, device=device), indexing="ij")
    xyz[:, 0, lo : lo + side, lo : lo + side] = xx * 1e-3
    xyz[:, 1, lo : lo + side, lo : lo + side] = yy * 1e-3
    xyz[:, 2, lo : lo + side, lo : lo + side] = (
        0.4 + 0.01 * torch.sin(xx / 9.0) + 1e-4 * torch.rand(side, side, device=device)
    )
    return xyz


def _bench_score_class(s: dict, device: torch.device, add) -> None:
    """``score_class`` (M3DM double bank, banks + coreset + scoring, no OCSVM) on random features; reports the peak
    memory above the resident features, in MB and in multiples of the train tokens (in-place normalisation: the
    banks are views of one copy of them)."""
    n_train, n_test, g = s["score_train"], 4, s["grid"]
    xyz_dim, rgb_dim = s["dim"], s["rgb_dim"]

    def split(n: int) -> SplitFeatures:
        return SplitFeatures(
            xyz=torch.randn(n, xyz_dim, g, g),
            rgb=torch.randn(n, rgb_dim, 28, 28),
            valid=torch.ones(n, g, g, dtype=torch.bool),
            masks=torch.zeros(n, 224, 224),
            labels=torch.zeros(n, dtype=torch.long),
        )

    train, test = split(n_train), split(n_test)
    token_mb = (n_train * g * g * xyz_dim + n_train * 784 * rgb_dim) * 4 / 2**20
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = peak_memory_mb(device) if device.type == "cuda" else 0.0
    t0 = time.perf_counter()
    score_class(train, test, None, ScoringSettings(fusion="sum"), device)
    synchronize(device)
    seconds = time.perf_counter() - t0
    peak = peak_memory_mb(device) - before
    add(
        "score_class (2 banks, no SVM)",
        f"{n_train} train imgs, tokens {token_mb:.0f} MB, peak {peak / token_mb:.2f}x"
        if device.type == "cuda"
        else f"{n_train} train imgs, tokens {token_mb:.0f} MB",
        seconds,
        "",
        None,
    )


parse_args = script_parser(BenchConfig, "Per-stage cost of the M3DM / LSFA pipeline (paper sizes; --quick: CPU sizes)")


def main(cfg: BenchConfig) -> list[dict]:
    """Time every stage; prints one row per stage and returns the rows."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    s = SIZES["quick" if cfg.quick else "paper"]
    torch.manual_seed(0)
    rows: list[dict] = []

    def add(stage: str, size: str, seconds: float, unit: str, per_second: float | None) -> None:
        rows.append(
            {
                "stage": stage,
                "size": size,
                "seconds": seconds,
                "throughput": per_second,
                "unit": unit,
                "peak_mb": peak_memory_mb(device),
            }
        )
        rate = f"{per_second:10.2f} {unit}" if per_second is not None else " " * 11 + unit
        print(f"{stage:<28}{size:<44}{seconds:10.3f} s{rate:>22}   peak {peak_memory_mb(device):9.0f} MB", flush=True)

    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"{torch.get_num_threads()} threads, amp {cfg.amp}, sizes {'quick' if cfg.quick else 'paper'}"
    )
    extractor = FeatureExtractor(create_rgb_backbone(s["rgb"]), create_point_encoder(s["point"]), grid=s["grid"]).to(
        device
    )
    images = torch.randn(s["batch"], 3, 224, 224, device=device)
    xyz = _organised_cloud(s["batch"], s["points"], device)
    with torch.no_grad(), autocast(device, cfg.amp):
        t = seconds_per_call(lambda: extractor.rgb_features(images), device)
        add("rgb features", f"{s['rgb']}, batch {s['batch']}", t, "img/s", s["batch"] / t)
        t = seconds_per_call(lambda: extractor.xyz_features(xyz), device)
        add(
            "xyz features (full PFA)",
            f"{s['point']}, {s['points']} pts, batch {s['batch']}",
            t,
            "img/s",
            s["batch"] / t,
        )
        pts = xyz.flatten(2).transpose(1, 2)[:, (xyz.abs().sum(1).flatten(1) > 0)[0]].contiguous()
        v = extractor.point_encoder.variant
        t = seconds_per_call(lambda: group_points(pts, v.num_group, v.group_size), device)
        add(
            "FPS + kNN grouping",
            f"{v.num_group} x {v.group_size} of {pts.shape[1]} pts, batch {s['batch']}",
            t,
            "img/s",
            s["batch"] / t,
        )
    adaptors = create_model("lsfa_adaptors", xyz_dim=extractor.xyz_dim, rgb_dim=extractor.rgb_dim).to(device)
    tokens_x = torch.randn(s["batch"], s["grid"] ** 2, extractor.xyz_dim, device=device)
    tokens_r = torch.randn(s["batch"], s["grid"] ** 2, extractor.rgb_dim, device=device)

    def adaptor_step() -> None:
        with autocast(device, cfg.amp):
            x, r = adaptors(tokens_x, tokens_r)
            loss = adaptors.xyz_head(x).mean() + adaptors.rgb_head(r).mean()
        loss.backward()

    t = seconds_per_call(adaptor_step, device)
    add("adaptor train step", f"{s['grid'] ** 2} tokens, batch {s['batch']}", t, "img/s", s["batch"] / t)
    bank = torch.randn(s["bank"], s["dim"], device=device)
    n_core = s["bank"] // 10
    t0 = time.perf_counter()
    projected = sparse_random_projection(bank, 0.9)
    synchronize(device)
    t_proj = time.perf_counter() - t0
    dtype = torch.float16 if device.type == "cuda" else None
    t0 = time.perf_counter()
    greedy_coreset(projected, n_core, dtype=dtype)
    synchronize(device)
    add(
        "coreset 10 % (proj + greedy)",
        f"{s['bank']} x {s['dim']} -> {n_core} (JL {projected.shape[1]})",
        t_proj + time.perf_counter() - t0,
        "",
        None,
    )
    del projected
    knn_bank = bank[: s["knn_bank"]].clone()
    del bank
    patches = torch.randn(s["patches"], s["dim"], device=device)

    def knn() -> None:
        d, i = nearest_neighbours(patches, knn_bank, k=1, chunk=1024)
        reweighted_image_score(patches, knn_bank, d[:, 0], i[:, 0])

    t = seconds_per_call(knn, device, iters=3)
    add(
        "kNN scoring + re-weighting",
        f"{s['patches']} patches vs {s['knn_bank']} rows x {s['dim']}",
        t,
        "img/s",
        1.0 / t,
    )
    n = s["ocsvm_images"]
    img_vec, pix_vec = torch.rand(n, 2), torch.rand(n, 2, 224, 224)
    t0 = time.perf_counter()
    LateFusion().fit(img_vec, pix_vec)
    add("one-class SVM fit (2 SVMs)", f"{n} images + {n * 224 * 224} pixels x 2", time.perf_counter() - t0, "", None)
    _bench_score_class(s, device, add)
    m = s["aupro_maps"]
    maps = torch.rand(m, 224, 224)
    masks = torch.zeros(m, 224, 224, dtype=torch.bool)
    masks[: m // 2, 60:90, 60:100] = True
    maps[masks] += 0.5
    for method in ("exact", "m3dm"):
        t0 = time.perf_counter()
        aupro(maps, masks, 0.3, method=method)
        add(f"AUPRO@0.3 ({method})", f"{m} maps of 224 x 224", time.perf_counter() - t0, "", None)
    if cfg.output_json:
        Path(cfg.output_json).write_text(json.dumps({"device": str(device), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main(parse_args())
