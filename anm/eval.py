"""Re-evaluate an anm run from its last.pt / best.pt: test accuracy of the two-network ensemble and of each network.

    python -m anm.eval --checkpoint runs/anm/default/<time>/last.pt [--output_dir DIR] [--device cpu]
    python -m anm.eval --checkpoint D/best.pt --data.root /data/clothing1m       # any config key of the run

Rebuilds the test split from the config stored in the checkpoint (``--key value`` overrides it, e.g.
``--data.root``), so the numbers are recomputed, not copied. Writes metrics.json into --output_dir (default:
<checkpoint folder>/eval/).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from anm.config import PACKAGE, Config
from anm.data import build_task
from anm.engine import build_models
from shared.checkpoint import load_checkpoint
from shared.config import parse_config, parse_eval_config
from shared.logger import write_json
from shared.noisy.supervised import evaluate_accuracy


def evaluate(state: dict[str, Any], cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Test accuracy of the checkpoint's networks (ensemble = sum of logits, as DivideMix tests)."""
    device = torch.device(cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    task = build_task(cfg.data, run_dir, write_noise=False)
    # the checkpoint's weights replace the SSL initialisation, so the SSL file is not needed here
    nets = build_models(replace(cfg, model=replace(cfg.model, pretrained=None)), task.num_classes)
    for k, net in enumerate(nets):
        net.load_state_dict(state[f"net{k + 1}"])
        net.to(device)
    batch = cfg.dividemix.eval_batch_size
    args = (task.test_source, task.test_labels, task.eval_transform, device, batch)
    return {
        "epoch": int(state["epoch"]),
        "test_acc": evaluate_accuracy(nets, *args),
        "test_acc_net1": evaluate_accuracy(nets[0], *args),
        "test_acc_net2": evaluate_accuracy(nets[1], *args),
    }


@dataclass
class Evaluation:
    """What one evaluation reads: the checkpoint (path and content), the run's config, and where metrics go."""

    checkpoint: Path
    state: dict[str, Any]
    config: Config
    output_dir: Path


def parse_args(argv: Sequence[str] | None = None) -> Evaluation:
    """``--checkpoint`` and ``--output_dir``; the run's config is the one stored in the checkpoint, overridden by
    ``-c FILE`` / ``--key value`` (:func:`shared.config.parse_eval_config`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--checkpoint", required=True, help="last.pt or best.pt of an anm run")
    parser.add_argument("--output_dir", default=None, help="default: <checkpoint folder>/eval")
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        parser.print_help()
        parse_config(Config, ["--help"], description="config keys (override the checkpoint's stored config)")
    args, rest = parser.parse_known_args(argv)
    checkpoint = Path(args.checkpoint)
    state = load_checkpoint(checkpoint, package=PACKAGE, required=("net1", "net2", "config", "epoch"))
    cfg = parse_eval_config(Config, state["config"], rest, description=__doc__.splitlines()[0])
    out = Path(args.output_dir) if args.output_dir else checkpoint.parent / "eval"
    return Evaluation(checkpoint=checkpoint, state=state, config=cfg, output_dir=out)


def main(ev: Evaluation) -> dict[str, Any]:
    """Evaluate the checkpoint; writes <output_dir>/metrics.json and returns the metrics."""
    if ev.config.threads:
        torch.set_num_threads(ev.config.threads)
    metrics = evaluate(ev.state, ev.config, ev.checkpoint.parent)
    write_json(metrics, ev.output_dir / "metrics.json")
    print(
        f"epoch {metrics['epoch']}: test accuracy {metrics['test_acc']:.2f} (net1 {metrics['test_acc_net1']:.2f}, "
        f"net2 {metrics['test_acc_net2']:.2f})"
    )
    print(f"wrote {ev.output_dir / 'metrics.json'}")
    return metrics


if __name__ == "__main__":
    main(parse_args())
