"""Draw a checkpoint's predictions on validation images and the teacher's pseudo labels on weak/strong views.

    python -m mixteacher.visualize --checkpoint runs/mixteacher/default/<time>/last.pt [--num_images 6]
        [--model teacher|student] [--scale regular|mixed] [--score_thr 0.3] [--output_dir DIR]
        [--data.root DIR ...]   # any other --key value / -c FILE overrides the checkpoint's stored config

Writes ``predictions_<i>.png`` (detections above ``score_thr``, ground truth dashed in white) and
``pseudo_labels_<i>.png`` (weak view with the teacher's pseudo boxes: solid >= cls threshold, dashed the
low-confidence ones mining looks at; next to it the strong view with the same boxes mapped through the view matrix)
into ``output_dir`` (default ``<checkpoint folder>/visualize``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, ImageDraw

from mixteacher.config import TrainConfig
from mixteacher.data import SemiSupervisedDataset, build_datasets
from mixteacher.engine import MODEL_KEYS, config_from_checkpoint, read_checkpoint
from mixteacher.mix_teacher import MixTeacher
from mixteacher.model import build_detector
from mixteacher.teacher import map_boxes
from shared.config import parse_config

__all__ = ["VisualizeConfig", "draw_boxes", "main", "parse_args"]

_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
]


def _to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.clamp(0, 1) * 255).byte().permute(1, 2, 0).cpu().numpy())


def draw_boxes(
    image: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor | None = None,
    names: Sequence[str] = (),
    dashed: torch.Tensor | None = None,
    canvas: Image.Image | None = None,
) -> Image.Image:
    """Draw xyxy boxes (labels 1..K) with class colours and optional scores on a (3, H, W) image in [0, 1]."""
    canvas = canvas or _to_pil(image)
    draw = ImageDraw.Draw(canvas)
    for i, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist())):
        colour = _PALETTE[(label - 1) % len(_PALETTE)]
        if dashed is not None and bool(dashed[i]):
            x0, y0, x1, y1 = box
            for t in range(0, 100, 10):  # dashed outline: 5 % segments
                a, b = t / 100, (t + 5) / 100
                for p0, p1 in (
                    ((x0 + a * (x1 - x0), y0), (x0 + b * (x1 - x0), y0)),
                    ((x0 + a * (x1 - x0), y1), (x0 + b * (x1 - x0), y1)),
                    ((x0, y0 + a * (y1 - y0)), (x0, y0 + b * (y1 - y0))),
                    ((x1, y0 + a * (y1 - y0)), (x1, y0 + b * (y1 - y0))),
                ):
                    draw.line([p0, p1], fill=colour, width=2)
        else:
            draw.rectangle(box, outline=colour, width=2)
        text = names[label - 1] if 0 < label <= len(names) else str(label)
        if scores is not None:
            text += f" {float(scores[i]):.2f}"
        draw.text((box[0] + 2, box[1] + 1), text, fill=colour)
    return canvas


@dataclass
class VisualizeConfig:
    """What to draw (``--key value`` on the command line)."""

    checkpoint: str = ""
    output_dir: str | None = None
    num_images: int = 4
    model: Literal["teacher", "student"] = "teacher"
    scale: Literal["regular", "mixed"] = "regular"
    score_thr: float = 0.3
    #: the other command-line arguments: ``-c FILE`` / ``--key value`` overrides of the checkpoint's stored training
    #: config (e.g. ``--data.root``), applied in :func:`main` once the checkpoint is read
    overrides: list[str] = field(default_factory=list, init=False)


_NUMBER = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(this script's own flags with their values, everything else: the training-config overrides)."""
    own_keys = {f"--{f.name}" for f in fields(VisualizeConfig) if f.init} | {"-h", "--help"}
    own: list[str] = []
    rest: list[str] = []
    target = rest
    for token in argv:
        if token.startswith("-") and not _NUMBER.match(token):  # a flag (a negative number is a value)
            target = own if token.split("=", 1)[0] in own_keys else rest
        target.append(token)
    return own, rest


