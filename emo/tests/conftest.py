"""Fixtures of the emo tests: one intra-op thread per test (``shared.testing``), a temporary synthetic-data root and
the interrupted-then-resumed run of the resume tests."""

import dataclasses

import pytest

from shared.checkpoint import load_checkpoint
from shared.testing import assert_resume_refused, single_torch_thread, synthetic_root  # noqa: F401  (autouse; temporary data root)


class Killed(Exception):
    """Raised by a run's hook where a resume test cuts the run."""


@pytest.fixture
def cut_and_resume(tmp_path):
    """``run(main, cfg, hook, at)``: ``main(cfg)`` uninterrupted into ``full/``, then into ``cut/`` stopped by the
    hook argument ``hook`` (``on_epoch_end``, ``on_eval``) once it is called with ``at``, then resumed from
    ``cut/last.pt``. Returns the ``last.pt`` states (uninterrupted, at the cut, resumed)."""

    def run(main, cfg, hook, at):
        main(dataclasses.replace(cfg, output_dir=str(tmp_path / 'full')))

        def kill(index, row):
            if index == at:
                raise Killed

        cut = tmp_path / 'cut'
        with pytest.raises(Killed):
            main(dataclasses.replace(cfg, output_dir=str(cut)), **{hook: kill})
        at_cut = load_checkpoint(cut / 'last.pt')
        main(dataclasses.replace(cfg, output_dir=str(cut), resume=str(cut / 'last.pt')))
        other = dataclasses.replace(cfg, output_dir=str(cut), resume=str(cut / 'last.pt'), window_size=3)
        assert_resume_refused(lambda: main(other), cut, 'window_size')  # another backbone setting
        return load_checkpoint(tmp_path / 'full' / 'last.pt'), at_cut, load_checkpoint(cut / 'last.pt')

    return run
