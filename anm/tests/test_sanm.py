"""SANM on the DivideMix engine: the 12-group MixMatch batch, the loss terms, the mechanism, resume and the CLI."""

from __future__ import annotations

import pytest
import torch

from anm.masking import MaskerConfig
from anm.model import create_model
from anm.sanm import SANM
from shared.logger import RunLogger
from shared.noisy.dividemix import DivideMixConfig


class _Tag:
    """A view transform that returns a constant image tagged with its view number (to track groups)."""

    def __init__(self, tag: float):
        self.tag = tag

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.float() / 255 + self.tag


def _engine(tmp_path, views: int = 6, **kwargs) -> SANM:
    torch.manual_seed(0)
    images = torch.randint(0, 255, (40, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (40,))
    tags = [_Tag(10.0 * (i + 1)) for i in range(views)]
    nets = [create_model("supce_resnet18_tiny", 10) for _ in range(2)]
    return SANM(
        *nets,
        images,
        labels,
        10,
        tags[0],
        _Tag(0.0),
        images[:8],
        labels[:8],
        DivideMixConfig(epochs=2, warmup_epochs=1, batch_size=4, warmup_batch_size=8),
        torch.device("cpu"),
        RunLogger(tmp_path, tensorboard=False),
        seed=0,
        views={"warmup": tags[:1], "labeled": tags, "unlabeled": tags},
        **kwargs,
    )


def _batch(engine: SANM):
    b = 4
    base = torch.rand(b, 3, 32, 32)
    views_x = [base + 10.0 * (i + 1) for i in range(6)]
    views_u = [base - 10.0 * (i + 1) for i in range(6)]
    weights = torch.linspace(0.0, 1.0, 40)
    prepared = engine.prepare_batch(0, views_x, torch.arange(b), views_u, torch.arange(b, 2 * b), weights)
    return views_x, views_u, engine.augment_batch(0, prepared)


def test_twelve_group_batch_composition(tmp_path) -> None:
    engine = _engine(tmp_path)
    views_x, views_u, batch = _batch(engine)
    assert len(batch.labeled) == len(batch.unlabeled) == 6
    assert batch.inputs().shape[0] == 12 * 4 and batch.num_labeled_rows == 6 * 4
    for i in range(4):  # xp, xp2, xs1, xs2 (and the unlabeled ones) with the unmodulated targets
        assert torch.equal(batch.labeled[i], views_x[i]) and torch.equal(batch.unlabeled[i], views_u[i])
        assert torch.equal(batch.labeled_targets[i], batch.targets_x)
        assert torch.equal(batch.unlabeled_targets[i], batch.targets_u)
    for masked, source in (
        (batch.labeled[4], views_x[4]),
        (batch.labeled[5], views_x[4]),
        (batch.unlabeled[4], views_u[4]),
        (batch.unlabeled[5], views_u[4]),
    ):
        changed = (masked != source).any(1)
        assert changed.any() and changed.float().mean() < 0.10  # x_max / x_min: the guessing view x with one box
    for targets, base in ((batch.labeled_targets[4], batch.targets_x), (batch.unlabeled_targets[4], batch.targets_u)):
        drop = (base - targets).gather(1, base.argmax(1, keepdim=True)).squeeze(1)
        assert (drop >= 0.02 - 1e-6).all() and (drop <= 0.10 + 1e-6).all()
        torch.testing.assert_close(targets.sum(1), torch.ones(4))
    assert torch.equal(batch.labeled_targets[4], batch.labeled_targets[5])  # CIFAR: one ratio for x_max and x_min
    assert batch.feature_maps_x.shape == (4, 64, 4, 4)


def test_loss_has_the_reconstruction_term_and_no_masking_means_dividemix(tmp_path) -> None:
    engine = _engine(tmp_path)
    _, _, batch = _batch(engine)
    logits = engine.nets[0](batch.inputs())
    loss, stats = engine.compute_loss(0, batch, logits, batch.targets(), progress=1.5)
    assert {"lx", "lu", "penalty", "l_rec", "mask_ratio"} <= set(stats)
    plain = stats["lx"] + engine.cfg.lambda_u * (0.5 / 16) * stats["lu"] + stats["penalty"]
    assert loss.item() == pytest.approx(plain + 0.02 * stats["l_rec"], rel=1e-5)
    off = _engine(tmp_path, masking=False)
    _, _, batch = _batch(off)
    assert len(batch.labeled) == 4 and "recon_input" not in batch.extras and batch.feature_maps_x is None


def test_two_view_engine_masks_the_first_view(tmp_path) -> None:
    engine = _engine(tmp_path, views=2)
    assert engine.mix_views == (0, 1) and engine.guess_views == (0, 1)


def _cli(tmp_path, name: str, *extra: str) -> list[str]:
    return [
        "--output_dir",
        str(tmp_path / name),
        "--data.synthetic_train_size",
        "200",
        "--data.synthetic_test_size",
        "50",
        "--dividemix.epochs",
        "3",
        "--dividemix.warmup_epochs",
        "1",
        "--dividemix.batch_size",
        "16",
        "--dividemix.warmup_batch_size",
        "32",
        "--model.width",
        "8",
        "--tensorboard",
        "false",
        *extra,
    ]


def test_resumed_run_equals_uninterrupted_run(tmp_path) -> None:
    from anm.train import main, parse_args
    from shared.checkpoint import load_checkpoint
    from shared.testing import assert_resume_refused, assert_same_tensors

    full = main(parse_args(_cli(tmp_path, "full")))
    main(parse_args(_cli(tmp_path, "part", "--dividemix.epochs", "1")))
    resumed = main(parse_args(_cli(tmp_path, "part", "--resume", str(tmp_path / "part" / "last.pt"))))
    assert resumed["test_acc_last"] == full["test_acc_last"]
    a = load_checkpoint(tmp_path / "full" / "last.pt", package="anm")
    b = load_checkpoint(tmp_path / "part" / "last.pt", package="anm")
    assert_same_tensors(a["net1"], b["net1"])
    assert_same_tensors(a["net2"], b["net2"])
    assert torch.equal(a["mask_generator"], b["mask_generator"])
    # the mechanism engages: masks of the paper's size are drawn and the decoder loss is computed
    assert 0.02 <= full["last_epoch_mask_ratio"] <= 0.10 and full["last_epoch_mask_pixels"] > 1
    assert full["last_epoch_l_rec"] > 0 and full["last_epoch_labeled"] > 0
    # a resume with another method setting is refused before the run folder is touched
    other = _cli(tmp_path, "part", "--resume", str(tmp_path / "part" / "last.pt"), "--sanm.recon_weight", "0.5")
    assert_resume_refused(lambda: main(parse_args(other)), tmp_path / "part", "sanm.recon_weight")


def test_eval_recomputes_the_checkpoint_accuracy(tmp_path) -> None:
    from anm.eval import main as eval_main
    from anm.eval import parse_args as eval_args
    from anm.train import main, parse_args

    metrics = main(parse_args(_cli(tmp_path, "run", "--dividemix.epochs", "1")))
    result = eval_main(eval_args(["--checkpoint", str(tmp_path / "run" / "last.pt")]))
    assert result["test_acc"] == pytest.approx(metrics["test_acc_last"])
    assert (tmp_path / "run" / "eval" / "metrics.json").is_file()


def test_masker_config_reaches_the_engine(tmp_path) -> None:
    engine = _engine(tmp_path, masker=MaskerConfig(ratio_low=0.1, ratio_high=0.1, quality_coef=0.0))
    _, _, batch = _batch(engine)
    assert batch.extras["mask_ratio"] == pytest.approx(0.1)


@pytest.mark.slow
def test_masker_costs_at_most_15_percent_of_a_dividemix_step() -> None:
    from anm.bench import parse_args as bench_args
    from anm.bench import run

    results = run(bench_args(["--iters", "2", "--batch_size", "32"]))
    assert results["masker_overhead_pct"] <= 15.0
    assert results["sanm"] > results["dividemix"]  # the 8-group batch and L_rec cost a real extra pass


def _clothing1m(root, per_class: int = 1) -> None:
    """A Clothing1M tree in the official layout: 14 classes, ``per_class`` noisy-train images each, 14 clean-val and
    14 clean-test images (solid colours, 8 px: the transforms resize them to 224)."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    keys, labels = [], []
    for i in range(14 * (per_class + 2)):
        key = f"images/{i}.jpg"
        Image.new("RGB", (8, 8), (17 * (i % 14), 255 - 17 * (i % 14), 90)).save(root / key)
        keys.append(key)
        labels.append(i % 14)
    n = 14 * per_class
    (root / "noisy_label_kv.txt").write_text("".join(f"{k} {lab}\n" for k, lab in zip(keys[:n], labels[:n])))
    (root / "clean_label_kv.txt").write_text("".join(f"{k} {lab}\n" for k, lab in zip(keys[n:], labels[n:])))
    (root / "noisy_train_key_list.txt").write_text("\n".join(keys[:n]))
    (root / "clean_train_key_list.txt").write_text("")
    (root / "clean_val_key_list.txt").write_text("\n".join(keys[n : n + 14]))
    (root / "clean_test_key_list.txt").write_text("\n".join(keys[n + 14 :]))


def test_clothing1m_validation_is_logged_and_survives_a_resume(tmp_path) -> None:
    """Clothing1M model selection: val_acc reaches log.csv, and a resumed run keeps the best-validation record of
    the epochs before the resume (the record travels in last.pt and best.pt)."""
    import csv

    from anm.train import main, parse_args
    from shared.checkpoint import load_checkpoint

    _clothing1m(tmp_path / "c1m")
    common = [
        "--data.dataset", "clothing1m", "--data.root", str(tmp_path / "c1m"), "--data.views", "weak",
        "--model.name", "supce_resnet50_tiny", "--dividemix.warmup_epochs", "1", "--dividemix.batch_size", "4",
        "--dividemix.warmup_batch_size", "4", "--dividemix.eval_batch_size", "16", "--sanm.reconstruction", "false",
        "--tensorboard", "false",
    ]  # fmt: skip
    full = main(parse_args([*common, "--output_dir", str(tmp_path / "full"), "--dividemix.epochs", "2"]))
    part = [*common, "--output_dir", str(tmp_path / "part")]
    main(parse_args([*part, "--dividemix.epochs", "1"]))
    before = load_checkpoint(tmp_path / "part" / "last.pt", package="anm")["model_selection"]
    assert before["best_epoch"] == 0 and before["best_val"] >= 0
    resumed = main(parse_args([*part, "--dividemix.epochs", "2", "--resume", str(tmp_path / "part" / "last.pt")]))
    for key in ("val_acc_best", "test_acc_at_best_val", "best_val_epoch"):
        assert resumed[key] == full[key]
    assert resumed["val_acc_best"] >= before["best_val"]
    with open(tmp_path / "full" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(row["val_acc"] != "" for row in rows)


def test_visualize_reads_a_checkpoint_written_before_data_num_workers_was_removed(tmp_path) -> None:
    """Older checkpoints store data.num_workers; visualize (like eval) upgrades the stored config."""
    from anm.train import main, parse_args
    from anm.visualize import main as visualize
    from anm.visualize import parse_args as visualize_args
    from shared.checkpoint import load_checkpoint, save_checkpoint

    main(parse_args(_cli(tmp_path, "run", "--dividemix.epochs", "1")))
    state = load_checkpoint(tmp_path / "run" / "last.pt", package="anm")
    state["config"]["data"]["num_workers"] = 5
    save_checkpoint(state, tmp_path / "run" / "old.pt")
    out = visualize(visualize_args(["--checkpoint", str(tmp_path / "run" / "old.pt"), "--num", "2"]))
    assert out.is_file() and out.stat().st_size > 0
