"""Export an EMO classifier to ONNX and check it against PyTorch with onnxruntime.

    python -m emo.export_onnx --model emo_1m [--checkpoint PATH] --output_onnx emo_1m.onnx [--img_size 224]

Uses ``torch.onnx.export(..., dynamo=True)`` (needs ``onnx`` and ``onnxscript``) with a fixed input size: the EW-
MHSA padding and grid partition depend on the feature-map size, so export at the size you will run. The exported
graph is run with onnxruntime on a random input and the max abs difference to PyTorch is printed. The command is
``shared.export.export_command``; ``--no-verify`` skips the check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import emo.model  # noqa: F401  (registers the EMO models with timm)
from emo.weights import load_official_checkpoint
from shared.config import script_parser
from shared.export import ExportConfig, export_command

__all__ = ["EMOExportConfig", "main", "parse_args"]


@dataclass
class EMOExportConfig(ExportConfig):
    model: str = field(default="emo_1m", metadata={"help": "registered EMO model name"})


parse_args = script_parser(EMOExportConfig, "Export an EMO classifier to ONNX and check it with onnxruntime.")


def main(cfg: EMOExportConfig) -> tuple[float, float] | None:
    """Export and (with ``verify``) return onnxruntime's (max abs, relative) difference to PyTorch."""
    return export_command(cfg, load_official_checkpoint)


if __name__ == "__main__":
    main(parse_args())
