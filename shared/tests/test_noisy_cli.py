"""The entry-script helpers the noisy-label packages use (shared.entrypoints), and shared.noisy's data, loop, models."""

import json
import math
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from shared.checkpoint import save_checkpoint
from shared.config import RunConfig
from shared.entrypoints import checkpoint_parser, parse_checkpoint_args, run_evaluation, run_logging, start_run
from shared.logger import RunLogger
from shared.noisy.data import cifar_noise, clothing1m_splits, noise_path, save_noise
from shared.noisy.loop import EpochTrainer
from shared.noisy.metrics import AccuracyTracker
from shared.noisy.models import FeatureClassifier
from shared.noisy.supervised import set_learning_rate
from shared.testing import single_torch_thread  # noqa: F401  (autouse fixture)


@dataclass
class _Data:
    noise_type: str = "sym"
    noise_rate: float = 0.5
    noise_seed: int = 0
    noise_file: str | None = None


@dataclass
class _Config(RunConfig):
    data: _Data = field(default_factory=_Data)
    lr: float = 0.1


@dataclass
class _GrownConfig(_Config):
    @classmethod
    def upgrade_stored(cls, stored):
        return {**super().upgrade_stored(stored), "lr": 0.7}


def _parse(argv, required=("config",), schema=_Config):
    return parse_checkpoint_args(
        schema, argv, "Doc line.\nmore", "pkgx", required=required, checkpoint_help="a pkgx last.pt"
    )


def test_parse_checkpoint_args_reads_the_stored_config_and_applies_overrides(tmp_path):
    stored = {"data": {"noise_rate": 0.2}, "lr": 0.3}
    path = save_checkpoint({"package": "pkgx", "config": stored, "net1": {}}, tmp_path / "run" / "last.pt")
    ev = _parse(["--checkpoint", str(path), "--lr", "0.5"])
    assert (ev.config.lr, ev.config.data.noise_rate) == (0.5, 0.2)
    assert ev.output_dir == path.parent / "eval" and ev.checkpoint == path and "net1" in ev.state
    up = _parse(["--checkpoint", str(path), "--output_dir", str(tmp_path / "o")], schema=_GrownConfig)
    assert up.config.lr == 0.7 and up.output_dir == tmp_path / "o"  # the schema's upgrade_stored reads the config


def test_parse_checkpoint_args_refuses_a_foreign_or_incomplete_checkpoint(tmp_path):
    path = save_checkpoint({"package": "other", "config": {}}, tmp_path / "last.pt")
    with pytest.raises(Exception, match="other"):
        _parse(["--checkpoint", str(path)])
    path = save_checkpoint({"package": "pkgx", "config": {}}, tmp_path / "b.pt")
    with pytest.raises(Exception, match="net1"):
        _parse(["--checkpoint", str(path)], required=("config", "net1"))


def test_parse_checkpoint_args_help_lists_the_flags_and_the_config_keys(capsys):
    with pytest.raises(SystemExit):
        _parse(["--help"])
    out = capsys.readouterr().out
    assert "--checkpoint" in out and "a pkgx last.pt" in out and "--data.noise_rate" in out


def test_checkpoint_parser_and_run_evaluation_make_an_eval_script(tmp_path, capsys):
    path = save_checkpoint({"package": "pkgx", "config": {"lr": 0.3}}, tmp_path / "run" / "last.pt")
    parse_args = checkpoint_parser(_Config, "Doc line.", "pkgx", required=("config",), checkpoint_help="a pkgx file")
    ev = parse_args(["--checkpoint", str(path), "--lr", "0.5"])
    assert ev.config.lr == 0.5 and ev.output_dir == path.parent / "eval" and "a pkgx file" in parse_args.__doc__
    metrics = run_evaluation(ev, lambda ev: {"lr": ev.config.lr}, lambda m, where: f"lr {m['lr']} -> {where}")
    assert metrics == {"lr": 0.5} and json.loads((ev.output_dir / "metrics.json").read_text()) == metrics
    assert capsys.readouterr().out == f"lr 0.5 -> {ev.output_dir / 'metrics.json'}\n"


def test_run_logging_closes_the_logger_also_after_an_error(tmp_path):
    cfg = _Config(device="cpu", tensorboard=False)
    ctx, _ = start_run(cfg, lambda ctx: None)
    with pytest.raises(ValueError, match="inside"), run_logging(cfg, ctx, tmp_path) as logger:
        logger.info("started")
        raise ValueError("inside")
    assert "started" in (tmp_path / "train.log").read_text() and not logger.log.handlers


