"""ONNX export of an image classifier and its numerical check against PyTorch with onnxruntime.

The export uses ``torch.onnx.export(..., dynamo=True)`` (needs ``onnx`` and ``onnxscript``) for a fixed
``(batch_size, 3, img_size, img_size)`` input, with the weights embedded in the file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = ["export_classifier_onnx", "export_timm_model", "onnxruntime_and_torch_outputs"]


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
