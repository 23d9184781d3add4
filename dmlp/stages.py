"""The three stages of a DMLP run, each resumable from its file in the run folder (see README, Quick start).

  ssl      SimCLR on the training images (CIFAR) or an external checkpoint (``ssl.checkpoint``) -> ssl.pt
  purify   frozen features -> IPC + EAC -> purified_labels.json (hard + soft, noise-file format), purifier.pt
  retrain  DMLP-Naive (CE on the purified labels) or DMLP-DivideMix, plus the baselines ``retrain.baselines``
           (CE on the noisy labels + the meta rows' true labels, CE on the meta set only) -> retrain_<tag>.pt

A stage whose file exists is reused when the file records the same config fragment and data digests as this run
would write, otherwise it is rebuilt (:mod:`dmlp.provenance`). A non-finite or diverged stage stops with
:class:`StageDivergedError`, whose message starts with the stage's name.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmlp.config import Config
from dmlp.data import NoisyTask
from dmlp.provenance import PACKAGE, digest, load_stage_file, reusable, source_digest, stamp
from dmlp.purifier import DMLPPurifier
from shared.checkpoint import restore_training_state, save_checkpoint, training_state
from shared.config import config_to_dict
from shared.distributed import DistContext
from shared.logger import RunLogger
from shared.noisy.data import CIFAR_MEAN, CIFAR_STD, load_label_file, save_label_file
from shared.noisy.dividemix import DivideMix
from shared.noisy.features import extract_features
from shared.noisy.metrics import label_accuracy
from shared.noisy.models import build_backbone
from shared.noisy.simclr import SimCLR, SimCLRAugment, load_ssl_checkpoint, train_simclr_epoch
from shared.noisy.supervised import train_supervised
from shared.training import NonFiniteLossError, check_finite_parameters, warmup_cosine_schedule

__all__ = [
    "StageDivergedError",
    "check_features",
    "features_of",
    "run_purify",
    "run_retrain",
    "run_ssl",
    "stage_guard",
    "summary",
]


class StageDivergedError(NonFiniteLossError):
    """A stage (ssl, purify, retrain) met NaN/inf values or diverged; the message starts with the stage's name."""


@contextlib.contextmanager
def stage_guard(stage: str) -> Iterator[None]:
    """Re-raise a non-finite loss/gradient/parameter/state error of ``stage`` as :class:`StageDivergedError`."""
    try:
        yield
    except StageDivergedError:
        raise
    except FloatingPointError as err:  # NonFiniteLossError (and subclasses), shared.checkpoint.NonFiniteStateError
        raise StageDivergedError(f"{stage} stage: {err}") from err


def _without(section: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k not in keys}


def ssl_made_from(cfg: Config, task: NoisyTask) -> dict[str, Any]:
    """What ssl.pt / ssl_state.pt depend on: the SimCLR recipe, the seed and the training images."""
    section = _without(config_to_dict(cfg)["ssl"], "checkpoint", "feature_batch_size", "standardize_features")
    return {"stage": "ssl", "ssl": section, "seed": cfg.seed, "images": source_digest(task.train_source)}


# ------------------------------------------------------------------------------------------------------ stage 1
def run_ssl(cfg: Config, task: NoisyTask, out_dir: Path, device: torch.device, logger: RunLogger) -> torch.nn.Module:
    """Return the frozen encoder: external checkpoint, a finished ssl.pt, or SimCLR training (resumable)."""
    encoder = build_backbone(cfg.ssl.arch, 0, cfg.ssl.width).to(device)
    if cfg.ssl.checkpoint:
        target = encoder.body if cfg.ssl.arch == "resnet50" else encoder
        load_ssl_checkpoint(target, cfg.ssl.checkpoint)
        logger.info(f"ssl: encoder loaded from {cfg.ssl.checkpoint}")
        return encoder
    made_from = ssl_made_from(cfg, task)
    if (out_dir / "ssl.pt").is_file():
        state = load_stage_file(out_dir / "ssl.pt", ("encoder",))
        if reusable(state, made_from, out_dir / "ssl.pt", logger.info):
            encoder.load_state_dict(state["encoder"])
            logger.info(f"ssl: reusing {out_dir / 'ssl.pt'}")
            return encoder
    if "ssl" not in cfg.stages:
        raise FileNotFoundError(
            f"stage 'ssl' is not selected and {out_dir / 'ssl.pt'} does not exist; add 'ssl' to "
            "--stages or pass --ssl.checkpoint"
        )
    if not task.in_memory:
        raise ValueError(
            "SimCLR training is implemented for CIFAR; for Clothing1M pass the MoCo checkpoint with "
            "--ssl.checkpoint (the DMLP README names the published weights)"
        )
    train_simclr(cfg, task, encoder, made_from, out_dir, device, logger)
    return encoder


