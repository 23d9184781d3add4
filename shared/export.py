"""ONNX export of an image classifier and its numerical check against PyTorch with onnxruntime.

The export uses ``torch.onnx.export(..., dynamo=True)`` (needs ``onnx`` and ``onnxscript``) for a fixed
``(batch_size, 3, img_size, img_size)`` input, with the weights embedded in the file. :class:`ExportConfig` and
:func:`export_command` are the ``python -m <pkg>.export_onnx`` command of the timm backbones (emo, pvg).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ExportConfig",
    "export_classifier_onnx",
    "export_command",
    "export_timm_model",
    "onnxruntime_and_torch_outputs",
    "onnxruntime_diff",
]


def export_classifier_onnx(
    model: torch.nn.Module,
    out: str | Path,
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
            input_names=["input"],
            output_names=["logits"],
        )
    return out


def onnxruntime_and_torch_outputs(
    model: torch.nn.Module, onnx_path: str | Path, img_size: int = 224, batch_size: int = 1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``onnx_path`` with onnxruntime (CPU) and ``model`` (eval mode) on the same seeded random input.

    Returns ``(onnxruntime output, PyTorch output)``.
    """
    import onnxruntime as ort

    x = torch.randn(batch_size, 3, img_size, img_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return actual, expected


def export_timm_model(
    name: str,
    checkpoint: str | Path | None,
    load_weights: Callable[[torch.nn.Module, str | Path], object],
    export: Callable[[torch.nn.Module], Path],
) -> tuple[torch.nn.Module, Path]:
    """The body of a package's export command: create the timm model ``name``, load ``checkpoint`` into it with
    ``load_weights`` (without one the export says it is randomly initialised), ``export(model)``, and print where the
    file went and its size. Returns the model and the file."""
    import timm

    model = timm.create_model(name)
    if checkpoint:
        load_weights(model, checkpoint)
    else:
        print(f"no --checkpoint: exporting a randomly initialised {name}")
    out = export(model)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB)")
    return model, out


def onnxruntime_diff(
    model: torch.nn.Module, onnx_path: str | Path, img_size: int = 224, batch_size: int = 1, seed: int = 0
) -> tuple[float, float]:
    """Run ``onnx_path`` with onnxruntime (CPU) and PyTorch on the same random input: the max abs difference, and
    that difference relative to the largest PyTorch output (randomly initialised models can give logits in the
    thousands, where the relative one is the meaningful check)."""
    actual, expected = onnxruntime_and_torch_outputs(model, onnx_path, img_size, batch_size, seed)
    diff = float(abs(actual - expected).max())
    return diff, diff / max(float(abs(expected).max()), 1e-12)


@dataclass
class ExportConfig:
    """``python -m <pkg>.export_onnx`` settings (a package subclasses it to set its default ``model``)."""

    model: str = field(default="", metadata={"help": "registered timm model name"})
    output_onnx: str = field(default="", metadata={"help": "the .onnx file to write (required)"})
    checkpoint: str | None = field(
        default=None, metadata={"help": "official release file or state_dict; random init if unset"}
    )
    img_size: int = 224
    batch_size: int = 1
    opset: int | None = field(default=None, metadata={"help": "ONNX opset (default: the exporter's)"})
    verify: bool = field(default=True, metadata={"help": "compare with PyTorch in onnxruntime (--no-verify: skip)"})


def export_command(
    cfg: ExportConfig, load_weights: Callable[[torch.nn.Module, str | Path], object]
) -> tuple[float, float] | None:
    """Export ``cfg.model`` (weights from ``cfg.checkpoint`` through ``load_weights``) to ``cfg.output_onnx`` and,
    with ``cfg.verify``, print and return onnxruntime's (max abs, relative) difference to PyTorch."""
    if not cfg.model or not cfg.output_onnx:
        raise ValueError("give --model NAME and --output_onnx FILE.onnx")
    model, out = export_timm_model(
        cfg.model,
        cfg.checkpoint,
        load_weights,
        lambda m: export_classifier_onnx(m, cfg.output_onnx, cfg.img_size, cfg.batch_size, cfg.opset),
    )
    if not cfg.verify:
        return None
    diff, rel = onnxruntime_diff(model, out, cfg.img_size, cfg.batch_size)
    print(f"onnxruntime vs PyTorch: max abs diff {diff:.3e} ({rel:.2e} of the largest output)")
    return diff, rel
