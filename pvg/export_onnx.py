"""Export a Pyramid ViG / PVG classifier to ONNX and check it against PyTorch with onnxruntime.

    python -m pvg.export_onnx --model pvg_s [--checkpoint PATH] --output_onnx pvg_s.onnx [--img_size 224]

Uses ``torch.onnx.export(..., dynamo=True)`` with a fixed input size (the graph's top-k and gathers are traced for
the node counts of that size; the fast path's query chunks are unrolled). The exported graph is run with onnxruntime
on a random input and the max abs difference to PyTorch is printed. The command is ``shared.export.export_command``;
``--no-verify`` skips the check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pvg.model  # noqa: F401  (registers the models with timm)
from pvg.weights import load_official_checkpoint
from shared.config import script_parser
from shared.export import ExportConfig, export_command

__all__ = ["PVGExportConfig", "main", "parse_args"]


@dataclass
class PVGExportConfig(ExportConfig):
    model: str = field(default="pvg_s", metadata={"help": "registered model name (pvig_*, pvg_*)"})


parse_args = script_parser(PVGExportConfig, "Export a Pyramid ViG / PVG classifier to ONNX and check it.")


def main(cfg: PVGExportConfig) -> tuple[float, float] | None:
    """Export and (with ``verify``) return onnxruntime's (max abs, relative) difference to PyTorch."""
    return export_command(cfg, load_official_checkpoint)


if __name__ == "__main__":
    main(parse_args())
