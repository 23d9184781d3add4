"""ONNX export (torch.onnx dynamo exporter) checked against PyTorch in onnxruntime."""

import onnx  # noqa: F401  (hard dependencies of the exporter and its check: a broken install fails here)
import onnxruntime  # noqa: F401
import onnxscript  # noqa: F401
import pytest
import timm
import torch

import emo  # noqa: F401  (registers the models)
from emo.export_onnx import main, parse_args
from shared.export import export_classifier_onnx, onnxruntime_diff


def test_export_tiny_variant_cli(tmp_path, capsys):
    """The CLI with an official-style checkpoint, at an input size whose stage-3 map (5 x 5) needs the EW-MHSA
    padding; the returned diff is onnxruntime vs PyTorch on the loaded weights."""
    torch.manual_seed(0)
    model = timm.create_model('emo_test')
    for m in model.modules():  # non-trivial BN statistics, so the checkpoint differs from the default init
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    ckpt = tmp_path / 'net.pth'
    torch.save({'net': {}, 'net_E': model.state_dict()}, ckpt)
    out = tmp_path / 'emo_test.onnx'
    diff, _ = main(
        parse_args(['--model', 'emo_test', '--checkpoint', str(ckpt), '--output_onnx', str(out), '--img_size', '80'])
    )
    assert out.is_file() and not (tmp_path / 'emo_test.onnx.data').exists()  # weights embedded
    assert diff < 1e-4
    assert 'max abs diff' in capsys.readouterr().out
    # the exported graph holds the checkpoint's weights, not a fresh init
    assert onnxruntime_diff(model.eval(), out, img_size=80, seed=1)[0] < 1e-4


@pytest.mark.slow
def test_export_emo_1m(tmp_path):
    model = timm.create_model('emo_1m').eval()
    out = export_classifier_onnx(model, tmp_path / 'emo_1m.onnx', img_size=224)
    assert onnxruntime_diff(model, out, img_size=224)[0] < 1e-4


def test_export_command_needs_an_output_file():
    with pytest.raises(ValueError, match='--output_onnx'):
        main(parse_args([]))
    assert parse_args(['--output_onnx', 'x.onnx', '--no-verify']).verify is False
