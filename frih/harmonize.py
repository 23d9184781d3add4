"""Harmonize your own composite(s) with a trained frih checkpoint, at any resolution.

One image (the output keeps the composite's size, e.g. 1001x777)::

    python harmonize.py --checkpoint best.pt --composite A.jpg --mask M.png --out H.png
    python harmonize.py --composite A.jpg --mask M.png --out H.png   # newest runs/frih/*/*/best.pt (printed)

A folder: either an iHarmony4-style folder (composite_images/ + masks/, masks found with the iHarmony4 name rule or
by the composite's stem) or two folders::

    python harmonize.py --checkpoint best.pt --input_dir my_set --out_dir harmonized/
    python harmonize.py --checkpoint best.pt --composite_dir comps/ --mask_dir masks/ --out_dir harmonized/

`--mode full` (default) runs the network at full resolution (padded to the network's multiple and cropped back);
`--mode lowres --lowres_size 256` predicts at 256 and applies the upsampled colour change inside the full-resolution
mask (see frih/inference.py). The mask is read like iHarmony4's (first channel / 255) and may be soft.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from PIL import Image

from frih.data import composite_to_mask_name, read_mask, read_rgb
from frih.inference import Harmonizer, load_model_from_checkpoint

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


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
    raise FileNotFoundError(f"no mask for {composite} in {mask_dir} (tried the same stem and the iHarmony4 rule "
                            "<id>_<fgid>_<k>.jpg -> <id>_<fgid>.png)")


def harmonize_file(harmonizer: Harmonizer, composite_path: Path, mask_path: Path, out_path: Path) -> tuple[int, int]:
    composite = read_rgb(composite_path)
    mask = read_mask(mask_path)
    if mask.shape != composite.shape[:2]:
        raise ValueError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but composite {composite_path} is "
                         f"{composite.shape[1]}x{composite.shape[0]}")
    out = harmonizer.harmonize(composite, mask)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out).save(out_path)
    return out.shape[1], out.shape[0]


def latest_checkpoint(roots: list[Path] | None = None) -> Path:
    """The most recently written `runs/frih/<config>/<time>/best.pt`; an error says what to do when there is none."""
    roots = roots or [Path.cwd(), Path(__file__).resolve().parents[1], Path(__file__).resolve().parent]
    found = [p for root in roots for p in (root / "runs" / "frih").glob("*/*/best.pt")]
    if not found:
        raise FileNotFoundError("no --checkpoint given and no runs/frih/*/*/best.pt found under "
                                f"{', '.join(str(r) for r in roots)}; train one (python train.py) or pass --checkpoint")
    return max(found, key=lambda p: p.stat().st_mtime)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None,
                   help="train.py checkpoint (default: the newest runs/frih/*/*/best.pt under the current folder "
                        "or the repository root)")
    p.add_argument("--composite", help="one composite image")
    p.add_argument("--mask", help="its foreground mask")
    p.add_argument("--out", help="output image (with --composite)")
    p.add_argument("--input_dir", help="folder with composite_images/ and masks/")
    p.add_argument("--composite_dir", help="folder of composites (with --mask_dir)")
    p.add_argument("--mask_dir", help="folder of masks (with --composite_dir)")
    p.add_argument("--out_dir", help="output folder (folder modes)")
    p.add_argument("--mode", choices=("full", "lowres"), default="full")
    p.add_argument("--lowres_size", type=int, default=256)
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def main(argv: list[str] | None = None) -> list[Path]:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint = Path(args.checkpoint) if args.checkpoint else latest_checkpoint()
    if not args.checkpoint:
        print(f"using {checkpoint}")
    model, _ = load_model_from_checkpoint(checkpoint, device)
    harmonizer = Harmonizer(model, device, mode=args.mode, lowres_size=args.lowres_size, amp=args.amp)
    if args.composite:
        if not (args.mask and args.out):
            raise SystemExit("harmonize.py: --composite needs --mask and --out")
        jobs = [(Path(args.composite), Path(args.mask), Path(args.out))]
    else:
        if args.input_dir:
            comp_dir, mask_dir = Path(args.input_dir) / "composite_images", Path(args.input_dir) / "masks"
        elif args.composite_dir and args.mask_dir:
            comp_dir, mask_dir = Path(args.composite_dir), Path(args.mask_dir)
        else:
            raise SystemExit("harmonize.py: give --composite/--mask/--out, --input_dir, or --composite_dir/--mask_dir")
        if not args.out_dir:
            raise SystemExit("harmonize.py: folder mode needs --out_dir")
        if not comp_dir.is_dir():
            raise FileNotFoundError(f"composite folder not found: {comp_dir}")
        composites = sorted(p for p in comp_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not composites:
            raise FileNotFoundError(f"no images in {comp_dir}")
        jobs = [(c, find_mask(c, mask_dir), Path(args.out_dir) / (c.stem + ".png")) for c in composites]
    written = []
    for comp, mask, out in jobs:
        t0 = time.perf_counter()
        w, h = harmonize_file(harmonizer, comp, mask, out)
        print(f"{comp} -> {out} ({w}x{h}, {time.perf_counter() - t0:.2f} s)")
        written.append(out)
    return written


if __name__ == "__main__":
    main()
