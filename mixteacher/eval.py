"""Evaluate a MixTeacher checkpoint: the teacher and the student at the regular and mixed test scales.

COCO AP via pycocotools (``shared.detection.evaluate_detections``); VOC is evaluated the same way on
``voc07_test.json``, AP50 being the VOC number, as in the released code.

    python -m mixteacher.eval --checkpoint runs/mixteacher/default/<time>/last.pt [--output_dir DIR]
    python -m mixteacher.eval --checkpoint last.pt --data.root data/coco --test_scales regular mixed

The config stored in the checkpoint is used; ``-c`` / ``--key value`` flags override it (e.g. another
``data.root``); from Python: ``main(parse_args(["--checkpoint", "last.pt"]))``. Only the val split is read
(``data.val_images`` / ``data.val_annotations`` under ``data.root``): the train json, the partial split files and
the unlabeled pools need not exist; its category ids must be the checkpoint's (the labels the model was trained on).
Writes ``metrics.json`` (headline keys ``AP``, ``AP50``, ... for the teacher at ``report_scale``, one block per
model and scale, and the supervised baseline's numbers when the run folder has them) into ``output_dir``
(default ``<checkpoint folder>/eval``). A file that is not a MixTeacher checkpoint (missing, not written by
``torch.save``, another package's, incomplete) is refused with ``shared.checkpoint.CheckpointError`` before anything
is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mixteacher.config import PACKAGE, TrainConfig
from mixteacher.data import build_val_set, val_loader
from mixteacher.engine import (
    MODEL_KEYS,
    add_supervised,
    comparison_table,
    evaluate,
    load_models,
    result_metrics,
)
from shared.detection import check_checkpoint_categories, coco_summary
from shared.distributed import DistContext
from shared.entrypoints import Evaluation, checkpoint_parser, run_distributed
from shared.logger import write_json

__all__ = ["main", "parse_args"]

# The config stored in ``--checkpoint`` (in today's keys: ``TrainConfig.upgrade_stored``), then ``-c`` and
# ``--key value`` overrides; the checkpoint is read and checked here, before any output exists.
parse_args = checkpoint_parser(
    TrainConfig, __doc__, PACKAGE, required=MODEL_KEYS, checkpoint_help="last.pt or best.pt of a run"
)


def _supervised_metrics(checkpoint: Path) -> dict[str, Any] | None:
    """The embedded default's baseline run next to the checkpoint (``supervised/metrics.json``), if any."""
    supervised = checkpoint.parent / "supervised" / "metrics.json"
    return json.loads(supervised.read_text())["last"] if supervised.is_file() else None


def main(ev: Evaluation) -> dict[str, Any]:
    """Evaluate the checkpoint and write ``metrics.json``; returns the metrics."""
    return run_distributed(ev.config, lambda ctx: _evaluate(ev, ctx))


def _evaluate(ev: Evaluation, ctx: DistContext) -> dict[str, Any]:
    checkpoint, state, train_cfg = ev.checkpoint, ev.state, ev.config
    val_set = build_val_set(train_cfg.data, ctx.is_main)  # no train json, split files or unlabeled pool needed
    check_checkpoint_categories(state, checkpoint, val_set)  # the same ids, so the same labels as in training
    models = {name: model.to(ctx.device) for name, model in load_models(state, train_cfg).items()}
    results = evaluate(models, val_loader(val_set, train_cfg.data, ctx), val_set, ctx, train_cfg)
    if ctx.is_main:
        for key, result in results.items():
            name, scale = key.rsplit("_", 1)
            print(f"{name} @ {scale}: {coco_summary(result)}", flush=True)
    metrics = result_metrics(results, train_cfg, checkpoint=str(checkpoint), step=state["step"])
    supervised = _supervised_metrics(checkpoint)
    if supervised is not None:
        add_supervised(metrics, supervised)
    if ctx.is_main:
        write_json(metrics, ev.output_dir / "metrics.json")
        print(comparison_table(metrics), flush=True)
        print(f"wrote {ev.output_dir / 'metrics.json'}", flush=True)
    return metrics


if __name__ == "__main__":
    main(parse_args())
