import re
import sys

from shared.demo import main

TRAIN = """
import argparse, json, pathlib
p = argparse.ArgumentParser(); p.add_argument("--output_dir"); a = p.parse_args()
out = pathlib.Path(a.output_dir); out.mkdir(parents=True, exist_ok=True); (out / "last.pt").write_text("x")
print("trained")
"""
EVAL = """
import argparse, json, pathlib
p = argparse.ArgumentParser(); p.add_argument("--checkpoint"); p.add_argument("--output_dir"); a = p.parse_args()
assert pathlib.Path(a.checkpoint).is_file()
out = pathlib.Path(a.output_dir); out.mkdir(parents=True, exist_ok=True)
(out / "metrics.json").write_text(json.dumps({"acc": 0.75, "other": 1}))
"""


def make_package(root, name, train, evaluate):
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text('DEMO_INFO = {"task": "toy task", "dataset": "toy set", "metrics": ["acc"]}\n')
    (pkg / "train.py").write_text(train)
    (pkg / "eval.py").write_text(evaluate)


def test_demo_reports_every_package_and_fails_if_one_fails(tmp_path, monkeypatch, capsys):
    code_root = tmp_path / "code"
    code_root.mkdir()
    make_package(code_root, "demo_good_pkg", TRAIN, EVAL)
    make_package(code_root, "demo_bad_pkg", "raise SystemExit('boom')\n", EVAL)
    monkeypatch.setenv("PYTHONPATH", str(code_root))
    monkeypatch.syspath_prepend(str(code_root))
    code = main(["demo_bad_pkg", "demo_good_pkg", "--out", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert code == 1
    assert re.search(r"\| demo_good_pkg +\| toy task +\| toy set +\| acc 0\.75 +\| \d+ s +\|", out)
    assert "demo_bad_pkg" in out and "FAILED" in out and "failed: demo_bad_pkg" in out
    assert "[demo_good_pkg] trained" in out
    assert "boom" in (tmp_path / "runs" / "demo_bad_pkg" / "demo.log").read_text()
    assert sys.modules["demo_good_pkg"].DEMO_INFO["metrics"] == ["acc"]


def test_a_second_demo_starts_from_an_empty_package_folder(tmp_path, monkeypatch, capsys):
    """A package's train.py refuses a new run into a folder with its results, so the demo replaces its own folder,
    and only that: a folder without the demo's log is left to the training script."""
    once = TRAIN.replace('print("trained")', 'assert not (out / "old.txt").exists(); print("trained")')
    code_root = tmp_path / "code"
    code_root.mkdir()
    make_package(code_root, "demo_twice_pkg", once, EVAL)
    monkeypatch.setenv("PYTHONPATH", str(code_root))
    monkeypatch.syspath_prepend(str(code_root))
    runs = tmp_path / "runs"
    assert main(["demo_twice_pkg", "--out", str(runs)]) == 0
    (runs / "demo_twice_pkg" / "old.txt").write_text("from the first demo")
    assert main(["demo_twice_pkg", "--out", str(runs)]) == 0
    assert not (runs / "demo_twice_pkg" / "old.txt").exists()
    (runs / "demo_twice_pkg" / "demo.log").unlink()
    (runs / "demo_twice_pkg" / "old.txt").write_text("not the demo's")
    assert main(["demo_twice_pkg", "--out", str(runs)]) == 1  # kept: the toy train.py stops on it
    assert (runs / "demo_twice_pkg" / "old.txt").read_text() == "not the demo's"
