"""Does SANM help DivideMix? CE, DivideMix, DivideMix + ANM (masking + modulation) and DivideMix + SANM (+ L_rec)
on real handwritten digits with symmetric label noise, identical budgets, several seeds.  Writes evidence.json.

    python -m anm.evidence                              # digits, sym 50 % and 80 %, seeds 1 2 3 (README, Evidence)
    python -m anm.evidence --seeds 2                    # reproduces seed 2's column of anm/EVIDENCE.json exactly
    python -m anm.evidence --settings digits_sym50 synthetic_sym50 --out runs/anm/evidence.json
    python -m anm.evidence --settings digits_sym50 --arms dividemix_sanm --seeds 3 --out s3.json   # one run
    python -m anm.evidence --merge a.json b.json --out anm/EVIDENCE.json   # join runs of disjoint (setting, arm, seed)

Data: scikit-learn's digits (1 797 real 8 x 8 images; 1 197 train / 600 test) written in the CIFAR-10 pickle
layout (shared.noisy.write_digits_cifar, bilinear) and read by the real loader at 16 px; ``synthetic_*`` settings
use the synthetic CIFAR-10 set (2 000 train / 500 test, 16 px). Noise: DivideMix protocol, drawn with the run's seed.
Every arm: the same two DigitsCNN networks (``digits_cnn_flat``: width 32, the 4 x 4 x 128 map flattened into the
linear head, same initialisation per seed), the same views (no augmentation: the image itself, no crop, no flip),
SGD 0.02 momentum 0.9 without weight decay, 40 epochs with 5 warm-up epochs (batch 64), lr / 10 at epoch 30,
lambda_u 25 ramped over 8 epochs, alpha 4, T 0.5, p_threshold 0.5; the two-network ensemble is tested after the
last epoch. The CE arm trains both networks with CE on the noisy labels for all 40 epochs. Why this network and no
augmentation: on 1 197 images the earlier average-pooled CNN with crop views could not fit the noisy labels (CE at
50 % noise: 91 % test accuracy after 24 epochs, 93.8 % and training CE loss 1.55 after 60), so there was no
memorisation for a noisy-label method to prevent; the flattened head without augmentation fits every noisy label
within ~30 epochs, as a ResNet-18 does on CIFAR in the papers' 300-epoch schedule (CE's last-epoch accuracy falls
to 65 %). The schedule was chosen on seed 0 (not reported: CE 65.3, DivideMix 98.2, SANM 98.5 at sym 50 %);
SANM's own settings are the paper's (ratios, recon weight 0.02), not tuned.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

ARMS = {
    "ce": ["--sanm.method", "ce"],
    "dividemix": ["--sanm.method", "dividemix"],
    "dividemix_anm": ["--sanm.method", "sanm", "--sanm.reconstruction", "false"],
    "dividemix_sanm": ["--sanm.method", "sanm"],
}
SETTINGS = {
    "digits_sym50": ["--data.dataset", "digits", "--data.noise_rate", "0.5"],
    "digits_sym80": ["--data.dataset", "digits", "--data.noise_rate", "0.8"],
    "synthetic_sym50": ["--data.dataset", "cifar10", "--data.noise_rate", "0.5"],
    "synthetic_sym80": ["--data.dataset", "cifar10", "--data.noise_rate", "0.8"],
}
SCHEDULE = [
    "--data.image_size", "16", "--data.views", "weak", "--data.crop_padding", "0", "--data.hflip", "false",
    "--data.synthetic_train_size", "2000", "--data.synthetic_test_size", "500",
    "--model.name", "digits_cnn_flat", "--model.width", "32",
    "--dividemix.epochs", "40", "--dividemix.warmup_epochs", "5", "--dividemix.warmup_batch_size", "64",
    "--dividemix.batch_size", "64", "--dividemix.lr", "0.02", "--dividemix.lr_decay_epoch", "30",
    "--dividemix.weight_decay", "0", "--dividemix.lambda_u", "25", "--dividemix.rampup_length", "8",
    "--device", "cpu", "--threads", "1", "--tensorboard", "false",
]  # fmt: skip
DETAIL_KEYS = ("last_epoch_mask_ratio", "last_epoch_l_rec", "last_epoch_labeled", "last_epoch_labeled_precision")


def run_one(setting: str, arm: str, seed: int, root: Path) -> dict[str, Any]:
    """Train one arm on one setting and seed; returns the run's metrics."""
    from anm.train import main, parse_args

    argv = ["-c", str(Path(__file__).parent / "configs" / "default.yaml"), *SCHEDULE, *SETTINGS[setting], *ARMS[arm]]
    argv += ["--seed", str(seed), "--data.noise_seed", str(seed), "--output_dir", str(root / f"{setting}_{arm}_{seed}")]
    return main(parse_args(argv))


def summarise(record: dict[str, Any]) -> dict[str, Any]:
    """Mean, sd and the paired differences (SANM - DivideMix, ANM - DivideMix, DivideMix - CE) per setting."""
    summary: dict[str, Any] = {}
    rows = record["rows"]
    for setting in {name.split("/")[0] for name in rows}:
        entry = {
            arm: {
                "mean": statistics.mean(rows[f"{setting}/{arm}"]),
                "sd": statistics.stdev(rows[f"{setting}/{arm}"]) if len(rows[f"{setting}/{arm}"]) > 1 else 0.0,
            }
            for arm in ARMS
            if f"{setting}/{arm}" in rows
        }
        for a, b in (("dividemix_sanm", "dividemix"), ("dividemix_anm", "dividemix"), ("dividemix", "ce")):
            if f"{setting}/{a}" in rows and f"{setting}/{b}" in rows:
                diffs = [x - y for x, y in zip(rows[f"{setting}/{a}"], rows[f"{setting}/{b}"])]
                entry[f"{a}_minus_{b}"] = {"per_seed": diffs, "mean": statistics.mean(diffs)}
        summary[setting] = entry
    return summary


