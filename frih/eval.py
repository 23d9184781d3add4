"""Evaluate a frih checkpoint with the saic-vul iHarmony4 protocol (per subset, image-weighted "All", fg-ratio bins).

    python eval.py --checkpoint runs/frih/default/<time>/last.pt
    python -m frih.eval --checkpoint best.pt --data.root /data/iHarmony4 --output_dir results/

Prints the table and writes metrics.json (top level: the model's "All" MSE / fMSE / PSNR / PSNR_255 / fPSNR, each
row's as <row>_<metric>, the nested summary), per_image.csv, results.md and before_after.png into `--output_dir`
(default `<checkpoint folder>/eval/`). The config is the training run's, stored in the checkpoint (data settings,
threads ...); `-c` / `--key value` override it. Not taken from the training run (they keep their defaults unless
given): output_dir, device (auto), amp (off), eval_batch_size (16) and num_grid_images (8).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from frih.config import PACKAGE, Config
from frih.evaluation import evaluate_model, row_names, write_evaluation
from frih.inference import Harmonizer, model_from_state
from frih.loaders import build_eval_loader, resolve_data_root
from shared.entrypoints import Evaluation, checkpoint_parser
from shared.training import resolve_device

__all__ = ["EvalConfig", "evaluate", "main", "parse_args"]

#: Keys of the stored training config that the evaluation does not inherit (they keep EvalConfig's defaults), and
#: the keys that checkpoints written before the RunConfig names may hold (eval_every, log_every).
NOT_INHERITED = ("output_dir", "device", "amp", "eval_batch_size", "num_grid_images", "eval_every", "log_every")


@dataclass
class EvalConfig(Config):
    """The training config (from the checkpoint) plus what the evaluation chooses."""

    split: str = "test"
    mode: Literal["full", "lowres"] = field(default="full", metadata={"help": "Harmonizer mode (see inference.py)"})
    lowres_size: int = 256


def evaluate(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, cfg: EvalConfig, arch: str
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The protocol on `loader` in the configured Harmonizer mode: (summary, per-image records, grid samples)."""
    harmonizer = Harmonizer(model, device, mode=cfg.mode, lowres_size=cfg.lowres_size, amp=cfg.amp)
    return evaluate_model(harmonizer, loader, arch, num_grid=cfg.num_grid_images)


# The checkpoint's stored training config < `-c` recipe < `--key value` flags (see the module docstring).
parse_args = checkpoint_parser(
    EvalConfig,
    __doc__,
    PACKAGE,
    required=("model", "config"),
    checkpoint_help="train.py checkpoint (last.pt / best.pt)",
    ignore=NOT_INHERITED,
)


def main(ev: Evaluation) -> dict[str, Any]:
    """Evaluate `ev.checkpoint`; writes and returns the metrics."""
    cfg = ev.config
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    model, train_cfg = model_from_state(ev.state, device), ev.state["config"]
    root = resolve_data_root(cfg.data)
    loader = build_eval_loader(cfg.data, root, cfg.eval_batch_size, cfg.split)
    arch = train_cfg["model"]["arch"]
    summary, records, grid = evaluate(model, loader, device, cfg, arch)
    out_dir = ev.output_dir
    extra = {
        "checkpoint": str(ev.checkpoint),
        "split": cfg.split,
        "data_root": str(root),
        "mode": cfg.mode,
        "eval_size": cfg.data.eval_size,
    }
    metrics = write_evaluation(out_dir, summary, records, grid, main_row=row_names(arch)[1], extra=extra)
    print(f"wrote {out_dir / 'metrics.json'}")
    return metrics


if __name__ == "__main__":
    main(parse_args())
