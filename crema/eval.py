"""Evaluate a CREMA checkpoint on the clean test split.

    python -m crema.eval --checkpoint PATH [--output_dir DIR] [--key value ...]

The config comes from the checkpoint (``parse_eval_config``); ``--data.root`` etc. may be overridden. Prints the
test accuracy (two networks: each one and the ensemble of summed logits) and writes ``metrics.json`` to
``--output_dir`` (default: ``<checkpoint folder>/eval``). The networks are built without ``model.pretrained``
(the checkpoint's weights replace the ImageNet initialisation), so a Clothing1M run is evaluated without that file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from crema.config import PACKAGE, Config, check_config
from crema.data import build_task
from crema.train import build_nets
from shared.entrypoints import Evaluation, checkpoint_parser, run_evaluation
from shared.noisy.supervised import evaluate_accuracy
from shared.training import resolve_device

__all__ = ["Evaluation", "evaluate", "main", "parse_args"]


parse_args = checkpoint_parser(
    Config, __doc__, PACKAGE, required=("config", "net1"), checkpoint_help="last.pt or best.pt of a crema run"
)


@torch.no_grad()
def evaluate(cfg: Config, state: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """Test accuracy of each network of the checkpoint ``state`` and of their ensemble."""
    check_config(cfg, training=False)
    device = resolve_device(cfg.device)
    task = build_task(cfg.data, checkpoint.parent)
    # the checkpoint's weights replace the ImageNet initialisation, so the pretrained file is not needed here
    nets = build_nets(replace(cfg, model=replace(cfg.model, pretrained=None)), task, device)
    for k, net in enumerate(nets):
        key = f"net{k + 1}"
        if key not in state:
            raise ValueError(f"{checkpoint} holds no '{key}' but the config has {len(nets)} network(s)")
        net.load_state_dict(state[key])
    tf, bs = task.eval_transform, cfg.optim.eval_batch_size
    metrics: dict[str, Any] = {"checkpoint": str(checkpoint), "epoch": state.get("epoch")}
    if len(nets) > 1:
        for k, net in enumerate(nets):
            metrics[f"test_acc_net{k + 1}"] = evaluate_accuracy(net, task.test_source, task.test_labels, tf, device, bs)
    metrics["test_acc"] = evaluate_accuracy(nets, task.test_source, task.test_labels, tf, device, bs)
    return metrics


def main(ev: Evaluation) -> dict[str, Any]:
    """Evaluate the checkpoint; writes the metrics JSON and returns the metrics."""
    return run_evaluation(
        ev,
        lambda ev: evaluate(ev.config, ev.state, ev.checkpoint),
        lambda metrics, path: f"test accuracy {metrics['test_acc']:.2f} ({ev.checkpoint}); wrote {path}",
    )


if __name__ == "__main__":
    main(parse_args())
