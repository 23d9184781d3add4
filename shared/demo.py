"""`make demo`: train + evaluate every package on its embedded synthetic data, then print a summary table.

For each package: `python -m <pkg>.train --output_dir runs/demo/<pkg>` (its configs/default.yaml), then
`python -m <pkg>.eval --checkpoint runs/demo/<pkg>/last.pt --output_dir runs/demo/<pkg>/eval`, and the metrics its
`DEMO_INFO["metrics"]` names are read from `eval/metrics.json`. A failing package does not stop the others; the
exit code is non-zero when any failed. A second `make demo` replaces the first one's `runs/demo/<pkg>` folders.

Each package's `__init__.py` declares::

    DEMO_INFO = {"task": "...", "dataset": "synthetic ... in the ... layout", "metrics": ["top1", "ema_top1"]}
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class DemoResult:
    package: str
    task: str
    dataset: str
    metrics: str
    seconds: float
    ok: bool


def _stream(cmd: list[str], log_path: Path, prefix: str) -> int:
    """Run `cmd`, echoing its output with a prefix and keeping a copy in `log_path`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (
        open(log_path, "a") as log,
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc,
    ):
        log.write("$ " + " ".join(cmd) + "\n")
        for line in proc.stdout:
            log.write(line)
            print(f"[{prefix}] {line}", end="", flush=True)
        return proc.wait()


def _format(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_package(package: str, out_root: Path) -> DemoResult:
    """Train then evaluate one package with its default config."""
    info = getattr(importlib.import_module(package), "DEMO_INFO", {})
    out = out_root / package
    if (out / "demo.log").is_file():  # an earlier demo's folder: start afresh (a train.py run would refuse it)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "demo.log"
    log_path.write_text("")
    t0 = time.perf_counter()
    ok = _stream([sys.executable, "-m", f"{package}.train", "--output_dir", str(out)], log_path, package) == 0
    ok = (
        ok
        and _stream(
            [
                sys.executable,
                "-m",
                f"{package}.eval",
                "--checkpoint",
                str(out / "last.pt"),
                "--output_dir",
                str(out / "eval"),
            ],
            log_path,
            package,
        )
        == 0
    )
    seconds = time.perf_counter() - t0
    summary = f"FAILED, see {log_path}"
    if ok:
        metrics_path = out / "eval" / "metrics.json"
        try:
            metrics = json.loads(metrics_path.read_text())
            summary = ", ".join(f"{k} {_format(metrics[k])}" for k in info.get("metrics", []))
        except (OSError, ValueError, KeyError) as err:
            ok, summary = False, f"FAILED: {metrics_path}: {err!r}"
    return DemoResult(package, info.get("task", "?"), info.get("dataset", "?"), summary, seconds, ok)


def format_table(results: list[DemoResult]) -> str:
    """A Markdown table of the demo results."""
    header = ("package", "task", "embedded dataset", "main metric(s)", "wall time")
    rows = [(r.package, r.task, r.dataset, r.metrics, f"{r.seconds:.0f} s") for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="*", help="packages to run (default: every package present)")
    parser.add_argument("--out", default=str(REPO / "runs" / "demo"), help="output root")
    args = parser.parse_args(argv)
    packages = args.packages
    if not packages:
        print("no paper package in this checkout yet: nothing to demo")
        return 0
    results = [run_package(p, Path(args.out)) for p in packages]
    print()
    print(format_table(results))
    failed = [r.package for r in results if not r.ok]
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