class _Counter(EpochTrainer):
    """Epoch e tests at accuracy ``scores[e]``; the state is the epoch and the tracker."""

    def __init__(self, scores, logger, due=lambda epoch: True):
        self.scores, self.logger, self.due = scores, logger, due
        self.epoch, self.tracker, self.ran = -1, AccuracyTracker(), []

    @property
    def num_epochs(self):
        return len(self.scores)

    def epoch_row(self, epoch):
        self.ran.append(epoch)
        self.tracker.update(self.scores[epoch], epoch)
        return {"test_acc": self.scores[epoch]}

    def checkpoint_due(self, epoch):
        return self.due(epoch)

    def state_dict(self):
        return {"epoch": self.epoch, "tracker": self.tracker.state_dict()}

    def load_state_dict(self, state):
        self.epoch = state["epoch"]
        self.tracker.load_state_dict(state["tracker"])


def test_epoch_trainer_fit_checkpoints_when_due_resumes_after_the_saved_epoch_and_summarises(tmp_path):
    logger, rows = RunLogger(tmp_path, tensorboard=False, name="loop"), []
    first = _Counter([10.0, 30.0, 20.0], logger, due=lambda epoch: epoch == 1)
    result = first.fit(tmp_path / "state.pt", on_epoch_end=lambda epoch, row: rows.append((epoch, row["test_acc"])))
    assert result == {"best": 30.0, "best_epoch": 1, "last": 20.0} and rows == [(0, 10.0), (1, 30.0), (2, 20.0)]
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    assert saved["epoch"] == 1
    resumed = _Counter([10.0, 30.0, 20.0], logger)
    assert resumed.fit(None, saved) == result and resumed.ran == [2]
    assert math.isnan(_Counter([], logger).fit()["best"])  # no test yet: NaN, not -inf
    logger.close()


def test_start_run_returns_what_prepare_returns_and_propagates_its_error():
    cfg = _Config(device="cpu")
    ctx, value = start_run(cfg, lambda ctx: (ctx.world_size, "prepared"))
    assert value == (1, "prepared") and ctx.world_size == 1

    def fail(ctx):
        raise ValueError("bad data")

    with pytest.raises(ValueError, match="bad data"):
        start_run(cfg, fail)


@dataclass
class _Task:
    noise: object


def test_cifar_noise_persists_only_when_asked(tmp_path):
    clean = torch.arange(40) % 10
    cfg = _Data()
    assert noise_path(cfg, None) is None and noise_path(cfg, tmp_path) == tmp_path / "noisy_labels.json"
    drawn = cifar_noise(clean, cfg, 10, tmp_path, write_noise=False)
    assert not (tmp_path / "noisy_labels.json").exists()
    save_noise(cfg, _Task(drawn), tmp_path)
    assert (tmp_path / "noisy_labels.json").is_file()
    again = cifar_noise(clean, cfg, 10, tmp_path)  # re-read from the file just written
    assert list(again.noisy) == list(drawn.noisy)
    with pytest.raises(ValueError, match="not reused"):
        cifar_noise(clean, _Data(noise_rate=0.2), 10, tmp_path)


def test_clothing1m_without_a_root_is_an_error_naming_the_option():
    with pytest.raises(ValueError, match="--data.root"):
        clothing1m_splits(None, ("train", "test"))


def test_set_learning_rate_sets_every_group():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    opts = [torch.optim.SGD([{"params": a.weight}, {"params": a.bias}], lr=1.0), torch.optim.SGD(b.parameters(), 1.0)]
    assert set_learning_rate(opts, 0.25) == 0.25
    assert [g["lr"] for o in opts for g in o.param_groups] == [0.25, 0.25, 0.25]


def test_feature_classifier_gives_logits_and_features():
    class Tiny(FeatureClassifier):
        def __init__(self):
            super().__init__()
            self.num_features = 3
            self.body = nn.Linear(4, 3)
            self.linear = nn.Linear(3, 2)

        def forward_features(self, x):
            return self.body(x)

    model, x = Tiny(), torch.randn(5, 4)
    logits, feats = model(x, return_features=True)
    torch.testing.assert_close(feats, model.body(x))
    torch.testing.assert_close(logits, model.linear(feats))
    torch.testing.assert_close(model(x), logits)
