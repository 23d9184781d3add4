"""Evidence that SLEEG works on the embedded data: SLEEG vs energy vs max-softmax, and the paper's ablations.

    python -m energy_anomaly_seg.evidence                 # validation draw + the reported seeds -> evidence.json
    python -m energy_anomaly_seg.evidence --seeds 2       # one seed again; compared with the committed column
    python -m energy_anomaly_seg.evidence --table energy_anomaly_seg/EVIDENCE.json   # the README table

Per seed S (data draw ``synthetic.seed S`` and training seed ``seed S``), everything else is
``configs/default.yaml`` (the embedded default, one CPU thread):

1. the small DeepLabv3 is trained once (``train.py --optim.iters 0``: the segmentor phase only);
2. every row resumes from that segmentor checkpoint (``--resume``; by the exact-resume property each row equals an
   uninterrupted ``python train.py`` run with the same flags) and trains the OoD head with its own objective:

   ==================  ==========================================================================================
   ``sleeg``           the default: TAE + TORE, convex pastes, refinement (JEM warm-up, then A(x) of eq. 9)
   ``tae_only``        no TORE term (Table 3), tested with log p_a(o=1|z) = log_softmax(h)[1]
   ``tore_only``       no TAE term (Table 3), tested with log p_t(o=1|z) = h[1] + JEM (+1)
   ``convex_no_refine``  Table 4: convex pastes without refinement
   ``square_refine``     Table 4: square (rectangular) pastes with refinement
   ``square_no_refine``  Table 4: square pastes without refinement
   ``released_refine``   refinement on JEM for the whole run (the released training forward), otherwise ``sleeg``
   ==================  ==========================================================================================

   The baselines ``energy`` (JEM) and ``max_softmax`` read the frozen segmentor only, so their values come from the
   ``sleeg`` row's evaluation (the same segmentor, the same test set, the same test-time scales and flip).

The head learning rate is chosen on a validation draw (``--validation-seed``, not reported) among
``--lr-grid`` by SLEEG AP; the reported seeds use the winner. ``rows`` holds one value per reported seed under
``<row>/<metric>`` for the metrics AP, FPR95 and AUROC (percent) and, for ``sleeg``, the mechanism's logged
quantities ``kept_after_refine`` and ``pasted_frac`` (last logged iteration); ``segmentor/mIoU`` is the frozen
segmentor's mIoU on the synthetic validation scenes. Runs are deterministic on CPU: ``--seeds S`` reproduces seed S's
column of the committed ``EVIDENCE.json`` exactly (it is checked at the end of such a run).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from energy_anomaly_seg import train
from energy_anomaly_seg.config import PACKAGE
from shared import evidence
from shared.evidence import committed_mismatches as compare_with_committed
from shared.evidence import mean_sd

COMMITTED = Path(__file__).resolve().parent / "EVIDENCE.json"
DEFAULT_SEEDS = (1, 2, 3, 4, 5)
VALIDATION_SEED = 0
LR_GRID = (0.01, 0.02, 0.05)
METRICS = ("AP", "FPR95", "AUROC")
HIGHER_IS_BETTER = {"AP": True, "FPR95": False, "AUROC": True}
BASELINES = {"energy": "energy", "max_softmax": "msp"}  # row name -> score method of eval.py
ROWS: dict[str, list[str]] = {
    "sleeg": [],
    "tae_only": ["--objective.tore_weight", "0.0", "--eval.score_weight", "0.0"],
    "tore_only": ["--objective.tae_weight", "0.0", "--eval.score_formula", "code", "--eval.score_weight", "1.0"],
    "convex_no_refine": ["--no-objective.refine"],
    "square_refine": ["--anomalies.polygon", "square"],
    "square_no_refine": ["--anomalies.polygon", "square", "--no-objective.refine"],
    "released_refine": ["--objective.refine_score", "released"],
}
ABLATIONS = [name for name in ROWS if name != "sleeg"]
BUDGET = (
    "per seed: one small DeepLabv3 (deeplabv3_r18_d8_tiny, random init) trained 200 iterations at batch 8 "
    "(64x128 crops of 160 synthetic 256x128 scenes), frozen and shared by all rows; every trained row: 250 "
    "OoD-head iterations at batch 8; evaluation on 24 synthetic Fishyscapes-Static-format images (256x128), "
    "4 scales x flip, pixels pooled; CPU, 1 torch thread; same iterations for every row (baselines: no "
    "training beyond the shared segmentor)"
)


def _train(argv: list[str]) -> dict:
    return train.main(train.parse_args(argv))


def _last_logged(run_dir: Path, keys: Sequence[str]) -> dict[str, float]:
    rows = [r for r in csv.DictReader((run_dir / "log.csv").open()) if r.get("phase") == "ood_head"]
    return {k: float(rows[-1][k]) for k in keys}


def train_segmentor_once(seed: int, out_dir: Path, base_args: Sequence[str] = ()) -> Path:
    """The seed's frozen segmentor: ``train.py --optim.iters 0`` stops after the segmentor phase; its ``last.pt``
    (phase 'segmentor') is what every row of the seed resumes from."""
    seg_dir = out_dir / f"seed{seed}" / "segmentor"
    _train([*_common(seed, base_args), "--optim.iters", "0", "--eval.datasets", "--output_dir", str(seg_dir)])
    return seg_dir / "last.pt"


def _common(seed: int, base_args: Sequence[str]) -> list[str]:
    return [*base_args, "--seed", str(seed), "--synthetic.seed", str(seed), "--eval.vis_images", "0"]


def run_row(
    seed: int, row: str, segmentor: Path, run_dir: Path, lr: float, base_args: Sequence[str] = ()
) -> dict[str, float]:
    """Train and evaluate one row on the seed's segmentor; ``{"<row>/<metric>": value}`` (+ the baselines and the
    mechanism's logged quantities for ``sleeg``)."""
    metrics = _train(
        [
            *_common(seed, base_args),
            "--optim.lr",
            str(lr),
            *ROWS[row],
            "--resume",
            str(segmentor),
            "--output_dir",
            str(run_dir),
        ]
    )
    result = {f"{row}/{m}": round(metrics[f"sleeg_{m}"], 4) for m in METRICS}
    if row == "sleeg":
        result["segmentor/mIoU"] = round(metrics["segmentor_mIoU"], 4)
        for baseline, method in BASELINES.items():
            result.update({f"{baseline}/{m}": round(metrics[f"{method}_{m}"], 4) for m in METRICS})
        logged = _last_logged(run_dir, ("kept_after_refine", "pasted_frac"))
        result.update({f"sleeg/{k}": round(v, 4) for k, v in logged.items()})
    return result


