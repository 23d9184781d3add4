"""Evaluate a MixTeacher checkpoint: the teacher and the student at the regular and mixed test scales (COCO AP via
pycocotools, ``shared.metrics.coco_evaluate``; VOC is evaluated the same way on ``voc07_test.json``, AP50 being the
VOC number, as in the released code).

    python -m mixteacher.eval --checkpoint runs/mixteacher/default/<time>/last.pt [--output_dir DIR]
    python -m mixteacher.eval --checkpoint last.pt --data.root data/coco --test_scales regular mixed

The config stored in the checkpoint is used; ``--key value`` flags override it (e.g. another ``data.root``).
Writes ``metrics.json`` (headline keys ``AP``, ``AP50``, ... for the teacher at ``report_scale``, one block per
model and scale, and the supervised baseline's numbers when the run folder has them) into ``output_dir``
(default ``<checkpoint folder>/eval``). A file that is not a MixTeacher checkpoint (missing, not written by
``torch.save``, another package's, incomplete) is refused with ``shared.checkpoint.CheckpointError`` before anything
is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from mixteacher.train import (
    COCO_KEYS,
    MODEL_KEYS,
    TrainConfig,
    build_datasets,
    coco_summary,
    comparison_table,
    evaluate,
    headline,
    read_checkpoint,
    val_loader,
)
from shared.config import config_from_dict, config_to_dict, parse_config
from shared.distributed import cleanup_distributed, init_distributed
from shared.logger import write_json

__all__ = ["evaluate_checkpoint", "main"]


def _load_models(state: dict[str, Any], cfg: TrainConfig) -> dict[str, torch.nn.Module]:
    from mixteacher.model import build_detector

    models = {}
    for name in ("teacher", "student"):
        if name == "teacher" and cfg.method == "supervised":
            continue
        model = build_detector(state["num_classes"], cfg.detector)
        model.load_state_dict(state[name])
        models[name] = model
    return models


def evaluate_checkpoint(checkpoint: str | Path, argv: Sequence[str] = (), output_dir: str | Path | None = None
                        ) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (overrides in ``argv``) and write ``metrics.json``; returns the metrics."""
    checkpoint = Path(checkpoint)
    state = read_checkpoint(checkpoint, MODEL_KEYS)  # a foreign or incomplete file is refused before any output
    base = config_from_dict(TrainConfig, state["config"])
    cfg = base
    if argv:  # overrides on top of the checkpoint's config
        import tempfile

        import yaml

        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(config_to_dict(base), f)
        cfg = parse_config(TrainConfig, ["-c", f.name, *argv])
        Path(f.name).unlink()
    out_dir = Path(output_dir) if output_dir else checkpoint.parent / "eval"
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    ctx = init_distributed(cfg.device)
    try:
        _, val_set = build_datasets(cfg.data, ctx.is_main)
        if list(val_set.cat_ids) != list(state["categories"]["ids"]):
            raise ValueError(f"the checkpoint's categories {state['categories']['ids']} differ from the val set's "
                             f"{val_set.cat_ids}")
        loader = val_loader(val_set, cfg.data, ctx)
        results = {}
        for name, model in _load_models(state, cfg).items():
            model.to(ctx.device)
            for scale in cfg.test_scales:
                results[f"{name}_{scale}"] = evaluate(model, loader, val_set, ctx, scale, cfg.amp)
                if ctx.is_main:
                    print(f"{name} @ {scale}: {coco_summary(results[f'{name}_{scale}'])}", flush=True)
        name, main_metrics = headline(results, cfg)
        strip = {k: {n: v for n, v in m.items() if n != "per_class"} for k, m in results.items()}
        metrics: dict[str, Any] = {**{k: main_metrics[k] for k in COCO_KEYS}, "headline": name,
                                   "checkpoint": str(checkpoint), "step": state["step"], "last": strip[name],
                                   **strip, "per_class_AP": main_metrics.get("per_class", {})}
        supervised = checkpoint.parent / "supervised" / "metrics.json"
        if supervised.is_file():  # the embedded default's baseline run, reported next to the teacher
            sup = json.loads(supervised.read_text())["last"]
            metrics["supervised"] = sup
            metrics.update({f"supervised_{k}": sup[k] for k in COCO_KEYS})
        if ctx.is_main:
            write_json(metrics, out_dir / "metrics.json")
            print(comparison_table(metrics), flush=True)
            print(f"wrote {out_dir / 'metrics.json'}", flush=True)
        return metrics
    finally:
        cleanup_distributed()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Evaluate a MixTeacher checkpoint (teacher/student, regular/mixed).")
    parser.add_argument("--checkpoint", required=True, help="last.pt or best.pt of a run")
    parser.add_argument("--output_dir", default=None, help="default: <checkpoint folder>/eval")
    args, rest = parser.parse_known_args(argv)
    return evaluate_checkpoint(args.checkpoint, rest, args.output_dir)


if __name__ == "__main__":
    main()
