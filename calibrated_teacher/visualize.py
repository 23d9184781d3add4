"""Draw what the teacher proposes on sparse training images: sparse GT (green), dropped GT (dashed grey), merged
pseudo boxes (blue), candidates rejected by the calibrated threshold (orange), with raw / calibrated scores.

    python -m calibrated_teacher.visualize --checkpoint runs/calibrated_teacher/default/<time>/last.pt --num 8

Writes ``pseudo_boxes_<i>.png`` to ``<checkpoint folder>/eval/`` (or ``--output_dir``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from calibrated_teacher.data import build_datasets, sparse_collate
from calibrated_teacher.eval import parse_args as eval_args
from calibrated_teacher.model import build_detector, label_offset
from calibrated_teacher.pseudo_labels import merge_pseudo_boxes
from calibrated_teacher.teacher_student import CalibratedTeacher
from calibrated_teacher.views import transform_boxes

__all__ = ["main", "parse_args"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m calibrated_teacher.visualize", description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=8, help="training images to draw")
    known, rest = parser.parse_known_args(argv)
    evaluation = eval_args(rest)
    known.checkpoint, known.cfg, known.state = evaluation.checkpoint, evaluation.config, evaluation.state
    known.output_dir = evaluation.output_dir
    return known


def _draw(ax, boxes: torch.Tensor, colour: str, style: str = "-", texts: Sequence[str] = ()) -> None:
    import matplotlib.patches as patches

    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, ls=style, lw=1.2))
        if i < len(texts):
            ax.text(x0, y0, texts[i], color=colour, fontsize=6, va="bottom")


def main(args: argparse.Namespace) -> list[Path]:
    """Draw ``args.num`` images; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, state = args.cfg, args.state
    train_set, _, _ = build_datasets(cfg.data, label_offset(cfg.detector))
    method = CalibratedTeacher(build_detector(state["num_classes"], cfg.detector), cfg.teacher, cfg.method)
    method.teacher.load_state_dict(state["teacher"])
    method.calibrator.load_state_dict(state["method_state"]["calibrator"])
    out_dir = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(min(args.num, len(train_set))):
        batch = sparse_collate([train_set[(i, i)]])
        det = method.teacher_detections(batch["weak"])[0]
        h, w = batch["strong"][0].shape[-2:]
        boxes = transform_boxes(det["boxes"], batch["weak_to_strong"][0], clip_to=(h, w))
        calibrated = method.calibrator(det["scores"]) if method.calibrator.fitted else None
        gt = batch["strong_target"][0]
        _, _, kept, candidate = merge_pseudo_boxes(
            gt["boxes"], gt["labels"], boxes, det["labels"], det["scores"], calibrated, method.rules
        )
        cal = calibrated if calibrated is not None else det["scores"]
        texts = [f"{s:.2f}/{c:.2f}" for s, c in zip(det["scores"].tolist(), cal.tolist())]
        fig, ax = plt.subplots(figsize=(5, 5 * h / w))
        ax.imshow(batch["strong"][0].permute(1, 2, 0).numpy())
        _draw(ax, gt["boxes"], "lime")
        _draw(ax, batch["dropped"][0]["boxes"], "grey", "--")
        _draw(ax, boxes[kept], "deepskyblue", texts=[t for t, k in zip(texts, kept.tolist()) if k])
        rejected = candidate & ~kept
        _draw(ax, boxes[rejected], "orange", texts=[t for t, r in zip(texts, rejected.tolist()) if r])
        ax.set_axis_off()
        ax.set_title("sparse GT / dropped GT / merged / rejected (raw/calibrated)", fontsize=7)
        fig.tight_layout()
        paths.append(out_dir / f"pseudo_boxes_{i}.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    print("\n".join(map(str, paths)))
    return paths


if __name__ == "__main__":
    main(parse_args())
