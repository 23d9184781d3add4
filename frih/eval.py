"""Evaluate a frih checkpoint with the saic-vul iHarmony4 protocol (per subset, image-weighted "All", fg-ratio bins).

    python eval.py --checkpoint runs/frih/default/<time>/last.pt
    python -m frih.eval --checkpoint best.pt --data.root /data/iHarmony4 --output_dir results/

Prints the table and writes metrics.json (top level: the model's "All" MSE / fMSE / PSNR / PSNR_255 / fPSNR, each
row's as <row>_<metric>, the nested summary), per_image.csv, results.md and before_after.png into `output_dir`
(default `<checkpoint folder>/eval/`). The data settings default to the training run's (stored in the checkpoint);
`--data.*` flags override them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from frih.evaluation import evaluate_harmonizer, summarize
from frih.inference import Harmonizer, load_model_from_checkpoint
from frih.train import DataConfig, build_eval_loader, resolve_data_root, write_evaluation
from shared.config import config_from_dict, parse_config


@dataclass
class EvalDataConfig:
    """Overrides of the training run's data settings (null = keep the checkpoint's)."""

    root: str | None = None
    test_subsets: list[str] | None = None
    eval_size: int | None = field(default=None, metadata={"help": "Resize side (0 = native resolution)"})
    num_workers: int | None = None


@dataclass
class EvalConfig:
    checkpoint: str = field(default="", metadata={"help": "train.py checkpoint (last.pt / best.pt)"})
    output_dir: str | None = field(default=None, metadata={"help": "default: <checkpoint folder>/eval"})
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    split: str = "test"
    mode: Literal["full", "lowres"] = field(default="full", metadata={"help": "Harmonizer mode (see inference.py)"})
    lowres_size: int = 256
    batch_size: int = 16
    device: str | None = None
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (null: the training run's)"})
    amp: Literal["none", "bf16", "fp16"] = "none"
    num_grid_images: int = 8


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse_config(EvalConfig, argv, description=__doc__.splitlines()[0])
    if not cfg.checkpoint:
        raise SystemExit("eval.py: --checkpoint PATH is required")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, train_cfg = load_model_from_checkpoint(cfg.checkpoint, device)
    threads = cfg.threads or train_cfg.get("threads")
    if threads:
        torch.set_num_threads(threads)
    data = config_from_dict(DataConfig, train_cfg["data"])
    overrides = {k: v for k, v in vars(cfg.data).items() if v is not None}
    data = config_from_dict(DataConfig, overrides, base=data)
    root = resolve_data_root(data)
    loader = build_eval_loader(data, root, cfg.batch_size, cfg.split)
    arch = train_cfg["model"]["arch"]
    harmonizer = Harmonizer(model, device, mode=cfg.mode, lowres_size=cfg.lowres_size, amp=cfg.amp)
    records, grid = evaluate_harmonizer(harmonizer, loader, stage1_name="stage1" if arch == "frih" else arch,
                                        num_grid=cfg.num_grid_images)
    out_dir = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.checkpoint).resolve().parent / "eval"
    extra = {"checkpoint": str(cfg.checkpoint), "split": cfg.split, "data_root": str(root), "mode": cfg.mode,
             "eval_size": data.eval_size}
    metrics = write_evaluation(out_dir, summarize(records), records, grid, main_row="frih" if arch == "frih" else arch,
                               extra=extra)
    print(f"wrote {out_dir / 'metrics.json'}")
    return metrics


if __name__ == "__main__":
    main()
