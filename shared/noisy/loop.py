"""The epoch loop of the noisy-label trainers: :class:`shared.noisy.dividemix.DivideMix` and crema's trainer.

:meth:`EpochTrainer.fit` restores a checkpoint's state, then runs the remaining epochs, each: the trainer's
``epoch_row`` (train, test when due) -> ``last.pt`` when due -> the row logged -> the caller's hook. The summary it
returns is :meth:`shared.noisy.metrics.AccuracyTracker.summary`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.checkpoint import save_checkpoint
from shared.logger import RunLogger
from shared.noisy.metrics import AccuracyTracker

__all__ = ["EpochTrainer"]


class EpochTrainer:
    """Base of an epoch-based trainer; a subclass provides the attributes and methods below.

    Attributes:
        epoch: the last finished epoch (restored by ``load_state_dict``).
        tracker: best / last test accuracy.
        logger: the run logger (``log_epoch``).
    """

    epoch: int
    tracker: AccuracyTracker
    logger: RunLogger

    @property
    def num_epochs(self) -> int:
        """Length of the schedule."""
        raise NotImplementedError

    def epoch_row(self, epoch: int) -> dict[str, Any]:
        """Train (and test, when due) one epoch; returns the values logged for it."""
        raise NotImplementedError

    def checkpoint_due(self, epoch: int) -> bool:
        """Whether ``fit`` writes its checkpoint after ``epoch`` (default: after every epoch)."""
        return True

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def fit(
        self,
        checkpoint_path: str | Path | None = None,
        resume_state: dict[str, Any] | None = None,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Run (or, from ``resume_state``, continue) the whole schedule; returns the best / last test accuracy.

        Args:
            checkpoint_path: where the trainer's state is written when :meth:`checkpoint_due` (None: nowhere).
            resume_state: a state written by this trainer; the run continues after its epoch.
            on_epoch_end: called with each epoch and its row before the epoch's checkpoint and log line are written
                (values it adds to the row are logged; state it changes is checkpointed).
        """
        start = 0
        if resume_state is not None:
            self.load_state_dict(resume_state)
            start = self.epoch + 1
        for epoch in range(start, self.num_epochs):
            row = self.epoch_row(epoch)
            self.epoch = epoch
            if on_epoch_end is not None:  # before the checkpoint and the log: what it adds is in both
                on_epoch_end(epoch, row)
            if checkpoint_path is not None and self.checkpoint_due(epoch):
                save_checkpoint(self.state_dict(), checkpoint_path)
            self.logger.log_epoch(epoch, row)
        return self.tracker.summary()
