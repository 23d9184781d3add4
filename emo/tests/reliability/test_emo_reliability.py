"""Reliability of the EMO scripts: a file that is not an emo checkpoint (missing, text, another package's, one that
lacks the training state) is refused by ``--resume`` and by the evaluation scripts with the shared error, before
anything is written; the checkpoints that train_det.py writes record their package and claim their run folder."""

import json
from pathlib import Path

import pytest
import torch

from emo import eval as emo_eval
from emo import eval_det, train_det
from emo import train as emo_train
from emo.tests.test_train_det import TINY as DET_TINY
from emo.tests.test_train_eval import TINY as CLS_TINY
from shared.checkpoint import CheckpointError, CheckpointNotFoundError, load_checkpoint


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def _bad_checkpoints(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    text, other, stateless = folder / 'notes.pt', folder / 'mixteacher.pt', folder / 'weights.pt'
    text.write_text('not a checkpoint\n')
    torch.save({'package': 'mixteacher', 'model': {}, 'config': {'max_iters': 1}}, other)
    torch.save({'weight': torch.zeros(2)}, stateless)  # a plain state dict: no training state to resume
    return {'missing': folder / 'missing.pt', 'text': text, 'other_package': other, 'stateless': stateless}


RESUME_ERRORS = {
    'missing': 'checkpoint not found',
    'text': 'notes.pt holds objects that the safe unpickler refuses',
    'other_package': "written by package 'mixteacher'",
    'stateless': 'lacks the key',
}


@pytest.mark.parametrize('kind', sorted(RESUME_ERRORS))
@pytest.mark.parametrize('script', ['train_det', 'train'])
def test_resume_from_a_file_that_is_not_an_emo_training_checkpoint_is_refused_before_writing(
    tmp_path, monkeypatch, script, kind
):
    monkeypatch.chdir(tmp_path)  # a new runs/ folder would appear here
    path = _bad_checkpoints(tmp_path / 'old')[kind]
    module, tiny = (train_det, DET_TINY) if script == 'train_det' else (emo_train, CLS_TINY)
    before = _snapshot(tmp_path)
    for extra in ([], ['--output_dir', str(tmp_path / 'new')]):  # run folder: the file's folder, or a new one
        with pytest.raises(CheckpointError, match=f'not a emo checkpoint: .*{RESUME_ERRORS[kind]}'):
            module.main(module.parse_args([*tiny, '--resume', str(path), *extra]))
    assert _snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ['old']


@pytest.mark.parametrize('kind', ['missing', 'text', 'other_package'])
@pytest.mark.parametrize('script', [emo_eval, eval_det], ids=['eval', 'eval_det'])
def test_evaluation_refuses_a_file_that_is_not_an_emo_checkpoint_before_writing(tmp_path, monkeypatch, script, kind):
    monkeypatch.chdir(tmp_path)
    path = _bad_checkpoints(tmp_path / 'old')[kind]
    before = _snapshot(tmp_path)
    expected = CheckpointNotFoundError if kind == 'missing' else CheckpointError
    with pytest.raises(expected, match='not a emo checkpoint'):
        script.main(script.parse_args(['--checkpoint', str(path)]))
    assert _snapshot(tmp_path) == before  # no eval/ folder


def test_eval_det_refuses_a_checkpoint_without_a_detector(tmp_path):
    path = _bad_checkpoints(tmp_path / 'old')['stateless']
    before = _snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="lacks the key.*'model'"):
        eval_det.main(eval_det.parse_args(['--checkpoint', str(path), *DET_TINY]))
    assert _snapshot(tmp_path) == before


def test_train_det_checkpoints_record_the_package_and_the_run_folder_is_claimed(synthetic_root, tmp_path):
    out = tmp_path / 'run'
    train_det.main(train_det.parse_args([*DET_TINY, '--epochs', '1', '--output_dir', str(out)]))
    state = load_checkpoint(out / 'last.pt', package='emo')
    assert state['package'] == 'emo' and state['config']['epochs'] == 1
    record = json.loads((out / 'RUN.json').read_text())
    assert record['package'] == 'emo' and record['config']['epochs'] == 1
    evaluated = eval_det.main(eval_det.parse_args(['--checkpoint', str(out / 'last.pt')]))
    assert evaluated['AP'] == pytest.approx(load_checkpoint(out / 'best.pt')['best']['AP'], abs=1e-12)
