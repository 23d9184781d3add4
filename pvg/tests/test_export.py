"""ONNX export (torch.onnx dynamo exporter) checked against PyTorch in onnxruntime."""

import onnx  # noqa: F401  (hard dependencies of the exporter and its check: a broken install fails here)
import onnxruntime  # noqa: F401
import onnxscript  # noqa: F401
import pytest
import timm
import torch

import pvg  # noqa: F401  (registers the models)
from pvg.export_onnx import main, parse_args
from shared.export import export_classifier_onnx, onnxruntime_diff


def _perturb_bn(model):
    for m in model.modules():  # non-trivial BN statistics, so a file differs from the default init
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)


@pytest.mark.slow  # about 25 s on one thread: the exporter traces every Grapher's graph ops
def test_export_tiny_pvg_cli_with_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    model = timm.create_model('pvg_test')
    _perturb_bn(model)
    ckpt = tmp_path / 'pvg_test.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    out = tmp_path / 'pvg_test.onnx'
    _, rel = main(
        parse_args(['--model', 'pvg_test', '--checkpoint', str(ckpt), '--output_onnx', str(out), '--img_size', '64'])
    )
    assert out.is_file() and rel < 1e-5
    assert 'max abs diff' in capsys.readouterr().out
    # the exported graph holds the checkpoint's weights, not a fresh init
    assert onnxruntime_diff(model.eval(), out, img_size=64, seed=1)[1] < 1e-5


@pytest.mark.slow
def test_export_pvg_s_at_224(tmp_path):
    """pvg_s at its design size (about 60 s). Pyramid ViG-S exports the same way, but with random weights its
    dilated neighbour choice flips on near-ties between onnxruntime's and PyTorch's matmul rounding (README,
    Performance); with dilation 1 it agrees to 4e-6 relative."""
    torch.manual_seed(0)
    model = timm.create_model('pvg_s').eval()
    _perturb_bn(model)
    out = export_classifier_onnx(model, tmp_path / 'pvg_s.onnx', img_size=224)
    assert onnxruntime_diff(model, out, img_size=224)[1] < 1e-5
