"""Re-evaluate a DMLP run from its last.pt: test accuracy of every retrained model, label accuracy of the labels.

    python -m dmlp.eval --checkpoint runs/dmlp/default/<time>/last.pt [--output_dir DIR] [--device cpu]
    python -m dmlp.eval --checkpoint D/last.pt --data.root /data/cifar     # any config key of the run

Rebuilds the test split from the config stored in the checkpoint (the same dataset root / synthetic set; ``--key
value`` overrides it, e.g. ``--data.root``), so the numbers are recomputed, not copied. Writes metrics.json into
--output_dir (default: <checkpoint folder>/eval/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dmlp.config import Config
from dmlp.data import NoisyTask, build_task
from dmlp.provenance import PACKAGE
from dmlp.stages import summary
from shared.entrypoints import Evaluation, checkpoint_parser, run_evaluation
from shared.noisy.metrics import label_accuracy
from shared.noisy.models import build_backbone
from shared.noisy.supervised import evaluate_accuracy
from shared.training import resolve_device


def label_accuracies(state: dict[str, Any]) -> dict[str, float]:
    """Accuracy of the noisy and purified labels of a last.pt bundle on the purified rows (meta rows left out)."""
    if "clean_labels" not in state:
        return {}
    clean, noisy = state["clean_labels"], state["noisy_labels"]
    rows = torch.ones(len(clean), dtype=torch.bool)
    if "meta_indices" in state:
        rows[state["meta_indices"]] = False
    metrics = {"label_acc_noisy": label_accuracy(noisy[rows], clean[rows])}
    if "purified_labels" in state:
        metrics["label_acc_purified"] = label_accuracy(state["purified_labels"][rows], clean[rows])
    return metrics


def evaluate(
    models: dict[str, torch.nn.Module], cfg: Config, task: NoisyTask, device: torch.device
) -> dict[str, float]:
    """Test accuracy of each retrained model; the two DivideMix networks are tested as their ensemble."""
    r = cfg.retrain
    metrics = {}
    for tag, model in models.items():
        if tag.startswith("dmlp_dividemix"):
            continue
        metrics[f"test_acc_{tag}"] = evaluate_accuracy(
            model, task.test_source, task.test_labels, task.eval_transform, device, r.supervised.eval_batch_size
        )
    if "dmlp_dividemix_net1" in models:
        metrics["test_acc_dmlp_dividemix"] = evaluate_accuracy(
            [models["dmlp_dividemix_net1"], models["dmlp_dividemix_net2"]],
            task.test_source,
            task.test_labels,
            task.eval_transform,
            device,
            r.dividemix.eval_batch_size,
        )
    return metrics


def evaluate_run(state: dict[str, Any], cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Metrics of a last.pt bundle (recomputed on the test split that ``cfg`` describes)."""
    device = resolve_device(cfg.device)
    task = build_task(cfg.data, run_dir, write_noise=False)
    models = {}
    for tag, weights in state["models"].items():
        model = build_backbone(cfg.retrain.arch, task.num_classes, cfg.retrain.width)
        model.load_state_dict(weights)
        models[tag] = model.to(device)
    return {**label_accuracies(state), **evaluate(models, cfg, task, device)}


parse_args = checkpoint_parser(
    Config,
    __doc__,
    PACKAGE,
    required=("models", "config"),
    checkpoint_help="last.pt of a dmlp run",
)


def main(ev: Evaluation) -> dict[str, Any]:
    """Evaluate the checkpoint; writes <output_dir>/metrics.json and returns the metrics."""
    return run_evaluation(
        ev,
        lambda ev: evaluate_run(ev.state, ev.config, ev.checkpoint.parent),
        lambda metrics, path: f"{summary(metrics)}\nwrote {path}",
    )


if __name__ == "__main__":
    main(parse_args())
