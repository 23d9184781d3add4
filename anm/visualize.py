"""PNG grid of SANM's attention maps and masked images: image | attention sum_c F^2 | x_max | x_min.

    python -m anm.visualize --checkpoint runs/anm/default/<time>/last.pt [--num 8] [--w 0.2] [--out grid.png]

Uses network 1 of the checkpoint on the first ``--num`` test images (the train run writes the same grid,
``attention_masks.png``, into its run folder). ``--w`` is the clean probability given to the masker (lower w =
larger boxes); the boxes are drawn exactly as in training (anm.masking.mask_images).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from anm.masking import MaskerConfig, mask_images

__all__ = ["attention_grid", "main"]


def _to_image(x: torch.Tensor) -> torch.Tensor:
    """Normalised ``C x H x W`` -> ``H x W x C`` in [0, 1] (per-image min-max, enough for display)."""
    x = x.detach().float().cpu()
    x = (x - x.min()) / (x.max() - x.min() + 1e-12)
    return x.permute(1, 2, 0)


@torch.no_grad()
def attention_grid(
    net: nn.Module,
    images: torch.Tensor,
    path: str | Path,
    clean_prob: float = 0.5,
    masker: MaskerConfig | None = None,
    seed: int = 0,
) -> Path:
    """Write the grid for a batch of normalised ``images`` (one row per image) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    was_training = net.training
    net.eval()
    fmap = net.forward_feature_map(images)
    net.train(was_training)
    w = torch.full((images.shape[0],), clean_prob, device=images.device)
    masked = mask_images(images, fmap, w, masker or MaskerConfig(), torch.Generator().manual_seed(seed))
    rows = images.shape[0]
    fig, axes = plt.subplots(rows, 4, figsize=(6, 1.5 * rows), squeeze=False)
    for i in range(rows):
        panels = (
            (_to_image(images[i]), "image"),
            (masked.attention[i].cpu(), "attention"),
            (_to_image(masked.x_max[i]), f"x_max ({int(masked.box_max[2][i])}x{int(masked.box_max[3][i])})"),
            (_to_image(masked.x_min[i]), "x_min"),
        )
        for ax, (panel, title) in zip(axes[i], panels):
            ax.imshow(panel, cmap="inferno" if panel.ndim == 2 else None, interpolation="nearest")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="last.pt or best.pt of an anm run")
    parser.add_argument("--num", type=int, default=8, help="test images (rows)")
    parser.add_argument("--w", type=float, default=0.5, help="clean probability handed to the masker")
    parser.add_argument("--out", default=None, help="default: <checkpoint folder>/attention_masks.png")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> Path:
    from dataclasses import replace

    from anm.config import PACKAGE, Config
    from anm.data import build_task
    from anm.engine import build_models
    from shared.checkpoint import load_checkpoint
    from shared.config import parse_eval_config

    checkpoint = Path(args.checkpoint)
    state = load_checkpoint(checkpoint, package=PACKAGE, required=("net1", "config"))
    cfg = parse_eval_config(Config, Config.upgrade_stored(state["config"]), [])
    task = build_task(cfg.data, checkpoint.parent, write_noise=False)
    net = build_models(replace(cfg, model=replace(cfg.model, pretrained=None)), task.num_classes)[0]
    net.load_state_dict(state["net1"])
    images = torch.stack([task.eval_transform(task.test_source[i]) for i in range(args.num)])
    out = attention_grid(net, images, args.out or checkpoint.parent / "attention_masks.png", args.w, cfg.sanm.masker)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main(parse_args())
