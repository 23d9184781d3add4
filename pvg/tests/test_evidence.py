"""evidence.py: matched parameter counts, the schema of evidence.json, exact reproduction of a seed, and the
committed EVIDENCE.json against its own rows."""

import json
from pathlib import Path

import pytest

import pvg.evidence as evidence

COMMITTED = Path(evidence.__file__).resolve().parent / 'EVIDENCE.json'


@pytest.fixture
def short_budget(monkeypatch):
    monkeypatch.setitem(evidence.BUDGET, 'steps', {'digits': 4, 'synthetic': 4})
    monkeypatch.setitem(evidence.BUDGET, 'warmup_steps', 2)


def test_rows_have_matched_parameter_counts():
    counts = {row: evidence._trainable(evidence.matched_model(row, 10)) for row in ('pyramid_vig', '+maxe', 'pvg')}
    base = counts['pyramid_vig']
    assert all(abs(c - base) / base < 0.03 for c in counts.values()), counts
    widths = [f['num_chs'] for f in evidence.matched_model('pvg', 10).feature_info]
    assert sum(widths) > sum(evidence.BASE_CHANNELS)  # MaxE is lighter: PVG gets wider stages


def test_a_seed_reproduces_exactly_and_the_record_has_the_schema(short_budget, tmp_path):
    data = evidence.load_dataset('digits')
    assert data[0].shape == (1297, 3, 40, 40) and data[2].shape == (500, 3, 40, 40)
    evidence._matched_channels.cache_clear()  # the first run searches the widths, the second reads the cache
    a = evidence.train_and_evaluate('pvg', 'digits', 7, data)
    b = evidence.train_and_evaluate('pvg', 'digits', 7, data)
    assert a['top1'] == b['top1']
    record = evidence.main(['--seeds', '7', '--datasets', 'digits', '--rows', 'pvg', '--out', str(tmp_path / 'e.json')])
    written = json.loads((tmp_path / 'e.json').read_text())
    for key in ('package', 'claim', 'metric', 'higher_is_better', 'method', 'baselines', 'seeds', 'rows', 'budget',
                'command'):  # fmt: skip
        assert key in written, key
    assert written['rows']['digits/pvg'] == [a['top1']] == record['rows']['digits/pvg']
    assert set(written['rows']) == {'digits/pvg'}


def test_committed_evidence_is_consistent():
    record = json.loads(COMMITTED.read_text())
    assert record['package'] == 'pvg' and len(record['seeds']) >= 3
    assert {f'{d}/{r}' for d in ('digits', 'synthetic') for r in evidence.ROWS} == set(record['rows'])
    assert all(len(v) == len(record['seeds']) for v in record['rows'].values())
    for dataset, part in record['summary'].items():
        for row, s in part.items():
            values = record['rows'][f'{dataset}/{row}']
            assert s['mean'] == pytest.approx(sum(values) / len(values))


@pytest.mark.slow
def test_thirty_steps_learn_digits(monkeypatch):
    monkeypatch.setitem(evidence.BUDGET, 'steps', {'digits': 30, 'synthetic': 30})
    monkeypatch.setitem(evidence.BUDGET, 'warmup_steps', 5)
    data = evidence.load_dataset('digits')
    for row in ('pyramid_vig', 'pvg'):
        assert evidence.train_and_evaluate(row, 'digits', 1, data)['top1'] > 30  # chance: 10 %
