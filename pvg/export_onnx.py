"""Export a Pyramid ViG / PVG classifier to ONNX and check it against PyTorch with onnxruntime.

    python -m pvg.export_onnx --model pvg_s [--checkpoint PATH] --out pvg_s.onnx [--img-size 224]

Uses ``torch.onnx.export(..., dynamo=True)`` with a fixed input size (the graph's top-k and gathers are traced for
the node counts of that size; the fast path's query chunks are unrolled). The exported graph is run with
onnxruntime on a random input and the max abs difference to PyTorch is printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import pvg.model  # noqa: F401  (registers the models with timm)
from pvg.weights import load_official_checkpoint
from shared.export import export_classifier_onnx, export_timm_model, onnxruntime_and_torch_outputs

__all__ = ['export_onnx', 'main', 'onnxruntime_diff']


def export_onnx(model: torch.nn.Module, out: Path, img_size: int = 224, batch_size: int = 1) -> Path:
    """Export ``model`` (eval mode) for a fixed (batch_size, 3, img_size, img_size) input, weights embedded."""
    return export_classifier_onnx(model, out, img_size, batch_size)


def onnxruntime_diff(
    model: torch.nn.Module, onnx_path: Path, img_size: int = 224, batch_size: int = 1, seed: int = 0
) -> tuple[float, float]:
    """Run ``onnx_path`` with onnxruntime (CPU) and PyTorch on the same random input: the max abs difference, and
    that difference relative to the largest PyTorch output (randomly initialised models give logits in the
    thousands, so the relative one is the meaningful check)."""
    actual, expected = onnxruntime_and_torch_outputs(model, onnx_path, img_size, batch_size, seed)
    diff = float(abs(actual - expected).max())
    return diff, diff / max(float(abs(expected).max()), 1e-12)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='pvg_s', help='registered model name (pvig_*, pvg_*)')
    parser.add_argument('--checkpoint', default=None, help='official release file or state_dict; random init if unset')
    parser.add_argument('--out', required=True, type=Path, help='output .onnx file')
    parser.add_argument('--img-size', default=224, type=int)
    parser.add_argument('--batch-size', default=1, type=int)
    return parser


def main(argv: list[str] | None = None) -> tuple[float, float]:
    args = get_args_parser().parse_args(argv)
    model, out = export_timm_model(
        args.model,
        args.checkpoint,
        load_official_checkpoint,
        lambda m: export_onnx(m, args.out, args.img_size, args.batch_size),
    )
    diff, rel = onnxruntime_diff(model, out, args.img_size, args.batch_size)
    print(f'onnxruntime vs PyTorch: max abs diff {diff:.3e} ({rel:.2e} of the largest output)')
    return diff, rel


if __name__ == '__main__':
    main()