def run_seed(
    seed: int, out_dir: Path, lr: float, rows: Sequence[str] = tuple(ROWS), base_args: Sequence[str] = ()
) -> dict[str, float]:
    """Train the shared segmentor and every row for one seed; returns ``{"<row>/<metric>": value}``."""
    segmentor = train_segmentor_once(seed, out_dir, base_args)
    result: dict[str, float] = {}
    for row in rows:
        result.update(run_row(seed, row, segmentor, out_dir / f"seed{seed}" / row, lr, base_args))
    return result


def select_lr(seed: int, out_dir: Path, grid: Sequence[float], base_args: Sequence[str] = ()) -> dict:
    """SLEEG AP on the validation draw (one segmentor) for each head learning rate of `grid`; the best one wins."""
    segmentor = train_segmentor_once(seed, out_dir, base_args)
    scores = {
        str(lr): run_row(seed, "sleeg", segmentor, out_dir / f"seed{seed}" / f"sleeg_lr{lr}", lr, base_args)["sleeg/AP"]
        for lr in grid
    }
    chosen = max(grid, key=lambda lr: scores[str(lr)])
    return {
        "seed": seed,
        "selected_by": "sleeg/AP",
        "optim.lr": {"grid": list(grid), "sleeg/AP": scores, "chosen": chosen},
    }


def build_record(
    seeds: Sequence[int], per_seed: dict[int, dict[str, float]], validation: dict, command: str, seconds: float
) -> dict:
    ablations = [name for name in ABLATIONS if f"{name}/AP" in per_seed[seeds[0]]]
    return {
        "package": PACKAGE,
        "claim": "SLEEG's OoD head (TAE + TORE trained on self-generated pastes with likelihood-guided refinement) "
        "segments anomalies with a higher AP than the frozen segmentor's energy (JEM) and max-softmax "
        "scores; the paper's ablations (TAE only, TORE only, square vs convex pastes, with and without "
        "refinement) are recorded alongside",
        "metric": "AP",
        "higher_is_better": True,
        "method": "sleeg",
        "baselines": list(BASELINES),
        "ablations": ablations,
        "row_metrics": {
            "AP": "percent, higher is better",
            "FPR95": "percent, lower is better",
            "AUROC": "percent, higher is better",
        },
        **evidence.seed_rows(seeds, per_seed, validation, BUDGET, seconds, command),
    }


