"""Export an EMO classifier to ONNX and check it against PyTorch with onnxruntime.

    python -m emo.export_onnx --model emo_1m [--checkpoint PATH] --out emo_1m.onnx [--img-size 224]

Uses ``torch.onnx.export(..., dynamo=True)`` (needs ``onnx`` and ``onnxscript``) with a fixed input size: the
EW-MHSA padding and grid partition depend on the feature-map size, so export at the size you will run. When
``onnxruntime`` is installed the exported graph is run on a random input and the max abs difference to PyTorch is
printed.
"""

import argparse
from pathlib import Path

import timm
import torch

import emo.model  # noqa: F401  (registers the EMO models with timm)
from emo.weights import load_official_checkpoint


def export_onnx(
    model: torch.nn.Module,
    out: Path,
    img_size: int = 224,
    batch_size: int = 1,
    opset: int | None = None,
) -> Path:
    """Export ``model`` (eval mode) for a fixed (batch_size, 3, img_size, img_size) input, weights embedded."""
    model.eval()
    example = torch.randn(batch_size, 3, img_size, img_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(out),
            dynamo=True,
            opset_version=opset,
            external_data=False,
            input_names=['input'],
            output_names=['logits'],
        )
    return out


def max_abs_diff_onnxruntime(
    model: torch.nn.Module, onnx_path: Path, img_size: int = 224, batch_size: int = 1, seed: int = 0
) -> float:
    """Run ``onnx_path`` with onnxruntime (CPU) and PyTorch on the same random input; return the max abs diff."""
    import onnxruntime as ort

    x = torch.randn(batch_size, 3, img_size, img_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
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
    model = timm.create_model(args.model)
    if args.checkpoint:
        load_official_checkpoint(model, args.checkpoint)
    else:
        print(f'no --checkpoint: exporting a randomly initialised {args.model}')
    out = export_onnx(model, args.out, args.img_size, args.batch_size, args.opset)
    print(f'wrote {out} ({out.stat().st_size / 2**20:.2f} MiB)')
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
