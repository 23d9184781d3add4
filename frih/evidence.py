"""Evidence on the real-photo set: FRIH vs its iSSAM base, iDIH and the composite, at equal wall-clock and equal epochs.

    python -m frih.evidence                      # calibration (if none is stored) + validation + seeds -> evidence.json
    python -m frih.evidence --seeds 2            # one seed again with the committed calibration and settings;
                                                 # compared with the committed column at the end
    python -m frih.evidence --calibrate          # measure the seconds per epoch again (a new budget)

Data: the real-photo set of `frih.synthetic.write_photo_iharmony4` (scikit-image / scikit-learn photographs,
segment masks, iHarmony4 colour transfer; test split = crops of photos never seen in training), 64-px images, drawn
with `data.synthetic_seed S` and read by the iHarmony4 loader; training seed S. Every row is `python -m frih.train`
with the embedded default's widths (stage 1 iSSAM ch 8, modules ch 8, FPM 16), 32-px crops and evaluation, batch 8,
Adam 1e-3 x0.1 at 80 % of the row's epochs, one CPU thread. Rows:

================  ====================================================================================================
``composite``     the composite as the output (do nothing)
``issam``         iSSAM (stage 1 alone, ch 8, `model.arch issam`)
``idih``          iDIH (depth 4, ch 16; `model.arch idih`), the other stage-1 base
``frih_no_fpm``   FRIH with the chosen stage-1 training, no fusion prediction module (final = last module output)
``frih``          FRIH with the chosen stage-1 training
``frih_stage1``   the coarse (stage-1) output of the ``frih`` run
================  ====================================================================================================

"Same wall-clock" is defined reproducibly: each network's seconds per training epoch are measured once, in isolation
(`--calibrate`; the numbers, the machine, the threads and the command are stored in evidence.json), the budget is
FRIH's `EPOCHS` epochs at its calibrated speed (a warm-started FRIH: its stage-1-only epochs at iSSAM's speed plus
its full epochs), and every other network trains floor(budget / its seconds per epoch) epochs. "Same epochs": every
row `EPOCHS` epochs. The runs themselves are deterministic, so `--seeds S` reproduces seed S's column exactly on CPU
(with the stored calibration, never a new one).

The stage-1 training of FRIH is chosen on the validation seed (not reported) among `CANDIDATES` by FRIH's fMSE at
the budget: the paper reading (end to end, weights 1/1/1), loss weights balanced by the measured gradient ratio
(`frih.diagnose_gradients`), a stop-gradient between the stages, and an in-run warm start of stage 1 (half the
epochs on its own loss, at iSSAM's speed) with a stop-gradient. ``rows``: ``<row>`` is the fMSE at equal wall-clock
(the headline), ``time/<row>/<metric>`` and ``epochs/<row>/<metric>`` every metric of both comparisons.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from frih import diagnose_gradients, train
from shared.logger import make_run_dir

PACKAGE = "frih"
COMMITTED = Path(__file__).resolve().parent / "EVIDENCE.json"
DEFAULT_SEEDS = (1, 2, 3)
VALIDATION_SEED = 0
EPOCHS = 30
METRICS = ("fmse", "mse", "psnr")
BASE = [
    "--data.synthetic_kind", "photos", "--data.synthetic_size", "64", "--data.synthetic_num_real", "24",
    "--data.crop_size", "32", "--data.eval_size", "32", "--data.num_workers", "0",
    "--model.stage1_ch", "8", "--model.module_ch", "8", "--model.fpm_ch", "16", "--model.num_clusters", "3",
    "--model.stop_gradient", "false", "--model.use_fpm", "true", "--stage1_epochs", "0",
    "--model.fpm_blend", "last", "--model.compose_submasks", "true", "--model.stage2_gate_bias", "1.0",
    "--loss.coarse_weight", "1.0", "--loss.final_weight", "1.0", "--loss.module_weight", "1.0",
    "--optim.batch_size", "8", "--optim.lr", "0.001",
    "--device", "cpu", "--threads", "1", "--checkpoint_interval", "0", "--eval_interval", "0",
    "--eval_batch_size", "32", "--num_grid_images", "8",
]  # fmt: skip
NETWORKS = {
    "issam": ["--model.arch", "issam"],
    "idih": ["--model.arch", "idih", "--model.stage1_depth", "4", "--model.stage1_ch", "16"],
    "frih": ["--model.arch", "frih"],
    "frih_no_fpm": ["--model.arch", "frih", "--model.use_fpm", "false"],
}
CANDIDATES = ("end_to_end", "balanced", "stop_gradient", "warm_stop_gradient")
TRAINED_ROWS = ("issam", "idih", "frih_no_fpm", "frih")


def candidate_flags(name: str, balance_weight: float) -> list[str]:
    """FRIH's stage-1 training option `name` as train.py flags."""
    return {
        "end_to_end": [],
        "balanced": ["--loss.coarse_weight", f"{balance_weight:g}"],
        "stop_gradient": ["--model.stop_gradient", "true"],
        "warm_stop_gradient": ["--model.stop_gradient", "true", "--stage1_epochs", str(EPOCHS // 2)],
    }[name]


def _stage1_epochs(flags: Sequence[str]) -> int:
    flags = list(flags)
    return int(flags[flags.index("--stage1_epochs") + 1]) if "--stage1_epochs" in flags else 0


def budget_seconds(calibration: dict[str, float], frih_flags: Sequence[str]) -> float:
    """FRIH's `EPOCHS` epochs at the calibrated speeds (stage-1-only epochs at iSSAM's)."""
    warm = _stage1_epochs(frih_flags)
    return warm * calibration["issam"] + (EPOCHS - warm) * calibration["frih"]


def epochs_for(row: str, budget: float, calibration: dict[str, float], frih_flags: Sequence[str]) -> int:
    """Epochs of `row` at equal wall-clock: the whole budget at its calibrated seconds per epoch."""
    if row == "frih":
        return EPOCHS
    if row == "frih_no_fpm" and _stage1_epochs(frih_flags):  # same warm start, the rest at its own speed
        warm = _stage1_epochs(frih_flags)
        return warm + max(1, math.floor((budget - warm * calibration["issam"]) / calibration[row] + 1e-9))
    return max(1, math.floor(budget / calibration[row] + 1e-9))


def _schedule(epochs: int) -> list[str]:
    return ["--optim.epochs", str(epochs), "--optim.milestones", f"[{max(1, round(0.8 * epochs))}]"]


def _train(argv: list[str]) -> dict[str, Any]:
    return train.main(train.parse_args(argv))


def run_row(row: str, seed: int, epochs: int, flags: Sequence[str], out: Path) -> dict[str, Any]:
    """Train `row` for `epochs` on data draw `seed` with training seed `seed`; returns its metrics.json."""
    argv = [*BASE, *NETWORKS[row], *(flags if row.startswith("frih") else []), *_schedule(epochs)]
    argv += ["--seed", str(seed), "--data.synthetic_seed", str(seed), "--output_dir", str(out)]
    if _stage1_epochs(argv) >= epochs and row.startswith("frih"):
        raise ValueError(f"{row}: stage1_epochs must be below the {epochs} epochs")
    return _train(argv)


def calibrate(out: Path, epochs: int = 4) -> dict[str, Any]:
    """Seconds per training epoch of each network, measured alone (seed 0, the median of epochs 2..n)."""
    import csv

    speeds = {}
    for row in ("issam", "idih", "frih", "frih_no_fpm"):
        run_dir = out / f"calibrate_{row}"
        run_row(row, VALIDATION_SEED, epochs, [], run_dir)
        with open(run_dir / "log.csv") as f:
            secs = [float(r["epoch_s"]) for r in csv.DictReader(f) if r.get("epoch_s")]
        speeds[row] = round(statistics.median(secs[1:]), 4)
    return {
        "seconds_per_epoch": speeds,
        "machine": f"{platform.node() or 'unknown'}; {platform.processor() or platform.machine()}; "
        f"{os.cpu_count()} logical CPUs; load average at the end {os.getloadavg()[0]:.2f}",
        "threads": 1,
        "torch": torch.__version__,
        "command": f"python -m frih.evidence --calibrate (train.py for {epochs} epochs per network, seed "
        f"{VALIDATION_SEED}, median epoch_s of epochs 2-{epochs})",
    }


def _metrics(m: dict[str, Any], name: str) -> dict[str, float]:
    return {k: round(float(m[f"{name}_{k}"]), 4) for k in METRICS}


def run_seed(
    seed: int, calibration: dict[str, float], frih_flags: list[str], out: Path, log=print
) -> dict[str, dict[str, float]]:
    """Every row at equal wall-clock ("time/...") and equal epochs ("epochs/...") on seed `seed`."""
    budget = budget_seconds(calibration, frih_flags)
    res: dict[str, dict[str, float]] = {}
    for row in TRAINED_ROWS:
        e_time = epochs_for(row, budget, calibration, frih_flags)
        for mode, epochs in (("time", e_time), ("epochs", EPOCHS)):
            if mode == "epochs" and epochs == e_time and f"time/{row}" in res:
                res[f"epochs/{row}"] = res[f"time/{row}"]
                if row == "frih":
                    res["epochs/frih_stage1"] = res["time/frih_stage1"]
                continue
            t0 = time.perf_counter()
            m = run_row(row, seed, epochs, frih_flags, out / f"seed{seed}" / f"{mode}_{row}")
            res[f"{mode}/{row}"] = _metrics(m, row if row in ("issam", "idih") else "frih")
            res[f"{mode}/composite"] = _metrics(m, "composite")
            if row == "frih":
                res[f"{mode}/frih_stage1"] = _metrics(m, "stage1")
            log(f"seed {seed} {mode} {row}: {epochs} epochs, {res[f'{mode}/{row}']} ({time.perf_counter() - t0:.0f} s)")
    return res


def validate(out: Path, calibration: dict[str, float], log=print) -> dict[str, Any]:
    """Measure the gradient ratio, train each FRIH candidate on the validation seed; the lowest fMSE wins."""
    diag = diagnose_gradients.main(
        diagnose_gradients.parse_args(
            [*BASE, *NETWORKS["frih"], "--seed", str(VALIDATION_SEED), "--data.synthetic_seed", str(VALIDATION_SEED)]
        )
    )["mean"]
    weight = float(f"{diag['ratio_rest_over_coarse']:.2g}")
    scores = {}
    for name in CANDIDATES:
        m = run_row("frih", VALIDATION_SEED, EPOCHS, candidate_flags(name, weight), out / f"validation_{name}")
        scores[name] = {"frih": _metrics(m, "frih"), "frih_stage1": _metrics(m, "stage1")}
        log(f"validation {name}: {scores[name]}")
    chosen = min(CANDIDATES, key=lambda n: scores[n]["frih"]["fmse"])
    return {
        "seed": VALIDATION_SEED,
        "selected_by": "frih fMSE after the FRIH budget",
        "gradient_ratio_at_init": {k: round(v, 4) for k, v in diag.items()},
        "balance_weight": weight,
        "candidates": {n: candidate_flags(n, weight) for n in CANDIDATES},
        "scores": scores,
        "chosen": chosen,
        "frih_flags": candidate_flags(chosen, weight),
    }


def build_record(
    seeds: list[int], per_seed: dict[int, dict[str, dict[str, float]]], calibration: dict[str, Any], val: dict
) -> dict[str, Any]:
    """The EVIDENCE.json record."""
    speeds = calibration["seconds_per_epoch"]
    budget = budget_seconds(speeds, val["frih_flags"])
    rows: dict[str, list[float]] = {}
    names = ["composite", *TRAINED_ROWS, "frih_stage1"]
    for name in names:
        rows[name] = [per_seed[s][f"time/{name}"]["fmse"] for s in seeds]
    for mode in ("time", "epochs"):
        for name in names:
            for k in METRICS:
                rows[f"{mode}/{name}/{k}"] = [per_seed[s][f"{mode}/{name}"][k] for s in seeds]
    epochs = {row: epochs_for(row, budget, speeds, val["frih_flags"]) for row in TRAINED_ROWS}
    return {
        "package": PACKAGE,
        "claim": "On real photographs (scikit-image/scikit-learn photos, iHarmony4-style colour transfer, unseen test "
        "photos), FRIH's final output has a lower fMSE than its iSSAM base trained alone for the same wall-clock "
        "budget; the fusion prediction module and the stage-1 training are part of the comparison",
        "metric": "fMSE",
        "higher_is_better": False,
        "method": "frih",
        "baselines": ["composite", "issam", "idih"],
        "ablations": ["frih_no_fpm", "frih_stage1"],
        "rows_format": "'<row>': fMSE at equal wall-clock; '<time|epochs>/<row>/<metric>': one value per seed, in "
        "the order of 'seeds' (fmse, mse lower is better; psnr in dB, higher is better)",
        "seeds": seeds,
        "rows": rows,
        "validation": val,
        "calibration": calibration,
        "epochs_equal_time": epochs,
        "epochs_equal_epochs": EPOCHS,
        "budget": f"equal wall-clock: {budget:.1f} s of training per row = FRIH {EPOCHS} epochs at the calibrated "
        f"seconds per epoch {speeds} (1 CPU thread); epochs per row {epochs}. Equal epochs: {EPOCHS} for every row. "
        "Data per seed: the real-photo set (64 px, 24 real crops per subset x 4 subsets), 32-px crops and "
        "evaluation, batch 8",
        "command": "python -m frih.evidence",
    }


def summary_table(record: dict[str, Any]) -> str:
    """Markdown: mean +- sd per row and comparison, and FRIH's paired difference to each row (fMSE)."""
    seeds = record["seeds"]
    lines = [
        "| row | comparison | epochs | fMSE | MSE | PSNR | fMSE: row - FRIH (paired, per seed) |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in ("time", "epochs"):
        for name in ("composite", *TRAINED_ROWS, "frih_stage1"):
            cells = []
            for k in METRICS:
                v = record["rows"][f"{mode}/{name}/{k}"]
                sd = statistics.stdev(v) if len(v) > 1 else 0.0
                cells.append(f"{statistics.mean(v):.2f} ± {sd:.2f}")
            frih = record["rows"][f"{mode}/frih/fmse"]
            diff = [a - b for a, b in zip(record["rows"][f"{mode}/{name}/fmse"], frih)]
            ep = (
                "-"
                if name == "composite"
                else str(
                    record["epochs_equal_time"].get(name.replace("_stage1", ""), EPOCHS) if mode == "time" else EPOCHS
                )
            )
            lines.append(
                f"| {name} | {'same wall-clock' if mode == 'time' else 'same epochs'} | {ep} | {' | '.join(cells)} | "
                f"{', '.join(f'{d:+.1f}' for d in diff)} |"
            )
    lines.append(f"\nseeds {seeds}")
    return "\n".join(lines)


def photo_grid(evidence_dir: Path, seed: int, out_png: Path, per_subset: int = 2, tile: int = 96) -> Path:
    """`harmonize.py` (low-resolution mode at the training resolution, 32 px, change applied at the native 64 px)
    on test composites of seed `seed`'s real-photo set with that seed's equal-time iSSAM and FRIH checkpoints, as a
    grid: composite | mask | iSSAM | FRIH | real image."""
    import shutil

    import numpy as np
    from PIL import Image

    from frih import harmonize
    from frih.data import composite_to_mask_name, composite_to_real_name
    from frih.synthetic import default_synthetic_dir

    root = default_synthetic_dir(f"frih_photos_s64_n24_seed{seed}")
    work = evidence_dir / f"grid_seed{seed}"
    (work / "input" / "composite_images").mkdir(parents=True, exist_ok=True)
    (work / "input" / "masks").mkdir(parents=True, exist_ok=True)
    picked = []
    for subset in ("HCOCO", "HAdobe5k", "HFlickr", "Hday2night"):
        for name in (root / subset / f"{subset}_test.txt").read_text().split()[:per_subset]:
            picked.append((subset, name))
            shutil.copy(root / subset / "composite_images" / name, work / "input" / "composite_images" / name)
            mask = composite_to_mask_name(name)
            shutil.copy(root / subset / "masks" / mask, work / "input" / "masks" / mask)
    outputs = {}
    for row in ("issam", "frih"):
        ckpt = evidence_dir / f"seed{seed}" / f"time_{row}" / "last.pt"
        argv = ["--checkpoint", str(ckpt), "--input_dir", str(work / "input"), "--output_dir", str(work / row)]
        harmonize.main(harmonize.parse_args([*argv, "--mode", "lowres", "--lowres_size", "32", "--device", "cpu"]))
        outputs[row] = work / row

    def load(path: Path, mode: str = "RGB") -> np.ndarray:
        img = Image.open(path).convert(mode).convert("RGB")
        return np.asarray(img.resize((tile, round(tile * img.height / img.width)), Image.Resampling.BICUBIC))

    rows = []
    for subset, name in picked:
        cells = [
            load(root / subset / "composite_images" / name),
            load(root / subset / "masks" / composite_to_mask_name(name), "L"),
            load(outputs["issam"] / (Path(name).stem + ".png")),
            load(outputs["frih"] / (Path(name).stem + ".png")),
            load(root / subset / "real_images" / composite_to_real_name(name)),
        ]
        h = min(c.shape[0] for c in cells)
        rows.append(np.concatenate([c[:h] for c in cells], axis=1))
    width = max(r.shape[1] for r in rows)
    canvas = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
    out_png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(out_png, optimize=True)
    return out_png


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=None, help=f"default {list(DEFAULT_SEEDS)}")
    p.add_argument("--output_dir", default=None, help="default runs/frih/evidence/<time>")
    p.add_argument("--calibrate", action="store_true", help="measure seconds per epoch again (else the committed)")
    p.add_argument("--committed", default=str(COMMITTED), help="the EVIDENCE.json to reuse and compare with")
    p.add_argument("--table", default=None, help="print the README table of an evidence.json and exit")
    p.add_argument("--grid", default=None, help="an evidence output folder: write the real-photo grid and exit")
    p.add_argument("--grid_seed", type=int, default=DEFAULT_SEEDS[0])
    p.add_argument("--grid_out", default=str(Path(__file__).resolve().parent / "docs" / "real_photo_grid.png"))
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the evidence; returns the record (also written to <output_dir>/evidence.json)."""
    if args.grid:
        print(photo_grid(Path(args.grid), args.grid_seed, Path(args.grid_out)))
        return {"grid": args.grid_out}
    if args.table:
        record = json.loads(Path(args.table).read_text())
        print(summary_table(record))
        return record
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
    else:
        out = make_run_dir(PACKAGE, "evidence")
    committed_path = Path(args.committed)
    committed = json.loads(committed_path.read_text()) if committed_path.is_file() else None
    if committed is not None and not args.calibrate:
        calibration = committed["calibration"]
        print(f"calibration from {committed_path}: {calibration['seconds_per_epoch']}")
    else:
        calibration = calibrate(out)
        print(f"calibration: {calibration['seconds_per_epoch']}")
    speeds = calibration["seconds_per_epoch"]
    if args.seeds is not None and committed is not None and not args.calibrate:
        val = committed["validation"]  # the committed choice: a reproduction reruns the seeds only
    else:
        val = validate(out, speeds)
    print(f"chosen stage-1 training: {val['chosen']} {val['frih_flags']}")
    seeds = list(args.seeds or DEFAULT_SEEDS)
    per_seed = {s: run_seed(s, speeds, val["frih_flags"], out) for s in seeds}
    record = build_record(seeds, per_seed, calibration, val)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    record["command"] = "python -m frih.evidence" + (f" --seeds {' '.join(map(str, seeds))}" if args.seeds else "")
    (out / "evidence.json").write_text(json.dumps(record, indent=1) + "\n")
    print(summary_table(record))
    print(f"wrote {out / 'evidence.json'} ({record['seconds']:.0f} s)")
    if committed is not None and args.seeds is not None:
        record["reproduced"] = compare_with_committed(record, committed)
    return record


def compare_with_committed(record: dict[str, Any], committed: dict[str, Any]) -> bool:
    """Print whether every reproduced seed's column equals the committed one exactly."""
    same = True
    for i, s in enumerate(record["seeds"]):
        if s not in committed["seeds"]:
            print(f"seed {s}: not in the committed file")
            continue
        j = committed["seeds"].index(s)
        diffs = [k for k, v in record["rows"].items() if committed["rows"].get(k, [None] * (j + 1))[j] != v[i]]
        same = same and not diffs
        print(f"seed {s}: {'identical to the committed column' if not diffs else f'differs in {diffs}'}")
    return same


if __name__ == "__main__":
    sys.exit(0 if main(parse_args()).get("reproduced", True) else 1)