def run(settings: Sequence[str], seeds: Sequence[int], arms: Sequence[str] = tuple(ARMS)) -> dict[str, Any]:
    """Every (setting, arm, seed) run; the evidence record (the schema of CONTRIBUTING.md section 9, plus details)."""
    rows: dict[str, list[float]] = {}
    details: dict[str, list[dict[str, float]]] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="anm_evidence_") as tmp:
        for setting in settings:
            for arm in arms:
                for seed in seeds:
                    metrics = run_one(setting, arm, seed, Path(tmp))
                    rows.setdefault(f"{setting}/{arm}", []).append(round(float(metrics["test_acc_last"]), 4))
                    details.setdefault(f"{setting}/{arm}", []).append(
                        {k: round(float(metrics[k]), 4) for k in DETAIL_KEYS if k in metrics}
                    )
    record = {
        "package": "anm",
        "claim": "DivideMix + SANM (adversarial noisy masking, label modulation, reconstruction) at least matches "
        "DivideMix, and DivideMix beats CE, on real digits with symmetric label noise",
        "metric": "test accuracy (%) of the two-network ensemble after the last epoch",
        "higher_is_better": True,
        "method": "dividemix_sanm",
        "baselines": ["ce", "dividemix", "dividemix_anm"],
        "seeds": list(seeds),
        "rows": rows,
        "budget": "identical per arm: 40 epochs (5 warm-up), batch 64, same networks, initialisations and views; "
        "see anm/evidence.py",
        "command": "python -m anm.evidence",
        "settings": list(settings),
        "details": details,
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    record["summary"] = summarise(record)
    return record


def merge(paths: Sequence[str]) -> dict[str, Any]:
    """Join evidence files of disjoint (setting, arm, seed) runs: each row gets one value per seed of the union of the
    files' seeds, in seed order; a run present twice, or a row missing a seed, is an error."""
    records = [json.loads(Path(p).read_text()) for p in paths]
    seeds = sorted({s for r in records for s in r["seeds"]})
    values: dict[str, dict[int, tuple[float, dict[str, float]]]] = {}
    for path, r in zip(paths, records):
        for key, row in r["rows"].items():
            for seed, value, detail in zip(r["seeds"], row, r["details"][key], strict=True):
                if seed in values.setdefault(key, {}):
                    raise ValueError(f"{path}: {key} seed {seed} is also in another file")
                values[key][seed] = (value, detail)
    for key, by_seed in values.items():
        missing = [s for s in seeds if s not in by_seed]
        if missing:
            raise ValueError(f"{key}: no run for seeds {missing} in {list(paths)}")
    out = dict(records[0])
    out["seeds"] = seeds
    out["rows"] = {k: [values[k][s][0] for s in seeds] for k in sorted(values, key=_row_order)}
    out["details"] = {k: [values[k][s][1] for s in seeds] for k in out["rows"]}
    out["settings"] = [s for s in SETTINGS if any(k.startswith(s + "/") for k in values)]
    out["wall_time_s"] = sum(r["wall_time_s"] for r in records)
    out["summary"] = summarise(out)
    return out


def _row_order(key: str) -> tuple[int, int]:
    setting, arm = key.split("/")
    return list(SETTINGS).index(setting), list(ARMS).index(arm)


def markdown_table(record: dict[str, Any]) -> str:
    """The README's results table: mean ± sd per arm and setting, per-seed values, paired differences."""
    lines = [
        "| setting | arm | mean ± sd | per seed (" + ", ".join(map(str, record["seeds"])) + ") |",
        "|---|---|---|---|",
    ]
    for setting in record["settings"]:
        for arm in ARMS:
            values = record["rows"].get(f"{setting}/{arm}")
            if values:
                stats = record["summary"][setting][arm]
                seeds = ", ".join(f"{v:.2f}" for v in values)
                lines.append(f"| {setting} | {arm} | {stats['mean']:.2f} ± {stats['sd']:.2f} | {seeds} |")
        for key, entry in record["summary"][setting].items():
            if "_minus_" in key:
                seeds = ", ".join(f"{v:+.2f}" for v in entry["per_seed"])
                lines.append(f"| {setting} | {key.replace('_minus_', ' − ')} | {entry['mean']:+.2f} | {seeds} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--settings", nargs="+", default=["digits_sym50", "digits_sym80"], choices=sorted(SETTINGS))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="a subset of the arms")
    parser.add_argument("--merge", nargs="+", default=None, help="evidence files to join instead of running")
    parser.add_argument("--out", default="evidence.json")
    parser.add_argument("--table", default=None, help="print the README table of this evidence file and exit")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.table:
        table = markdown_table(json.loads(Path(args.table).read_text()))
        print(table)
        return {"table": table}
    torch.set_num_threads(1)
    record = merge(args.merge) if args.merge else run(args.settings, args.seeds, args.arms)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    for setting, entry in sorted(record["summary"].items()):
        print(setting, {k: round(v["mean"], 2) for k, v in entry.items()})
    print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main(parse_args())
