"""Harmonize your own composite(s) with a trained frih checkpoint, at any resolution.

One image (the output keeps the composite's size, e.g. 1001x777)::

    python harmonize.py --checkpoint best.pt --composite A.jpg --mask M.png --out H.png
    python harmonize.py --composite A.jpg --mask M.png --out H.png   # newest runs/frih/*/*/best.pt (printed)

A folder: either an iHarmony4-style folder (composite_images/ + masks/, masks found with the iHarmony4 name rule or
by the composite's stem) or two folders::

    python harmonize.py --checkpoint best.pt --input_dir my_set --output_dir harmonized/
    python harmonize.py --checkpoint best.pt --composite_dir comps/ --mask_dir masks/ --output_dir harmonized/

`--mode full` (default) runs the network at full resolution (padded to the network's multiple and cropped back);
`--mode lowres --lowres_size 256` predicts at 256 and applies the upsampled colour change inside the full-resolution
mask (see frih/inference.py). The mask is read like iHarmony4's (first channel / 255) and may be soft.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from PIL import Image

from frih.data import composite_to_mask_name, read_mask, read_rgb
from frih.inference import Harmonizer, load_model_from_checkpoint
from shared.config import AmpMode, DeviceName, parse_config
from shared.training import resolve_device

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class HarmonizeConfig:
    checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "train.py checkpoint (default: the newest runs/frih/*/*/best.pt under the current folder or the "
            "repository root)"
        },
    )
    composite: str | None = field(default=None, metadata={"help": "one composite image"})
    mask: str | None = field(default=None, metadata={"help": "its foreground mask"})
    out: str | None = field(default=None, metadata={"help": "output image (with --composite)"})
    input_dir: str | None = field(default=None, metadata={"help": "folder with composite_images/ and masks/"})
    composite_dir: str | None = field(default=None, metadata={"help": "folder of composites (with --mask_dir)"})
    mask_dir: str | None = field(default=None, metadata={"help": "folder of masks (with --composite_dir)"})
    output_dir: str | None = field(default=None, metadata={"help": "output folder (folder modes)"})
    mode: Literal["full", "lowres"] = "full"
    lowres_size: int = 256
    device: DeviceName = field(default="auto", metadata={"help": "auto: cuda when available"})
    amp: AmpMode = "off"
    threads: int | None = field(default=None, metadata={"help": "torch intra-op CPU threads"})


def find_mask(composite: Path, mask_dir: Path) -> Path:
    """The mask of `composite` in `mask_dir`: same stem (any image suffix), else the iHarmony4 rule."""
    for suffix in IMAGE_SUFFIXES:
        candidate = mask_dir / (composite.stem + suffix)
        if candidate.is_file():
            return candidate
    try:
        candidate = mask_dir / composite_to_mask_name(composite.name)
    except ValueError:
        candidate = None
    if candidate is not None and candidate.is_file():
        return candidate
    raise FileNotFoundError(
        f"no mask for {composite} in {mask_dir} (tried the same stem and the iHarmony4 rule "
        "<id>_<fgid>_<k>.jpg -> <id>_<fgid>.png)"
    )


def harmonize_file(harmonizer: Harmonizer, composite_path: Path, mask_path: Path, out_path: Path) -> tuple[int, int]:
    composite = read_rgb(composite_path)
    mask = read_mask(mask_path)
    if mask.shape != composite.shape[:2]:
        raise ValueError(
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but composite {composite_path} is "
            f"{composite.shape[1]}x{composite.shape[0]}"
        )
    out = harmonizer.harmonize(composite, mask)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out).save(out_path)
    return out.shape[1], out.shape[0]


def latest_checkpoint(roots: list[Path] | None = None) -> Path:
    """The most recently written `runs/frih/<name>/<time>/best.pt`; an error says what to do when there is none."""
    roots = roots or [Path.cwd(), Path(__file__).resolve().parents[1], Path(__file__).resolve().parent]
    found = [p for root in roots for p in (root / "runs" / "frih").glob("*/*/best.pt")]
    if not found:
        raise FileNotFoundError(
            "no --checkpoint given and no runs/frih/*/*/best.pt found under "
            f"{', '.join(str(r) for r in roots)}; train one (python train.py) or pass --checkpoint"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def list_jobs(cfg: HarmonizeConfig) -> list[tuple[Path, Path, Path]]:
    """(composite, mask, output) of every image to harmonize: the single image or each image of the folder."""
    if cfg.composite:
        if not (cfg.mask and cfg.out):
            raise SystemExit("harmonize.py: --composite needs --mask and --out")
        return [(Path(cfg.composite), Path(cfg.mask), Path(cfg.out))]
    if cfg.input_dir:
        comp_dir, mask_dir = Path(cfg.input_dir) / "composite_images", Path(cfg.input_dir) / "masks"
    elif cfg.composite_dir and cfg.mask_dir:
        comp_dir, mask_dir = Path(cfg.composite_dir), Path(cfg.mask_dir)
    else:
        raise SystemExit("harmonize.py: give --composite/--mask/--out, --input_dir, or --composite_dir/--mask_dir")
    if not cfg.output_dir:
        raise SystemExit("harmonize.py: folder mode needs --output_dir")
    if not comp_dir.is_dir():
        raise FileNotFoundError(f"composite folder not found: {comp_dir}")
    composites = sorted(p for p in comp_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not composites:
        raise FileNotFoundError(f"no images in {comp_dir}")
    return [(c, find_mask(c, mask_dir), Path(cfg.output_dir) / (c.stem + ".png")) for c in composites]


def parse_args(argv: Sequence[str] | None = None) -> HarmonizeConfig:
    return parse_config(HarmonizeConfig, argv, description=__doc__.splitlines()[0])


def main(cfg: HarmonizeConfig) -> list[Path]:
    """Harmonize the configured image(s); returns the written files."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else latest_checkpoint()
    if not cfg.checkpoint:
        print(f"using {checkpoint}")
    model, _ = load_model_from_checkpoint(checkpoint, device)
    harmonizer = Harmonizer(model, device, mode=cfg.mode, lowres_size=cfg.lowres_size, amp=cfg.amp)
    written = []
    for comp, mask, out in list_jobs(cfg):
        t0 = time.perf_counter()
        w, h = harmonize_file(harmonizer, comp, mask, out)
        print(f"{comp} -> {out} ({w}x{h}, {time.perf_counter() - t0:.2f} s)")
        written.append(out)
    return written


if __name__ == "__main__":
    main(parse_args())
