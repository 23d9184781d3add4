"""Export an EMO classifier to ONNX and check it against PyTorch with onnxruntime.

    python -m emo.export_onnx --model emo_1m [--checkpoint PATH] --out emo_1m.onnx [--img-size 224]

Uses ``torch.onnx.export(..., dynamo=True)`` (needs ``onnx`` and ``onnxscript``) with a fixed input size: the
EW-MHSA padding and grid partition depend on the feature-map size, so export at the size you will run. When
``onnxruntime`` is installed the exported graph is run on a random input and the max abs difference to PyTorch is
printed.
"""

import argparse
from pathlib import Path

import torch

import emo.model  # noqa: F401  (registers the EMO models with timm)
from emo.weights import load_official_checkpoint
from shared.export import export_classifier_onnx, export_timm_model, onnxruntime_and_torch_outputs


def export_onnx(
    model: torch.nn.Module,
    out: Path,
    img_size: int = 224,
    batch_size: int = 1,
    opset: int | None = None,
) -> Path:
    """Export ``model`` (eval mode) for a fixed (batch_size, 3, img_size, img_size) input, weights embedded."""
    return export_classifier_onnx(model, out, img_size, batch_size, opset)


def max_abs_diff_onnxruntime(
    model: torch.nn.Module, onnx_path: Path, img_size: int = 224, batch_size: int = 1, seed: int = 0
) -> float:
    """Run ``onnx_path`` with onnxruntime (CPU) and PyTorch on the same random input; return the max abs diff."""
    actual, expected = onnxruntime_and_torch_outputs(model, onnx_path, img_size, batch_size, seed)
    return float(abs(actual - expected).max())


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='emo_1m', help='registered EMO model name')
    parser.add_argument(
        '--checkpoint', default=None, help='official net.pth (or any EMO state_dict); random init if unset'
    )
    parser.add_argument('--out', required=True, type=Path, help='output .onnx file')
    parser.add_argument('--img-size', default=224, type=int)
    parser.add_argument('--batch-size', default=1, type=int)
    parser.add_argument('--opset', default=None, type=int, help='ONNX opset (default: the exporter default)')
    parser.add_argument('--no-verify', action='store_true', help='skip the onnxruntime comparison')
    return parser


def main(argv: list[str] | None = None) -> float | None:
    args = get_args_parser().parse_args(argv)
    model, out = export_timm_model(
        args.model,
        args.checkpoint,
        load_official_checkpoint,
        lambda m: export_onnx(m, args.out, args.img_size, args.batch_size, args.opset),
    )
    if args.no_verify:
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print('onnxruntime not installed: skipped the numerical check')
        return None
    diff = max_abs_diff_onnxruntime(model, out, args.img_size, args.batch_size)
    print(f'onnxruntime vs PyTorch: max abs diff {diff:.3e}')
    return diff


if __name__ == '__main__':
    main()