def parse_args(argv: Sequence[str] | None = None) -> VisualizeConfig:
    """The drawing settings (``--checkpoint`` is required); the other flags override the checkpoint's stored
    training config (checked when :func:`main` reads the checkpoint, before anything is written)."""
    own, rest = _split_argv(list(sys.argv[1:] if argv is None else argv))
    cfg = parse_config(VisualizeConfig, own, description="Draw MixTeacher predictions and pseudo labels.")
    if not cfg.checkpoint:
        raise SystemExit("visualize: --checkpoint PATH is required")
    cfg.overrides = rest
    return cfg


def _draw_predictions(model, val_set, names: Sequence[str], cfg: VisualizeConfig, out: Path) -> list[Path]:
    written = []
    for i in range(min(cfg.num_images, len(val_set))):
        image, target = val_set[i]
        det = model.predict([image], cfg.scale)[0]
        keep = det["scores"] >= cfg.score_thr
        canvas = draw_boxes(
            image,
            target["boxes"],
            target["labels"],
            names=names,
            dashed=torch.ones(len(target["boxes"]), dtype=torch.bool),
        )
        draw_boxes(image, det["boxes"][keep], det["labels"][keep], det["scores"][keep], names, canvas=canvas)
        written.append(out / f"predictions_{i}.png")
        canvas.save(written[-1])
    return written


def _draw_pseudo_labels(
    state: dict,
    train_cfg: TrainConfig,
    train_set: SemiSupervisedDataset,
    names: Sequence[str],
    num_images: int,
    out: Path,
) -> list[Path]:
    method = MixTeacher(build_detector(state["num_classes"], train_cfg.detector), train_cfg.mixteacher)
    method.teacher.load_state_dict(state["teacher"])
    written = []
    for i in range(min(num_images, train_set.num_unlabeled)):
        item = train_set[(1, i, i)]
        with torch.no_grad():
            pseudo = method.pseudo_label([item["weak"]])[0][0]
        confident = pseudo.scores >= train_cfg.mixteacher.cls_score_thr
        weak = draw_boxes(item["weak"], pseudo.boxes, pseudo.labels, pseudo.scores, names, dashed=~confident)
        strong_boxes = map_boxes(pseudo.boxes, item["weak_to_strong"], tuple(item["strong"].shape[-2:]))
        strong = draw_boxes(item["strong"], strong_boxes, pseudo.labels, pseudo.scores, names, dashed=~confident)
        pair = Image.new("RGB", (weak.width + strong.width + 8, max(weak.height, strong.height)), (255, 255, 255))
        pair.paste(weak, (0, 0))
        pair.paste(strong, (weak.width + 8, 0))
        written.append(out / f"pseudo_labels_{i}.png")
        pair.save(written[-1])
    return written


def main(cfg: VisualizeConfig) -> list[Path]:
    """Draw and write the PNGs; returns their paths."""
    state = read_checkpoint(cfg.checkpoint, MODEL_KEYS)  # a foreign or incomplete file is refused before any output
    train_cfg = config_from_checkpoint(state, cfg.overrides, "visualize: overrides of the stored training config")
    train_set, val_set = build_datasets(train_cfg.data)  # a missing dataset is an error before any output
    out = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.checkpoint).parent / "visualize"
    out.mkdir(parents=True, exist_ok=True)
    model_name = cfg.model if train_cfg.method == "mixteacher" else "student"
    model = build_detector(state["num_classes"], train_cfg.detector)
    model.load_state_dict(state[model_name])
    model.eval()
    names = state["categories"]["names"]
    written = _draw_predictions(model, val_set, names, cfg, out)
    if train_cfg.method == "mixteacher" and isinstance(train_set, SemiSupervisedDataset) and train_set.num_unlabeled:
        written += _draw_pseudo_labels(state, train_cfg, train_set, names, cfg.num_images, out)
    print(f"wrote {len(written)} images to {out}")
    return written


if __name__ == "__main__":
    main(parse_args())
