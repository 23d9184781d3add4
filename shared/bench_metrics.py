"""Time and peak memory of the exact anomaly metrics at scale.

    python -m shared.bench_metrics [--n 100000000] [--device cpu|cuda] [--scores randn distinct]

Measures ``auroc``, ``average_precision``, ``fpr_at_tpr`` and ``ranking_metrics`` (the three from one sort) on
``n`` float32 scores with bool labels (10 % positives), and ``aupro`` on 100 float32 maps of 224x224 (median of 3
runs after a warm-up). Score kinds: ``randn`` (normal scores shifted by the label; about half of 10^8 float32 values
are distinct) and ``distinct`` (every score distinct, the worst case for the tie-run scan). Each measurement runs in
a fresh process (``--worker METRIC``), so the CPU peak is that process's maximum resident set size: the torch
runtime, the inputs (0.5 GB for 10^8 scores and labels) and the metric. On CUDA the peak is
``torch.cuda.max_memory_allocated``, inputs included. "CPU s" is the process CPU time of the metric (all threads): on
a machine shared with other jobs the wall time can be several times what an idle machine gives. Without ``--device``
it runs on the CPU, and on CUDA too when available.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from scipy import ndimage

from shared.metrics import aupro, auroc, average_precision, fpr_at_tpr, ranking_metrics

RANKING_METRICS = {
    "auroc": auroc,
    "average_precision": average_precision,
    "fpr_at_tpr": fpr_at_tpr,
    "ranking_metrics": ranking_metrics,
}
_CHUNK = 1 << 22


def make_scores(n: int, kind: str, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Build float32 scores and bool labels chunk by chunk, so that generating them adds no peak memory."""
    generator = torch.Generator(device=device).manual_seed(seed)
    scores = torch.empty(n, dtype=torch.float32, device=device)
    labels = torch.empty(n, dtype=torch.bool, device=device)
    if kind == "distinct" and n > 1 << 27:
        raise ValueError("--scores distinct supports n <= 2**27")
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        chunk_labels = torch.rand(stop - start, generator=generator, device=device) < 0.1
        labels[start:stop] = chunk_labels
        if kind == "randn":
            scores[start:stop] = torch.randn(stop - start, generator=generator, device=device) + 1.5 * chunk_labels
        else:
            # i -> i * odd mod 2^27 permutes [0, 2^27); added to the bits of 1.0 these are distinct finite floats.
            index = torch.arange(start, stop, dtype=torch.int64, device=device)
            bits = 0x3F800000 + (index * 2654435761) % (1 << 27)
            scores[start:stop] = bits.to(torch.int32).view(torch.float32)
    return scores, labels


def make_maps(device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """100 float32 anomaly maps of 224x224 with ~1 % anomalous pixels in ~1000 blobs (MVTec-like)."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal((100, 224, 224), dtype=np.float32), sigma=(0, 4, 4))
    masks = noise > 2.5 * noise.std()
    maps = noise + rng.standard_normal(noise.shape, dtype=np.float32) * (0.5 * noise.std())
    return torch.from_numpy(maps).to(device), torch.from_numpy(masks).to(device)


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_worker(metric: str, n: int, device: str, kind: str) -> dict[str, float | int | str | None]:
    """Build the inputs, time one metric and return the measurement."""
    if metric == "aupro":
        inputs, n, kind = make_maps(device), 100 * 224 * 224, "maps"
    else:
        inputs = make_scores(n, kind, device)
    _synchronize(device)
    inputs_rss = _peak_rss_gib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    function = aupro if metric == "aupro" else RANKING_METRICS[metric]
    if metric == "aupro":
        function(*inputs)  # warm-up; the 10^8 runs take seconds, so one-off costs do not matter there
    times, cpu_times = [], []
    for _ in range(3 if metric == "aupro" else 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        value = function(*inputs)
        _synchronize(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {
        "metric": metric,
        "n": n,
        "device": device,
        "scores": kind,
        "seconds": float(np.median(times)),
        "cpu_seconds": float(np.median(cpu_times)),
        "peak_rss_gib": _peak_rss_gib(),
        "rss_after_inputs_gib": inputs_rss,
        "cuda_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "value": value,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000_000, help="number of scores for the ranking metrics")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cpu, and cuda when available")
    parser.add_argument("--scores", nargs="+", choices=["randn", "distinct"], default=["randn", "distinct"])
    parser.add_argument("--worker", choices=[*RANKING_METRICS, "aupro"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.n, args.device or "cpu", args.scores[0])))
        return

    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    jobs = [(metric, kind) for kind in args.scores for metric in RANKING_METRICS] + [("aupro", "maps")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'metric':<18} {'n':>11} {'device':<6} {'scores':<8} {'seconds':>8} {'CPU s':>7} {'peak GiB':>9}  note")
    for device in devices:
        for metric, kind in jobs:
            command = [
                sys.executable,
                "-m",
                "shared.bench_metrics",
                "--worker",
                metric,
                "--n",
                str(args.n),
                "--device",
                device,
                "--scores",
                kind if kind != "maps" else "randn",
            ]
            result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
            if device == "cuda":
                peak, note = result["cuda_peak_gib"], "torch.cuda.max_memory_allocated, inputs included"
            else:
                peak, note = result["peak_rss_gib"], f"max RSS; {result['rss_after_inputs_gib']:.2f} after inputs"
            print(
                f"{metric:<18} {result['n']:>11} {device:<6} {result['scores']:<8} {result['seconds']:>8.2f} "
                f"{result['cpu_seconds']:>7.2f} {peak:>9.2f}  {note}"
            )


if __name__ == "__main__":
    main()
