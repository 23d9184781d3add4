"""Evaluate SLEEG on anomaly-segmentation sets: pixel-pooled AP, AUROC and FPR95 of max-softmax, energy and SLEEG.

    python eval.py --checkpoint runs/.../last.pt [--output_dir DIR] [-c configs/NAME.yaml] [--key value ...]
    python eval.py --checkpoint sleeg_cityscapes.pth -c configs/cityscapes_r101.yaml     # the authors' SLEEG file

The evaluation settings (datasets, test scales, score formula) come from the config stored in the checkpoint, then
the YAML file given with ``-c``, then the command line (``shared.config.parse_eval_config``). ``--checkpoint`` also
accepts the authors' trained SLEEG file (mmseg layout with ``patch_head.*``); its settings then come from ``-c``
(default ``configs/cityscapes_r101.yaml``). The protocol is :mod:`energy_anomaly_seg.evaluation`'s (README, Fidelity
notes). Writes ``metrics.json``, ``curves_<dataset>.png`` and per-image panels ``vis/<dataset>/<name>.png`` into
``--output_dir`` (default ``<checkpoint folder>/eval``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from energy_anomaly_seg.config import CONFIG_DIR, PACKAGE, TrainConfig
from energy_anomaly_seg.evaluation import evaluate_datasets
from energy_anomaly_seg.mmseg_checkpoint import load_mmseg_checkpoint, unwrap_state_dict
from energy_anomaly_seg.model import SLEEG, create_model
from shared.checkpoint import CheckpointError, load_checkpoint
from shared.config import parse_config, parse_eval_config
from shared.distributed import init_distributed
from shared.logger import RunLogger

__all__ = ["Evaluation", "evaluate", "main", "parse_args"]

DESCRIPTION = __doc__.splitlines()[0]


@dataclass
class Evaluation:
    """What ``main`` evaluates: the checkpoint, its loaded state, the resolved config and the output folder."""

    checkpoint: Path
    state: dict[str, Any]
    trained_here: bool  # a train.py checkpoint (else the authors' mmseg SLEEG file)
    config: TrainConfig
    output_dir: Path


def read_evaluation_checkpoint(path: str | Path) -> tuple[dict[str, Any], bool]:
    """Load ``path`` and say whether it is a ``train.py`` checkpoint (True) or an mmseg-layout SLEEG file (False).

    Raises:
        CheckpointError: a missing, unreadable or another package's file, a file that is neither of the two kinds,
            and a ``train.py`` checkpoint whose OoD head is not trained yet. Nothing is written.
    """
    state = load_checkpoint(path, package=PACKAGE)
    if "config" in state and "model" in state:
        if state.get("phase") != "ood_head":
            raise CheckpointError(
                f"{path} is a '{state.get('phase')}'-phase checkpoint: its OoD head is not trained "
                "yet; resume train.py with --resume to finish the run"
            )
        return state, True
    try:
        keys = unwrap_state_dict(state)
    except TypeError as err:
        raise CheckpointError(
            f"not a {PACKAGE} checkpoint: {path} is neither a train.py checkpoint nor an mmseg state dict ({err})"
        ) from err
    if not any(k.startswith("patch_head.") for k in keys):
        raise CheckpointError(
            f"not a {PACKAGE} checkpoint: {path} has no 'config'/'model' entries (train.py) and "
            "no patch_head.* weights (the authors' SLEEG file)"
        )
    return state, False


def evaluate(model: SLEEG, cfg: TrainConfig, out_dir: Path | None, logger: RunLogger | None) -> dict[str, Any]:
    """Every ``cfg.eval.datasets`` set through :func:`energy_anomaly_seg.evaluation.evaluate_datasets`."""
    model.eval()
    return evaluate_datasets(model, cfg.eval, cfg.synthetic, out_dir, logger)


def parse_args(argv: Sequence[str] | None = None) -> Evaluation:
    """``--checkpoint`` and ``--output_dir``; the config is the one stored in the checkpoint (the authors' file:
    ``configs/cityscapes_r101.yaml``), overridden by ``-c FILE`` / ``--key value``. The checkpoint is read and
    checked before anything is written."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--checkpoint", help="train.py checkpoint or the authors' SLEEG mmseg file")
    pre.add_argument("--output_dir", default=None, help="default: <checkpoint folder>/eval")
    known, rest = pre.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if known.checkpoint is None:
        if {"-h", "--help"} & set(rest):  # the config keys' help (exits)
            parse_config(TrainConfig, rest, description=f"{DESCRIPTION} (--checkpoint PATH required)")
        pre.error("the following argument is required: --checkpoint PATH")
    checkpoint = Path(known.checkpoint)
    state, trained_here = read_evaluation_checkpoint(checkpoint)
    if trained_here:
        cfg = parse_eval_config(TrainConfig, TrainConfig.upgrade_stored(state["config"]), rest, description=DESCRIPTION)
    else:
        cfg = parse_config(
            TrainConfig, rest, description=DESCRIPTION, default_config=CONFIG_DIR / "cityscapes_r101.yaml"
        )
    out = Path(known.output_dir) if known.output_dir else checkpoint.resolve().parent / "eval"
    return Evaluation(checkpoint=checkpoint, state=state, trained_here=trained_here, config=cfg, output_dir=out)


def main(ev: Evaluation) -> dict[str, Any]:
    """Evaluate the checkpoint; writes ``<output_dir>/metrics.json`` and returns the metrics."""
    cfg = ev.config
    ctx = init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = create_model(cfg.model.variant, num_classes=cfg.model.num_classes)
    if ev.trained_here:
        model.load_state_dict(ev.state["model"], strict=True)
    else:
        load_mmseg_checkpoint(model, ev.state, allow_missing_ood_head=False)
    model.to(ctx.device)
    logger = RunLogger(ev.output_dir, tensorboard=False, name="eval")  # after the weights loaded: nothing written else
    logger.info(
        f"checkpoint {ev.checkpoint}: sleeg_{cfg.model.variant}, score '{cfg.eval.score_formula}' "
        f"(weight {cfg.eval.score_weight}), scales {cfg.eval.scales}, flip {cfg.eval.flip}"
    )
    metrics = evaluate(model, cfg, ev.output_dir, logger)
    metrics["checkpoint"] = str(ev.checkpoint)
    logger.write_metrics(metrics)
    logger.close()
    return metrics


if __name__ == "__main__":
    main(parse_args())