def train_simclr(
    cfg: Config,
    task: NoisyTask,
    encoder: torch.nn.Module,
    made_from: dict[str, Any],
    out_dir: Path,
    device: torch.device,
    logger: RunLogger,
) -> None:
    """SimCLR on the training images (resumed from ssl_state.pt when it was made from the same recipe), then the
    collapse check and ssl.pt."""
    c = cfg.ssl
    images = task.train_source if c.train_subset is None else task.train_source[: c.train_subset]
    model = SimCLR(encoder, c.proj_dim).to(device)
    if c.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=0.9, weight_decay=c.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    steps = max(1, len(images) // c.batch_size)
    scheduler = warmup_cosine_schedule(optimizer, c.epochs * steps, c.warmup_epochs * steps)
    augment = SimCLRAugment(
        CIFAR_MEAN[task.num_classes],
        CIFAR_STD[task.num_classes],
        scale=tuple(c.crop_scale),
        jitter_strength=c.jitter_strength,
        gray_prob=c.gray_prob,
    )
    start, step = 0, 0
    state_path = out_dir / "ssl_state.pt"
    state = None
    if state_path.is_file():
        state = load_stage_file(state_path, ("model", "optimizer", "scheduler", "epoch", "step", "rng"))
        if not reusable(state, made_from, state_path, logger.info):
            state = None
    if state is not None:
        restore_training_state(state, model=model, optimizer=optimizer, scheduler=scheduler)
        start, step = state["epoch"] + 1, state["step"]
        logger.info(f"ssl: resumed SimCLR at epoch {start}")
    else:
        logger.info(f"ssl: SimCLR from random initialisation on {len(images)} images, {c.epochs} epochs")
    ssl_logger = RunLogger(out_dir / "ssl", tensorboard=False, name="ssl")
    for epoch in range(start, c.epochs):
        loss, step, img_s = train_simclr_epoch(
            model, images, augment, optimizer, c.batch_size, c.temperature, step, device, scheduler
        )
        check_finite_parameters(model, step, "SimCLR model")
        save_checkpoint(
            stamp(
                training_state(PACKAGE, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch, step=step),
                made_from,
            ),
            state_path,
        )
        ssl_logger.log_epoch(epoch, {"simclr_loss": loss, "img_s": img_s, "lr": optimizer.param_groups[0]["lr"]})
    ssl_logger.close()
    # A runaway lr can leave finite weights whose features are constant: refuse them before ssl.pt is written.
    check_features(
        {"train": extract_features(encoder, images[:256], task.batch_transform, c.feature_batch_size, device)}
    )
    save_checkpoint(
        stamp({"encoder": encoder.state_dict(), "arch": c.arch, "width": c.width}, made_from), out_dir / "ssl.pt"
    )


# ------------------------------------------------------------------------------------------------------ stage 2
def features_of(
    cfg: Config, task: NoisyTask, encoder: torch.nn.Module, out_dir: Path, device: torch.device, logger: RunLogger
) -> dict[str, torch.Tensor]:
    """Frozen features of the training, meta and test sets (cached in features.pt; see :func:`check_features`)."""
    path = out_dir / "features.pt"
    splits = ("train", "test") if task.in_memory else ("train", "meta", "test")
    sources = (
        [task.train_source, task.test_source]
        if task.in_memory
        else [task.train_source, task.meta_source, task.test_source]
    )
    made_from = {
        "stage": "features",
        "encoder": digest(encoder.state_dict()),
        "images": [source_digest(s) for s in sources],
    }
    if path.is_file():
        state = load_stage_file(path, splits)
        if reusable(state, made_from, path, logger.info):
            feats = {k: state[k] for k in splits}
            check_features(feats)
            return feats
    bs = cfg.ssl.feature_batch_size
    if task.in_memory:
        train = extract_features(encoder, task.train_source, task.batch_transform, bs, device)
        feats = {"train": train, "test": extract_features(encoder, task.test_source, task.batch_transform, bs, device)}
    else:
        from shared.noisy.data import ViewDataset

        def run(source):
            return extract_features(
                encoder, ViewDataset(source, task.eval_transform), None, bs, device, cfg.data.num_workers
            )

        feats = {"train": run(task.train_source), "meta": run(task.meta_source), "test": run(task.test_source)}
    check_features(feats)
    save_checkpoint(stamp(feats, made_from), path)
    return feats


def check_features(feats: dict[str, torch.Tensor]) -> None:
    """The encoder's output must be finite and not collapsed (every feature equal for all training images, as after
    a runaway SimCLR lr); otherwise the ssl stage stops here instead of the purifier failing on its input."""
    for split, x in feats.items():
        if not bool(torch.isfinite(x).all()):
            raise StageDivergedError(
                f"ssl stage: the encoder's {split} features hold NaN/inf; the SSL encoder "
                "diverged (lower --ssl.lr) or --ssl.checkpoint holds broken weights"
            )
    train = feats["train"]
    if len(train) > 1 and bool((train.amax(0) == train.amin(0)).all()):
        raise StageDivergedError(
            f"ssl stage: the encoder collapsed: its {train.shape[1]} features are identical for "
            f"all {len(train)} training images, so nothing can be purified from them (lower "
            "--ssl.lr, or check --ssl.checkpoint)"
        )


def run_purify(
    cfg: Config, task: NoisyTask, feats: dict[str, torch.Tensor], out_dir: Path, device: torch.device, logger: RunLogger
) -> dict[str, Any]:
    """IPC + EAC on the frozen features (resumable per epoch), then export the purified labels."""
    train_feats = feats["train"]
    if task.meta_indices is not None:
        x_t, x_v = train_feats[task.train_indices], train_feats[task.meta_indices]
    else:
        x_t, x_v = train_feats, feats["meta"]
    x_test = feats["test"]
    if cfg.ssl.standardize_features:
        mean, std = x_t.mean(0), x_t.std(0).clamp_min(1e-6)
        x_t, x_v, x_test = ((x - mean) / std for x in (x_t, x_v, x_test))
    noisy = task.noisy_labels[task.train_indices]
    recipe = _without(config_to_dict(cfg)["purifier"], "epochs", "max_label_magnitude")
    made_from = {
        "stage": "purify",
        "purifier": recipe,
        "standardize_features": cfg.ssl.standardize_features,
        "seed": cfg.seed,
        "features": digest(train_feats, feats.get("meta")),
        "labels": digest(noisy, task.meta_labels, task.train_indices, task.meta_indices),
    }
    purifier = DMLPPurifier(x_t, noisy, x_v, task.meta_labels, task.num_classes, cfg.purifier, device, cfg.seed)
    state_path = out_dir / "purifier.pt"
    if state_path.is_file():
        state = load_stage_file(state_path, ("purifier",))
        if reusable(state, made_from, state_path, logger.info):
            purifier.load_state_dict(state["purifier"])
            logger.info(f"purify: resumed at epoch {purifier.epoch}")
    clean = task.clean_labels[task.train_indices] if task.clean_labels is not None else None
    plog = RunLogger(out_dir / "purify", tensorboard=False, name="purify")
    t0 = time.perf_counter()
    while purifier.epoch < cfg.purifier.epochs:
        epoch = purifier.epoch
        row = purifier.run_epoch()
        if clean is not None:
            row["label_acc"] = label_accuracy(purifier.hard_labels(), clean)
        if epoch % 10 == 9 or purifier.epoch == cfg.purifier.epochs:
            row.update(purifier.linear_probe_accuracy(x_test, task.test_labels))
        save_checkpoint(stamp({"purifier": purifier.state_dict()}, made_from), state_path)
        plog.log_epoch(epoch, row)
    plog.close()
    elapsed = time.perf_counter() - t0
    hard, soft = purifier.hard_labels(), purifier.soft_labels()
    # Full training set: purified labels on the purified rows, the true labels on the meta rows.
    full_hard = task.noisy_labels.clone()
    full_soft = torch.nn.functional.one_hot(task.noisy_labels, task.num_classes).float()
    full_hard[task.train_indices], full_soft[task.train_indices] = hard, soft
    if task.meta_indices is not None:
        full_hard[task.meta_indices] = task.meta_labels
        full_soft[task.meta_indices] = torch.nn.functional.one_hot(task.meta_labels, task.num_classes).float()
    save_label_file(
        out_dir / "purified_labels.json",
        full_hard,
        task.num_classes,
        clean=task.clean_labels,
        soft=full_soft,
        source="dmlp purifier (IPC + EAC)",
        noise=task.noise,
    )
    result: dict[str, Any] = {"purify_time_s": elapsed, **purifier.linear_probe_accuracy(x_test, task.test_labels)}
    if clean is not None:
        result["label_acc_noisy"] = label_accuracy(noisy, clean)
        result["label_acc_purified"] = label_accuracy(hard, clean)
        logger.info(
            f"purify: label accuracy {result['label_acc_noisy']:.2f}% (noisy) -> "
            f"{result['label_acc_purified']:.2f}% (purified) on {len(clean)} samples in {elapsed:.1f}s"
        )
    return result


# ------------------------------------------------------------------------------------------------------ stage 3
def _init_model(cfg: Config, task: NoisyTask, out_dir: Path, device: torch.device) -> torch.nn.Module:
    r = cfg.retrain
    model = build_backbone(r.arch, task.num_classes, r.width)
    if r.init == "ssl":
        if cfg.ssl.checkpoint:
            load_ssl_checkpoint(model.body if r.arch == "resnet50" else model, cfg.ssl.checkpoint)
        else:
            encoder = load_stage_file(out_dir / "ssl.pt", ("encoder",))["encoder"]
            missing = model.load_state_dict(encoder, strict=False).missing_keys
            if any(not k.startswith(("linear", "body.fc")) for k in missing):
                raise ValueError(f"ssl.pt does not match retrain.arch/width: missing {missing[:3]}")
    elif r.init == "pretrained":
        if not r.pretrained:
            raise ValueError(
                "retrain.init=pretrained needs --retrain.pretrained PATH (e.g. torchvision ImageNet ResNet-50 weights)"
            )
        load_ssl_checkpoint(model.body if r.arch == "resnet50" else model, r.pretrained)
    return model.to(device)


def retrain_made_from(
    cfg: Config, task: NoisyTask, tag: str, labels: Any, indices: Any, out_dir: Path
) -> dict[str, Any]:
    """What retrain_<tag>.pt depends on: the retraining recipe (epochs excluded: more epochs continue a finished
    run), the seed, the training images, the labels and rows it trains on, and the initial weights."""
    r = config_to_dict(cfg)["retrain"]
    recipe = {k: r[k] for k in ("arch", "width", "init", "pretrained")}
    if tag == "dmlp_dividemix":
        recipe["dividemix"] = _without(r["dividemix"], "epochs", "eval_batch_size", "num_workers")
    else:
        recipe["supervised"] = _without(r["supervised"], "epochs", "eval_batch_size", "num_workers")
    if cfg.retrain.init == "ssl":
        init = (
            f"ssl checkpoint {cfg.ssl.checkpoint}"
            if cfg.ssl.checkpoint
            else digest(load_stage_file(out_dir / "ssl.pt", ("encoder",))["encoder"])
        )
    else:
        init = cfg.retrain.pretrained if cfg.retrain.init == "pretrained" else "scratch"
    return {
        "stage": f"retrain_{tag}",
        "retrain": recipe,
        "seed": cfg.seed,
        "images": source_digest(task.train_source),
        "labels": digest(labels, indices),
        "init": init,
    }


class _StampedDivideMix(DivideMix):
    """DivideMix whose checkpoints carry dmlp's package entry and the ``made_from`` record of the stage."""

    made_from: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return stamp(super().state_dict(), self.made_from)


def _retrain_labels(cfg: Config, task: NoisyTask, out_dir: Path) -> tuple[np.ndarray, np.ndarray | None]:
    path = Path(cfg.retrain.label_file) if cfg.retrain.label_file else out_dir / "purified_labels.json"
    record = load_label_file(path, expected_length=len(task.noisy_labels))
    return record.labels, record.soft


def run_one(
    tag: str,
    cfg: Config,
    task: NoisyTask,
    labels: Any,
    indices: Any,
    out_dir: Path,
    ctx: DistContext,
    logger: RunLogger,
) -> tuple[dict[str, Any], torch.nn.Module]:
    """One CE retraining (resumed from / skipped by its checkpoint retrain_<tag>.pt)."""
    path = out_dir / f"retrain_{tag}.pt"
    made_from = retrain_made_from(cfg, task, tag, labels, indices, out_dir)
    state = load_stage_file(path, ("model", "epoch", "tracker")) if path.is_file() else None
    if state is not None and not reusable(state, made_from, path, logger.info):
        state = None
    model = _init_model(cfg, task, out_dir, ctx.device)
    sup = cfg.retrain.supervised
    if state is not None and state["epoch"] >= sup.epochs - 1:
        model.load_state_dict(state["model"])
        t = state["tracker"]
        logger.info(f"{tag}: finished run reused from {path}")
        return {"best": t["best"], "best_epoch": t["best_epoch"], "last": t["last"], "epochs": sup.epochs}, model
    sub = RunLogger(out_dir / tag, is_main=ctx.is_main, tensorboard=False, name=f"retrain_{tag}")
    result = train_supervised(
        model,
        task.train_source,
        labels,
        task.train_transform,
        task.test_source,
        task.test_labels,
        task.eval_transform,
        sup,
        ctx,
        sub,
        path,
        indices=indices,
        resume_state=state,
        seed=cfg.seed,
        tag=tag,
        extra_state={"package": PACKAGE, "made_from": made_from},
    )
    sub.close()
    return result, model


def run_retrain(
    cfg: Config, task: NoisyTask, out_dir: Path, ctx: DistContext, logger: RunLogger
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Baselines and DMLP-Naive / DMLP-DivideMix; returns (metrics, model states)."""
    r = cfg.retrain
    hard, soft = _retrain_labels(cfg, task, out_dir)
    metrics: dict[str, Any] = {}
    states: dict[str, Any] = {}
    meta_idx = task.meta_indices
    all_idx = np.arange(len(task.noisy_labels))
    if not r.include_meta and meta_idx is not None:
        all_idx = np.setdiff1d(all_idx, meta_idx.numpy())
    for baseline in r.baselines:
        if baseline == "ce_noisy":  # the noisy labels + the meta rows' true labels, on DMLP-Naive's rows
            labels, idx = task.noisy_labels.numpy().copy(), all_idx
            if meta_idx is not None:
                labels[meta_idx.numpy()] = task.meta_labels.numpy()
        elif baseline == "meta_only":
            if meta_idx is None:
                raise ValueError("meta_only needs a meta split of the training set (CIFAR)")
            labels, idx = task.clean_labels.numpy(), meta_idx.numpy()
        else:
            raise ValueError(f"unknown baseline {baseline!r}; valid: ce_noisy, meta_only")
        result, model = run_one(baseline, cfg, task, labels, idx, out_dir, ctx, logger)
        metrics.update({f"test_acc_{baseline}": result["last"], f"best_test_acc_{baseline}": result["best"]})
        states[baseline] = model.state_dict()
    if r.mode == "naive":
        labels = soft if (r.soft_labels and soft is not None) else hard
        result, model = run_one("dmlp_naive", cfg, task, labels, all_idx, out_dir, ctx, logger)
        metrics.update({"test_acc_dmlp_naive": result["last"], "best_test_acc_dmlp_naive": result["best"]})
        states["dmlp_naive"] = model.state_dict()
    else:
        if ctx.distributed:
            raise ValueError("retrain.mode=dividemix runs in one process (its GMM co-divide needs the whole set)")
        path = out_dir / "retrain_dmlp_dividemix.pt"
        made_from = retrain_made_from(cfg, task, "dmlp_dividemix", hard, None, out_dir)
        state = load_stage_file(path, ("net1", "net2", "epoch")) if path.is_file() else None
        if state is not None and not reusable(state, made_from, path, logger.info):
            state = None
        nets = [_init_model(cfg, task, out_dir, ctx.device) for _ in range(2)]
        if r.init == "scratch":
            torch.manual_seed(cfg.seed + 1)
            nets[1] = _init_model(cfg, task, out_dir, ctx.device)
        sub = RunLogger(out_dir / "dmlp_dividemix", tensorboard=False, name="retrain_dividemix")
        engine = _StampedDivideMix.for_task(task, nets, r.dividemix, ctx.device, sub, labels=hard, seed=cfg.seed)
        engine.made_from = made_from
        result = engine.fit(path, state)
        sub.close()
        metrics.update({"test_acc_dmlp_dividemix": result["last"], "best_test_acc_dmlp_dividemix": result["best"]})
        states["dmlp_dividemix_net1"], states["dmlp_dividemix_net2"] = nets[0].state_dict(), nets[1].state_dict()
    return metrics, states


def summary(metrics: dict[str, Any]) -> str:
    """The result lines the embedded default prints."""
    lines = ["", "DMLP results"]
    names = [
        ("label_acc_noisy", "label accuracy, noisy labels"),
        ("label_acc_purified", "label accuracy, purified"),
        ("test_acc_ce_noisy", "test accuracy, CE on noisy labels + meta"),
        ("test_acc_meta_only", "test accuracy, CE on the meta set only"),
        ("test_acc_dmlp_naive", "test accuracy, DMLP-Naive"),
        ("test_acc_dmlp_dividemix", "test accuracy, DMLP-DivideMix"),
    ]
    for key, text in names:
        if key in metrics:
            lines.append(f"  {text:<42s} {metrics[key]:6.2f} %")
    return "\n".join(lines)
