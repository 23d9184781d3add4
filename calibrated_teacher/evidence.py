"""Evidence that Calibrated Teacher does what the paper claims, on data that runs here (README, Evidence).

    python -m calibrated_teacher.evidence                 # seeds 1 2 3 (one process each) -> <run folder>/evidence.json
    python -m calibrated_teacher.evidence --seeds 2       # reproduces seed 2's column of EVIDENCE.json exactly (CPU)
    python -m calibrated_teacher.evidence --table calibrated_teacher/EVIDENCE.json    # print the README table
    python -m calibrated_teacher.evidence --merge a/evidence.json b/evidence.json --output_dir DIR   # join seeds

Data: the embedded synthetic COCO set (200 train / 24 val images, 6 categories) with 50 % of the train instances
dropped by the seeded sparse-split generator (``sparse_seed`` = the seed: each seed is another draw of the missing
annotations, another training order and augmentation); evaluation is COCO AP of the student on the val set with
full annotations. Detector: the embedded default's RetinaNet on the ImageNet MobileNetV2 (offline weights), every
row from the same initialisation, data and number of iterations.

Rows (the paper's ablation structure): ``supervised`` (sparse annotations only), ``teacher_student_raw`` (pseudo
boxes by the raw 0.4 threshold), ``calibrated`` (+ calibrated threshold 0.7), ``calibrated_fiou`` (+ FIoU, the
method). Up to ``branch_at`` every row is the same computation (merging is off before it: the released schedule's
burn-in, and the supervised baseline trains identically), so it runs once per seed and every row continues from
that state; ``tests/test_train.py`` checks that the teacher's inference before merging changes nothing.
Also recorded per seed: precision of the kept pseudo boxes (against the dropped annotations, same class, IoU >=
0.5) with the calibrated threshold and with one raw threshold keeping as many boxes; ECE (20 bins) of the teacher's
val detections before / after calibration.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from calibrated_teacher.config import PACKAGE
from calibrated_teacher.train import build_run, checkpoint_state, final_metrics, run_until
from calibrated_teacher.train import parse_args as train_args
from shared.distributed import init_distributed, seed_everything
from shared.evidence import map_in_processes, mean_sd
from shared.logger import RunLogger, make_run_dir, write_json

DEFAULT_SEEDS = (1, 2, 3)
BRANCH_AT, MAX_ITERS = 700, 2000
#: row -> command-line overrides of the embedded default.
ROWS: dict[str, list[str]] = {
    "supervised": ["--method", "supervised", "--teacher.fiou", "false"],
    "teacher_student_raw": ["--teacher.calibrate", "false", "--teacher.fiou", "false"],
    "calibrated": ["--teacher.fiou", "false"],
    "calibrated_fiou": [],
}
METHOD = "calibrated_fiou"


def _config(seed: int, row: str, threads: int, branch_at: int, max_iters: int):
    return train_args(
        [
            "--seed", str(seed), "--data.sparse_seed", str(seed), "--threads", str(threads),
            "--max_iters", str(max_iters), "--lr_steps", f"[{max_iters - 50}]",
            "--teacher.merge_start", str(branch_at), "--teacher.fiou_start", str(branch_at),
            "--eval_interval", "0", "--checkpoint_interval", "50", "--tensorboard", "false", "--log_interval", "0",
            *ROWS[row],
        ]
    )  # fmt: skip


def run_seed(
    seed: int, out_dir: Path, threads: int, branch_at: int = BRANCH_AT, max_iters: int = MAX_ITERS
) -> dict[str, dict[str, Any]]:
    """Every row of one seed: the shared part to ``branch_at``, then each row to ``max_iters`` (``threads`` torch
    threads in this process)."""
    torch.set_num_threads(threads)
    ctx = init_distributed("cpu")
    logger = RunLogger(out_dir / f"seed{seed}", tensorboard=False)
    seed_everything(seed)
    shared_run = build_run(_config(seed, METHOD, threads, branch_at, max_iters), ctx, logger)
    run_until(shared_run, branch_at, logger)
    scores, correct = shared_run.method.buffer.window_data(branch_at - 1)
    at_branch = {  # the teacher's detections >= ori_thr that overlap a sparse annotation, last window before the branch
        "window_detections": len(scores),
        "window_correct": int(correct.sum()),
        "calibrator_fitted": shared_run.method.calibrator.fitted,
    }
    logger.info(f"seed {seed} at the branch (iteration {branch_at}): {at_branch}")
    # a deep copy per row: Optimizer.load_state_dict keeps the given momentum tensors, so a shared state would be
    # updated in place by the first row and leak into the next ones
    state = copy.deepcopy(checkpoint_state(shared_run))
    results = {}
    for row in ROWS:
        t0 = time.perf_counter()
        run = build_run(_config(seed, row, threads, branch_at, max_iters), ctx, logger, resume=copy.deepcopy(state))
        run_until(run, max_iters, logger)
        results[row] = final_metrics(run, out_dir / f"seed{seed}" if row == METHOD else None)
        results[row]["at_branch"] = at_branch
        logger.info(f"seed {seed} {row}: AP {100 * results[row]['AP']:.2f} ({time.perf_counter() - t0:.0f} s)")
    logger.close()
    return results


def run_seeds(
    seeds: Sequence[int], out_dir: Path, threads: int, branch_at: int, max_iters: int, jobs: int = 0
) -> dict[int, dict[str, dict[str, Any]]]:
    """:func:`run_seed` for every seed, ``jobs`` at a time in separate processes (0: all at once; 1: in this
    process, one after the other). Each seed's result does not depend on the process it runs in (CPU, seeded)."""
    workers = len(seeds) if jobs <= 0 else jobs
    results = map_in_processes(run_seed, [(s, out_dir, threads, branch_at, max_iters) for s in seeds], workers)
    return dict(zip(seeds, results))


