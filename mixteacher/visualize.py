"""Draw a checkpoint's predictions on validation images and the teacher's pseudo labels on weak/strong views.

    python -m mixteacher.visualize --checkpoint runs/mixteacher/default/<time>/last.pt [--num_images 6]
        [--model teacher|student] [--scale regular|mixed] [--score_thr 0.3] [--output_dir DIR]

Writes ``predictions_<i>.png`` (detections above ``score_thr``, ground truth dashed in white) and
``pseudo_labels_<i>.png`` (weak view with the teacher's pseudo boxes: solid >= cls threshold, dashed the
low-confidence ones mining looks at; next to it the strong view with the same boxes mapped through the view matrix)
into ``output_dir`` (default ``<checkpoint folder>/visualize``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from PIL import Image, ImageDraw

from mixteacher.data import SemiSupervisedDataset
from mixteacher.mix_teacher import MixTeacher
from mixteacher.model import build_detector
from mixteacher.teacher import map_boxes
from mixteacher.train import MODEL_KEYS, build_datasets, config_from_checkpoint, read_checkpoint

__all__ = ["draw_boxes", "main"]

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def _to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.clamp(0, 1) * 255).byte().permute(1, 2, 0).cpu().numpy())


def draw_boxes(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None = None,
               names: Sequence[str] = (), dashed: torch.Tensor | None = None,
               canvas: Image.Image | None = None) -> Image.Image:
    """Draw xyxy boxes (labels 1..K) with class colours and optional scores on a (3, H, W) image in [0, 1]."""
    canvas = canvas or _to_pil(image)
    draw = ImageDraw.Draw(canvas)
    for i, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist())):
        colour = _PALETTE[(label - 1) % len(_PALETTE)]
        if dashed is not None and bool(dashed[i]):
            x0, y0, x1, y1 = box
            for t in range(0, 100, 10):  # dashed outline: 5 % segments
                a, b = t / 100, (t + 5) / 100
                for p0, p1 in (((x0 + a * (x1 - x0), y0), (x0 + b * (x1 - x0), y0)),
                               ((x0 + a * (x1 - x0), y1), (x0 + b * (x1 - x0), y1)),
                               ((x0, y0 + a * (y1 - y0)), (x0, y0 + b * (y1 - y0))),
                               ((x1, y0 + a * (y1 - y0)), (x1, y0 + b * (y1 - y0)))):
                    draw.line([p0, p1], fill=colour, width=2)
        else:
            draw.rectangle(box, outline=colour, width=2)
        text = names[label - 1] if 0 < label <= len(names) else str(label)
        if scores is not None:
            text += f" {float(scores[i]):.2f}"
        draw.text((box[0] + 2, box[1] + 1), text, fill=colour)
    return canvas


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description="Draw MixTeacher predictions and pseudo labels.")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--num_images", type=int, default=4)
    parser.add_argument("--model", choices=["teacher", "student"], default="teacher")
    parser.add_argument("--scale", choices=["regular", "mixed"], default="regular")
    parser.add_argument("--score_thr", type=float, default=0.3)
    args = parser.parse_args(argv)
    state = read_checkpoint(args.checkpoint, MODEL_KEYS)  # a foreign or incomplete file is refused before any output
    cfg = config_from_checkpoint(state)
    out = Path(args.output_dir) if args.output_dir else Path(args.checkpoint).parent / "visualize"
    out.mkdir(parents=True, exist_ok=True)
    train_set, val_set = build_datasets(cfg.data)
    model_name = args.model if cfg.method == "mixteacher" else "student"
    model = build_detector(state["num_classes"], cfg.detector)
    model.load_state_dict(state[model_name])
    model.eval()
    names = state["categories"]["names"]
    written = []
    for i in range(min(args.num_images, len(val_set))):
        image, target = val_set[i]
        det = model.predict([image], args.scale)[0]
        keep = det["scores"] >= args.score_thr
        canvas = draw_boxes(image, target["boxes"], target["labels"], names=names,
                            dashed=torch.ones(len(target["boxes"]), dtype=torch.bool))
        draw_boxes(image, det["boxes"][keep], det["labels"][keep], det["scores"][keep], names, canvas=canvas)
        written.append(out / f"predictions_{i}.png")
        canvas.save(written[-1])
    if cfg.method == "mixteacher" and isinstance(train_set, SemiSupervisedDataset) and train_set.num_unlabeled:
        method = MixTeacher(build_detector(state["num_classes"], cfg.detector), cfg.mixteacher)
        method.teacher.load_state_dict(state["teacher"])
        for i in range(min(args.num_images, train_set.num_unlabeled)):
            item = train_set[(1, i, i)]
            with torch.no_grad():
                pseudo = method.pseudo_label([item["weak"]])[0][0]
            confident = pseudo.scores >= cfg.mixteacher.cls_score_thr
            weak = draw_boxes(item["weak"], pseudo.boxes, pseudo.labels, pseudo.scores, names, dashed=~confident)
            strong_boxes = map_boxes(pseudo.boxes, item["weak_to_strong"], tuple(item["strong"].shape[-2:]))
            strong = draw_boxes(item["strong"], strong_boxes, pseudo.labels, pseudo.scores, names,
                                dashed=~confident)
            pair = Image.new("RGB", (weak.width + strong.width + 8, max(weak.height, strong.height)), (255, 255, 255))
            pair.paste(weak, (0, 0))
            pair.paste(strong, (weak.width + 8, 0))
            written.append(out / f"pseudo_labels_{i}.png")
            pair.save(written[-1])
    print(f"wrote {len(written)} images to {out}")
    return written


if __name__ == "__main__":
    main()
