"""energy_anomaly_seg reliability cases: resume (train.py, train_segmentor.py) and eval.py refuse what is not a
checkpoint of theirs before anything is written, a run folder of another package is refused, and a diverging OoD-head
training stops with an error naming the step while the last good last.pt stays on disk byte for byte (the reviewer's
case: a last.pt with non-finite BatchNorm statistics had been written while the error said it was intact)."""

from pathlib import Path

import pytest
import torch

from energy_anomaly_seg import eval as eval_module
from energy_anomaly_seg import train as train_module
from energy_anomaly_seg import train_segmentor
from energy_anomaly_seg.tests.test_train import TINY
from shared.checkpoint import CheckpointError, find_nonfinite, load_checkpoint
from shared.logger import RunDirError
from shared.testing import assert_resume_refused
from shared.training import NonFiniteLossError

PACKAGE_ERROR = "not a (energy_anomaly_seg|train.py) checkpoint"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _bad_checkpoint(folder: Path, content: str) -> Path:
    """A run folder of another kind whose ``last.pt`` is `content`."""
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"top1": 75.0}')
    path = folder / "last.pt"
    if content == "text":
        path.write_text("hello")
    elif content == "other_package":
        torch.save({"package": "emo", "model": {}, "optimizer": {}, "config": {}}, path)
    elif content == "untagged":  # no package entry and none of the keys a resume or an evaluation reads
        torch.save({"model": {"weight": torch.zeros(2)}, "epoch": 3}, path)
    return path


@pytest.fixture
def tiny_args(tmp_path):
    return [*TINY, "--synthetic.root", str(tmp_path / "synthetic")]


def _train(argv):
    return train_module.main(train_module.parse_args(argv))


@pytest.mark.parametrize("content", ["missing", "text", "other_package", "untagged"])
def test_resume_and_eval_refuse_what_is_not_a_checkpoint_before_anything_is_written(tmp_path, content):
    run = tmp_path / "other_run"
    path = _bad_checkpoint(run, content)
    before = _snapshot(run)
    for script in (train_module, train_segmentor):  # the run folder defaults to the resumed checkpoint's folder
        with pytest.raises(CheckpointError, match=PACKAGE_ERROR):
            script.main(script.parse_args(["--resume", str(path), "--device", "cpu"]))
        with pytest.raises(CheckpointError, match=PACKAGE_ERROR):
            script.main(
                script.parse_args(["--resume", str(path), "--device", "cpu", "--output_dir", str(tmp_path / "new")])
            )
    with pytest.raises(CheckpointError, match=PACKAGE_ERROR):
        eval_module.main(eval_module.parse_args(["--checkpoint", str(path)]))
    assert _snapshot(run) == before
    assert not (tmp_path / "new").exists() and not (run / "eval").exists()


@pytest.fixture(scope="module")
def segmentor_checkpoint(tmp_path_factory) -> Path:
    """train_segmentor.py's last.pt (a segmentor without OoD head) and train.py's segmentor-phase last.pt."""
    root = tmp_path_factory.mktemp("eas_reliability")
    train_segmentor.main(
        train_segmentor.parse_args(
            [
                *_segmentor_args(root),
                "--output_dir",
                str(root / "segmentor"),
                "--optim.iters",
                "1",
                "--allow_random_init",
            ]
        )
    )
    return root / "segmentor" / "last.pt"


def _segmentor_args(root: Path) -> list[str]:
    """train_segmentor.py's tiny settings on the synthetic scenes under ``root``."""
    return [
        *TINY[: TINY.index("--segmentor.train.iters")],
        "--synthetic.root",
        str(root / "synthetic"),
        "--data.dataset",
        "synthetic",
        "--data.num_workers",
        "0",
    ]


def test_a_segmentor_resume_with_another_network_is_refused_before_writing(segmentor_checkpoint):
    args = [*_segmentor_args(segmentor_checkpoint.parents[1]), "--resume", str(segmentor_checkpoint), "--optim.iters"]
    other = train_segmentor.parse_args([*args, "2", "--allow_random_init", "--model.segmentor_dropout_in_train"])
    assert_resume_refused(lambda: train_segmentor.main(other), segmentor_checkpoint.parent, "model")


