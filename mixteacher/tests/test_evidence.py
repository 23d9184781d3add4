"""Slow: one evidence seed again (``python -m mixteacher.evidence --seeds 3``: the four rows, 220 iterations each,
shared burn-ins; about 4-5 minutes of one CPU core). It must reproduce the committed column of ``EVIDENCE.json``
exactly, keep pseudo boxes after the burn-in, and show the claim on this seed: MixTeacher's teacher at least
``MARGIN`` AP above supervised-only and above the single-scale mean teacher (README, Evidence)."""

import json

import pytest

from mixteacher.evidence import COMMITTED, FASTER_RCNN_ROWS, FCOS_ROWS, STATS, run_seed

SEED = 3
#: the committed seed-3 differences are +3.48 (supervised) and +6.96 (mean teacher) AP; over the three seeds MixTeacher
#: leads the mean teacher by 3.45 to 18.08 and supervised-only in 2 of 3 (seed 1: -3.24), so 1 AP on seed 3 is what
#: the seeds support, not a blanket per-seed guarantee
MARGIN = 1.0


@pytest.mark.slow
@pytest.mark.timeout(1800)  # several CPU-minutes; longer on a loaded machine
def test_evidence_seed_reproduces_the_committed_column_and_the_claim(tmp_path):
    if not COMMITTED.is_file():
        pytest.fail(f"{COMMITTED} is missing: run `python -m mixteacher.evidence` and commit its evidence.json")
    committed = json.loads(COMMITTED.read_text())
    j = committed["seeds"].index(SEED)
    results = run_seed(SEED, tmp_path, ("regular", "mixed"), parallel_rows=True)
    for row in FASTER_RCNN_ROWS:
        assert results[row]["AP"] == committed["rows"][row][j], row
        for key in ("student_AP", *STATS):
            assert results[row][key] == committed["rows"][f"{row}/{key}"][j], f"{row}/{key}"
    assert results["mixteacher"]["pseudo_boxes"] > 0 and results["mean_teacher"]["pseudo_boxes"] > 0
    for baseline in committed["baselines"]:
        assert results["mixteacher"]["AP"] - results[baseline]["AP"] >= MARGIN, baseline


@pytest.mark.slow
@pytest.mark.timeout(1800)  # several CPU-minutes; longer on a loaded machine
def test_fcos_evidence_seed_reproduces_the_committed_column(tmp_path):
    """MixTeacher-FCOS's seed again (``--fcos_only --seeds 3``, about 5 CPU-minutes): the committed column exactly,
    pseudo-box counts included. Neither the claim nor engagement is asserted: on seed 3 the FCOS teacher keeps no
    pseudo box after the burn-in and MixTeacher-FCOS is behind FCOS supervised-only on the committed seeds (README,
    MixTeacher-FCOS); engagement with a confident FCOS head is tests/test_fcos.py's."""
    committed = json.loads(COMMITTED.read_text())
    j = committed["seeds"].index(SEED)
    results = run_seed(SEED, tmp_path, ("fcos_regular", "fcos_mixed"))
    for row in FCOS_ROWS:
        assert results[row]["AP"] == committed["rows"][row][j], row
        for key in ("student_AP", *STATS):
            assert results[row][key] == committed["rows"][f"{row}/{key}"][j], f"{row}/{key}"