def format_table(record: dict) -> str:
    """Markdown: mean ± sd over the seeds per row and metric, and SLEEG's paired differences (wins / seeds)."""
    rows, seeds = record["rows"], record["seeds"]
    names = [record["method"], *record["baselines"], *record.get("ablations", [])]
    lines = [
        f"| row | {' | '.join(METRICS)} | paired Δ AP vs row (SLEEG − row) | SLEEG AP higher |",
        "|---|" + "---|" * (len(METRICS) + 2),
    ]
    sleeg_ap = rows[f"{record['method']}/AP"]
    for name in names:
        cells = [mean_sd(rows[f"{name}/{m}"]) for m in METRICS]
        if name == record["method"]:
            diff, wins = "", ""
        else:
            deltas = [a - b for a, b in zip(sleeg_ap, rows[f"{name}/AP"])]
            diff = mean_sd(deltas)
            wins = f"{sum(d > 0 for d in deltas)} / {len(seeds)}"
        lines.append(f"| {name} | {' | '.join(cells)} | {diff} | {wins} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = evidence.evidence_parser(
        __doc__.splitlines()[0],
        DEFAULT_SEEDS,
        VALIDATION_SEED,
        seeds_help=f"reported seeds (default {list(DEFAULT_SEEDS)}, which also writes {COMMITTED.name})",
    )
    parser.add_argument("--lr-grid", type=float, nargs="+", default=list(LR_GRID))
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="skip the validation draw and use this head lr (default with --seeds: the committed record's choice)",
    )
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    args = evidence.parse_evidence_args(parser, argv, PACKAGE)
    if args.table:
        return evidence.print_table(args.table, format_table)
    full = args.seeds is None and args.lr is None and args.rows == list(ROWS) and not args.train_args
    seeds = evidence.reported_seeds(parser, args, DEFAULT_SEEDS)
    out = evidence.evidence_dir(args.output_dir, PACKAGE)
    t0 = time.perf_counter()
    if args.lr is not None:
        validation = {"optim.lr": {"chosen": args.lr}, "selected_by": "--lr (given)"}
    elif args.seeds is not None and COMMITTED.is_file():
        validation = json.loads(COMMITTED.read_text())["validation"]
        print(f"head lr {validation['optim.lr']['chosen']} from the committed record's validation draw")
    else:
        validation = select_lr(args.validation_seed, out / "validation", args.lr_grid, args.train_args)
        print(
            f"validation draw (seed {args.validation_seed}): SLEEG AP {validation['optim.lr']['sleeg/AP']} -> "
            f"head lr {validation['optim.lr']['chosen']}"
        )
    lr = validation["optim.lr"]["chosen"]
    per_seed = {}
    for seed in seeds:
        start = time.perf_counter()
        per_seed[seed] = run_seed(seed, out, lr, args.rows, args.train_args)
        print(
            f"seed {seed} ({time.perf_counter() - start:.0f} s): "
            + ", ".join(
                f"{name} {per_seed[seed][f'{name}/AP']:.2f}"
                for name in ["sleeg", *BASELINES, *args.rows[1:]]
                if f"{name}/AP" in per_seed[seed]
            )
        )
    command = "python -m energy_anomaly_seg.evidence" + ("" if not argv else " " + " ".join(argv))
    record = build_record(seeds, per_seed, validation, command, time.perf_counter() - t0)
    (out / "evidence.json").write_text(json.dumps(record, indent=2) + "\n")
    if "sleeg/AP" in record["rows"]:
        print(format_table(record))
    print(f"wrote {out / 'evidence.json'} ({record['seconds']:.0f} s)")
    if full:
        COMMITTED.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {COMMITTED}")
    elif COMMITTED.is_file():
        mismatches = compare_with_committed(record, json.loads(COMMITTED.read_text()))
        shared_seeds = sorted(set(seeds) & set(json.loads(COMMITTED.read_text())["seeds"]))
        print(
            f"reproduction of the committed seeds {shared_seeds}: "
            + ("identical" if not mismatches else f"{len(mismatches)} differences:\n" + "\n".join(mismatches))
        )
        record["reproduction_mismatches"] = mismatches
    return record


if __name__ == "__main__":
    main()
