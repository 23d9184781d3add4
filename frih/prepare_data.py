"""Data preparation: HAdobe5k pre-resize and the synthetic iHarmony4-format tree.

python -m frih.prepare_data resize-hadobe5k --src ROOT/HAdobe5k --dst ROOT/HAdobe5k_resized1024 [--max_side 1024]
python -m frih.prepare_data synthesize --root data/synthetic/my_tree [--size 96 --num_real 32 --seed 0]
"""

from __future__ import annotations

import argparse
import sys

from frih.data import resize_hadobe5k
from frih.synthetic import write_synthetic_iharmony4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="iHarmony4 data tools of the frih package")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("resize-hadobe5k", help="pre-resize HAdobe5k so the longer side is <= max_side")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--max_side", type=int, default=1024)
    s = sub.add_parser("synthesize", help="write the synthetic iHarmony4-format tree of the embedded default")
    s.add_argument("--root", required=True)
    s.add_argument("--size", type=int, default=96, help="side of the generated images")
    s.add_argument("--num_real", type=int, default=32, help="real images per subset")
    s.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "resize-hadobe5k":
        counts = resize_hadobe5k(args.src, args.dst, args.max_side)
        print(f"wrote {args.dst}: {counts['resized']} resized, {counts['copied']} copied")
    else:
        root = write_synthetic_iharmony4(
            args.root, image_size=args.size, num_real_per_subset=args.num_real, seed=args.seed
        )
        print(f"wrote {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