def test_a_segmentor_file_is_refused_as_a_sleeg_resume_and_evaluation(tmp_path, tiny_args, segmentor_checkpoint):
    with pytest.raises(CheckpointError, match="--segmentor.checkpoint"):
        _train([*tiny_args, "--resume", str(segmentor_checkpoint), "--output_dir", str(tmp_path / "run")])
    with pytest.raises(CheckpointError, match="OoD head is not trained yet"):
        eval_module.main(
            eval_module.parse_args(["--checkpoint", str(segmentor_checkpoint), "--output_dir", str(tmp_path / "eval")])
        )
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()


def test_a_run_folder_of_another_package_is_refused(tmp_path, tiny_args):
    out = tmp_path / "emo_run"
    out.mkdir()
    (out / "RUN.json").write_text('{"package": "emo", "config": {"epochs": 1}}\n')
    before = _snapshot(out)
    with pytest.raises(RunDirError, match="package 'emo'"):
        _train([*tiny_args, "--output_dir", str(out)])
    assert _snapshot(out) == before


def _record_saves(monkeypatch) -> list[tuple[Path, bytes]]:
    """Keep the bytes of every last.pt the trainer writes, to compare with what is on disk after a failure."""
    saves: list[tuple[Path, bytes]] = []
    save = train_module.save_checkpoint

    def recording(state, path, *args, **kwargs):
        path = save(state, path, *args, **kwargs)
        if path.name == "last.pt":
            saves.append((path, path.read_bytes()))
        return path

    monkeypatch.setattr(train_module, "save_checkpoint", recording)
    return saves


def _assert_stops_and_keeps_the_last_good_checkpoint(
    monkeypatch, tiny_args: list[str], out: Path, match: str, iters: int, *extra: str
) -> None:
    """train.py with a last.pt every iteration stops with a NonFiniteLossError matching ``match``; the last.pt on
    disk is the last one written, byte for byte, finite, and the error names the step after it."""
    saves = _record_saves(monkeypatch)
    with pytest.raises(NonFiniteLossError, match=match) as err:
        _train(
            [
                *tiny_args,
                "--output_dir",
                str(out),
                "--checkpoint_interval",
                "1",
                "--optim.iters",
                str(iters),
                *extra,
                "--eval.datasets",
            ]
        )
    path, written = saves[-1]
    assert path == out / "last.pt" and path.read_bytes() == written
    state = load_checkpoint(path, package="energy_anomaly_seg")
    assert not find_nonfinite(state)
    assert state["phase"] == "ood_head"
    assert f"step {state['iteration']}" in str(err.value)  # the failing step is the one after the last checkpoint


def test_diverging_head_lr_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_args, monkeypatch):
    """The reviewer's case replayed: at lr 1e6 the head's weights stay finite but its BatchNorm running variance
    overflows at step 2; that state was once written to last.pt. Now the run stops naming the step, and last.pt
    is the one written after step 1."""
    _assert_stops_and_keeps_the_last_good_checkpoint(
        monkeypatch, tiny_args, tmp_path / "run", r"OoD head .* after step 2", 6, "--optim.lr", "1e6"
    )


def test_nan_injected_in_the_ood_head_stops_the_run_before_it_is_checkpointed(tmp_path, tiny_args, monkeypatch):
    losses = train_module.sleeg_losses

    def poisoned(model, *args, **kwargs):
        if args[-1] == 2:  # the iteration
            model.patch_head.conv_seg.weight.data.view(-1)[0] = float("nan")
        return losses(model, *args, **kwargs)

    monkeypatch.setattr(train_module, "sleeg_losses", poisoned)
    _assert_stops_and_keeps_the_last_good_checkpoint(
        monkeypatch, tiny_args, tmp_path / "run", "SLEEG loss .* at step 2", 4
    )