def table(record: dict[str, Any]) -> str:
    """The README table: AP (x100) per row, mean ± sd, paired difference to the method, wins of the method."""
    rows, method = record["rows"], record["method"]
    lines = ["| row | " + " | ".join(f"seed {s}" for s in record["seeds"]) + " | mean ± sd | method − row (paired) |"]
    lines.append("|---" * (len(record["seeds"]) + 3) + "|")
    for name, values in rows.items():
        v = [100 * x for x in values]
        diff = [100 * (a - b) for a, b in zip(rows[method], values)]
        paired = "" if name == method else f"{mean_sd(diff)} ({sum(d > 0 for d in diff)}/{len(diff)} seeds > 0)"
        lines.append(f"| {name} | " + " | ".join(f"{x:.2f}" for x in v) + f" | {mean_sd(v)} | {paired} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m calibrated_teacher.evidence", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument("--output_dir", default=None, help="default runs/calibrated_teacher/evidence/<time>")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=0, help="seeds run at once in separate processes (0: one per seed)")
    p.add_argument("--branch_at", type=int, default=BRANCH_AT, help="iterations shared by every row (merge_start)")
    p.add_argument("--max_iters", type=int, default=MAX_ITERS)
    p.add_argument("--table", default=None, help="print the table of an evidence.json and exit")
    p.add_argument("--merge", nargs="+", default=None, help="join the seeds of evidence files run separately")
    return p.parse_args(argv)


def merge(paths: Sequence[str | Path]) -> dict[str, Any]:
    """One record from evidence files of the same rows run for different seeds (e.g. one process per seed)."""
    records = [json.loads(Path(p).read_text()) for p in paths]
    record = dict(records[0])
    for other in records[1:]:
        if set(other["rows"]) != set(record["rows"]) or set(other["seeds"]) & set(record["seeds"]):
            raise ValueError(f"cannot merge: other rows or repeated seeds ({other['seeds']} and {record['seeds']})")
        record["seeds"] = record["seeds"] + other["seeds"]
        record["rows"] = {k: record["rows"][k] + other["rows"][k] for k in record["rows"]}
        record["extra"] = {**record["extra"], **other["extra"]}
    record["budget"] = "; ".join(r["budget"] for r in records)
    seeds = "" if record["seeds"] == list(DEFAULT_SEEDS) else f" --seeds {' '.join(map(str, record['seeds']))}"
    record["command"] = f"python -m calibrated_teacher.evidence{seeds}"
    return record


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run every seed (or merge files) and write ``evidence.json``; returns the record."""
    if args.table:
        record = json.loads(Path(args.table).read_text())
        print(table(record))
        return record
    if args.merge:
        record = merge(args.merge)
        out = Path(args.output_dir or ".")
        write_json(record, out / "evidence.json")
        print(table(record))
        return record
    out = Path(args.output_dir) if args.output_dir else make_run_dir(PACKAGE, "evidence")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    per_seed = run_seeds(args.seeds, out, args.threads, args.branch_at, args.max_iters, args.jobs)
    extra: dict[str, Any] = {}
    for s, res in per_seed.items():
        cal = res[METHOD]
        extra[str(s)] = {
            row: {"teacher_AP": r["teacher"]["AP"], "pseudo_boxes": r["pseudo_boxes"], "calibration": r["calibration"]}
            for row, r in res.items()
        }
        extra[str(s)]["kept_ratio"] = cal["kept_ratio"]
        extra[str(s)]["at_branch"] = cal["at_branch"]
    record = {
        "package": PACKAGE,
        "claim": (
            "On a synthetic COCO set with 50 % of the train annotations dropped, teacher-student training with "
            "calibrated pseudo-label thresholds and FIoU beats supervised training on the sparse labels and the "
            "raw-threshold teacher-student in student COCO AP (full val annotations); calibrated thresholds keep "
            "pseudo boxes of higher precision than one raw threshold keeping as many; calibration lowers the ECE."
        ),
        "metric": "AP",
        "higher_is_better": True,
        "method": METHOD,
        "baselines": [r for r in ROWS if r != METHOD],
        "seeds": list(args.seeds),
        "rows": {row: [per_seed[s][row]["AP"] for s in args.seeds] for row in ROWS},
        "extra": extra,
        "budget": (
            f"{args.max_iters} iterations x 2 images for every row (shared first {args.branch_at}, merging off "
            "before it), "
            "RetinaNet MobileNetV2-FPN P2-P7 (ImageNet, GroupNorm head), 1 CPU thread; "
            f"{time.perf_counter() - t0:.0f} s for {len(args.seeds)} seed(s) on this machine"
        ),
        "command": "python -m calibrated_teacher.evidence"
        + ("" if args.seeds == list(DEFAULT_SEEDS) else f" --seeds {' '.join(map(str, args.seeds))}"),
    }
    write_json(record, out / "evidence.json")
    print(table(record))
    print(f"wrote {out / 'evidence.json'}")
    return record


if __name__ == "__main__":
    main(parse_args())
