import pytest
import torch

from shared.pretrained import imagenet_mobilenet_v2, mobilenet_v2_weights_path


def test_offline_mobilenet_v2_is_imagenet_trained():
    model = imagenet_mobilenet_v2().eval()
    # A constant image is not a class; what must hold is that the weights are not torchvision's random init:
    # the first conv of a trained model has structured filters with a known norm, and BN statistics are non-trivial.
    assert not torch.allclose(model.features[0][1].running_var, torch.ones(32))
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_altered_or_missing_weights_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        mobilenet_v2_weights_path(tmp_path / "absent.pth")
    fake = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save(imagenet_mobilenet_v2().state_dict() | {"extra": torch.zeros(1)}, fake)
    with pytest.raises(ValueError, match="SHA-256"):
        imagenet_mobilenet_v2(fake)
