"""Re-evaluate an anm run from its last.pt / best.pt: test accuracy of the two-network ensemble and of each network.

    python -m anm.eval --checkpoint runs/anm/default/<time>/last.pt [--output_dir DIR] [--device cpu]
    python -m anm.eval --checkpoint D/best.pt --data.root /data/clothing1m       # any config key of the run

Rebuilds the test split from the config stored in the checkpoint (``--key value`` overrides it, e.g.
``--data.root``), so the numbers are recomputed, not copied. Writes metrics.json into --output_dir (default:
<checkpoint folder>/eval/).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from anm.config import PACKAGE, Config
from anm.data import build_task
from anm.engine import build_models
from shared.entrypoints import Evaluation, checkpoint_parser, run_evaluation
from shared.noisy.supervised import evaluate_accuracy
from shared.training import resolve_device


def evaluate(state: dict[str, Any], cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Test accuracy of the checkpoint's networks (ensemble = sum of logits, as DivideMix tests)."""
    device = resolve_device(cfg.device)
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


parse_args = checkpoint_parser(
    Config,
    __doc__,
    PACKAGE,
    required=("net1", "net2", "config", "epoch"),
    checkpoint_help="last.pt or best.pt of an anm run",
)


def _report(metrics: dict[str, Any], path: Path) -> str:
    return (
        f"epoch {metrics['epoch']}: test accuracy {metrics['test_acc']:.2f} (net1 {metrics['test_acc_net1']:.2f}, "
        f"net2 {metrics['test_acc_net2']:.2f})\nwrote {path}"
    )


def main(ev: Evaluation) -> dict[str, Any]:
    """Evaluate the checkpoint; writes <output_dir>/metrics.json and returns the metrics."""
    return run_evaluation(ev, lambda ev: evaluate(ev.state, ev.config, ev.checkpoint.parent), _report)


if __name__ == "__main__":
    main(parse_args())
