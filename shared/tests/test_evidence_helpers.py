"""The evidence scripts' shared helpers (shared.evidence): table cells, the committed-record check, the command
line and the closing record entries."""

import json
from pathlib import Path

import pytest

from shared import evidence
from shared.evidence import committed_mismatches, map_in_processes, mean_sd


def test_mean_sd_formats_mean_and_sample_sd():
    assert mean_sd([1.0, 2.0, 3.0]) == "2.00 ± 1.00"
    assert mean_sd([0.5], digits=3) == "0.500 ± 0.000"


def test_committed_mismatches_compare_shared_seeds_only():
    committed = {"seeds": [1, 2], "rows": {"a": [1.0, 2.0]}}
    assert committed_mismatches({"seeds": [2], "rows": {"a": [2.0]}}, committed) == []
    assert committed_mismatches({"seeds": [2, 3], "rows": {"a": [2.5, 9.0]}}, committed) == [
        "a seed 2: 2.5 (committed 2.0)"
    ]
    assert committed_mismatches({"seeds": [1], "rows": {"b": [1.0]}}, committed) == ["b seed 1: 1.0 (committed None)"]


def _parse(argv, seeds_help=None):
    parser = evidence.evidence_parser("Evidence of X.", (1, 2, 3), 0, seeds_help=seeds_help)
    parser.add_argument("--lr", type=float, default=None)  # a script's own argument, between the two groups
    return parser, evidence.parse_evidence_args(parser, argv, "pkg")


def test_defaults_and_the_extra_train_flags_after_double_dash():
    parser, args = _parse(["--lr", "0.5", "--", "--optim.iters", "3"])
    assert (args.seeds, args.validation_seed, args.lr, args.output_dir, args.table) == (None, 0, 0.5, None, None)
    assert args.train_args == ["--optim.iters", "3"]
    assert evidence.reported_seeds(parser, args, (1, 2, 3)) == [1, 2, 3]


def test_given_seeds_and_the_validation_seed_among_them_is_an_error(capsys):
    parser, args = _parse(["--seeds", "2", "5"])
    assert evidence.reported_seeds(parser, args, (1, 2, 3)) == [2, 5]
    parser, args = _parse(["--seeds", "1", "4", "--validation-seed", "4"])
    with pytest.raises(SystemExit):
        evidence.reported_seeds(parser, args, (1, 2, 3))
    assert "the validation seed 4 must not be a reported seed" in capsys.readouterr().err


def test_help_lists_the_arguments_in_order(capsys):
    with pytest.raises(SystemExit):
        _parse(["--help"], seeds_help="reported seeds, custom text")
    text = capsys.readouterr().out
    assert "reported seeds, custom text" in text and "default runs/pkg/evidence/<time>/" in text
    order = [text.index(flag) for flag in ("--seeds", "--validation-seed", "--lr", "--output_dir", "--table")]
    assert order == sorted(order)


def test_print_table_reads_the_record(tmp_path, capsys):
    path = tmp_path / "evidence.json"
    path.write_text(json.dumps({"rows": {"a": [1.0, 2.0]}}))
    result = evidence.print_table(path, lambda record: f"| a | {sum(record['rows']['a'])} |")
    assert result == {"table": "| a | 3.0 |"}
    assert capsys.readouterr().out == "| a | 3.0 |\n"


def test_evidence_dir_is_the_given_folder_else_a_new_run_folder(tmp_path, monkeypatch):
    assert evidence.evidence_dir(str(tmp_path / "given"), "pkg") == tmp_path / "given"
    monkeypatch.chdir(tmp_path)
    made = evidence.evidence_dir(None, "pkg")
    assert (tmp_path / made).is_dir() and made.parent == Path("runs", "pkg", "evidence")


def test_seed_rows_lists_every_row_per_seed_in_the_order_of_seeds():
    per_seed = {3: {"m/AP": 1.5, "b/AP": 0.5}, 1: {"m/AP": 2.0, "b/AP": 1.0}}
    tail = evidence.seed_rows([1, 3], per_seed, {"chosen": 0.1}, "2 epochs", 12.345, "python -m pkg.evidence")
    assert list(tail) == ["rows_format", "seeds", "rows", "validation", "budget", "seconds", "command"]
    assert tail["seeds"] == [1, 3] and tail["rows"] == {"m/AP": [2.0, 1.5], "b/AP": [1.0, 0.5]}
    assert (tail["validation"], tail["budget"], tail["seconds"], tail["command"]) == (
        {"chosen": 0.1},
        "2 epochs",
        12.3,
        "python -m pkg.evidence",
    )


def test_map_in_processes_keeps_job_order_inline_and_spawned():
    jobs = [(2, 5), (3, 2), (10, 1)]
    assert map_in_processes(pow, jobs, workers=1) == [32, 9, 10]
    assert map_in_processes(pow, jobs, workers=2) == [32, 9, 10]  # two spawned processes
