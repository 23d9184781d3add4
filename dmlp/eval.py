"""Re-evaluate a DMLP run from its last.pt: test accuracy of every retrained model, label accuracy of the labels.

    python -m dmlp.eval --checkpoint runs/dmlp/default/<time>/last.pt [--output_dir DIR]

Rebuilds the test split from the config stored in the checkpoint (the same dataset root / synthetic set), so the
numbers are recomputed, not copied. Writes metrics.json into --output_dir (default: <checkpoint folder>/eval/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from dmlp.data import build_task
from dmlp.train import Config, build_network, summary
from shared.checkpoint import load_checkpoint
from shared.config import config_from_dict
from shared.logger import write_json
from shared.noisy.metrics import label_accuracy
from shared.noisy.supervised import evaluate_accuracy


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="last.pt of a dmlp run")
    parser.add_argument("--output_dir", default=None, help="default: <checkpoint folder>/eval")
    parser.add_argument("--data_root", default=None, help="override the dataset root stored in the checkpoint")
    parser.add_argument("--device", default=None)
    return parser


def evaluate_run(state: dict[str, Any], run_dir: Path, data_root: str | None = None,
                 device: str | None = None) -> dict[str, Any]:
    """Metrics of a last.pt bundle (recomputed)."""
    cfg = config_from_dict(Config, state["config"])
    if data_root is not None:
        cfg.data.root = data_root
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    task = build_task(cfg.data, run_dir, write_noise=False)
    metrics: dict[str, Any] = {}
    if "clean_labels" in state:
        clean, noisy = state["clean_labels"], state["noisy_labels"]
        rows = torch.ones(len(clean), dtype=torch.bool)
        if "meta_indices" in state:
            rows[state["meta_indices"]] = False
        metrics["label_acc_noisy"] = label_accuracy(noisy[rows], clean[rows])
        if "purified_labels" in state:
            metrics["label_acc_purified"] = label_accuracy(state["purified_labels"][rows], clean[rows])
    r = cfg.retrain
    models = {}
    for tag, weights in state["models"].items():
        model = build_network(r.arch, task.num_classes, r.width)
        model.load_state_dict(weights)
        models[tag] = model.to(dev)
    for tag, model in models.items():
        if tag.startswith("dmlp_dividemix"):
            continue
        metrics[f"test_acc_{tag}"] = evaluate_accuracy(model, task.test_source, task.test_labels, task.eval_transform,
                                                       dev, r.supervised.eval_batch_size)
    if "dmlp_dividemix_net1" in models:
        metrics["test_acc_dmlp_dividemix"] = evaluate_accuracy(
            [models["dmlp_dividemix_net1"], models["dmlp_dividemix_net2"]], task.test_source, task.test_labels,
            task.eval_transform, dev, r.dividemix.eval_batch_size)
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    checkpoint = Path(args.checkpoint)
    state = load_checkpoint(checkpoint, package="dmlp", required=("models", "config"))  # pass the run's last.pt
    torch.set_num_threads(state["config"].get("threads") or torch.get_num_threads())
    metrics = evaluate_run(state, checkpoint.parent, args.data_root, args.device)
    out = Path(args.output_dir) if args.output_dir else checkpoint.parent / "eval"
    write_json(metrics, out / "metrics.json")
    print(summary(metrics))
    print(f"wrote {out / 'metrics.json'}")
    return metrics


if __name__ == "__main__":
    main()
