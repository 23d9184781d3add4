"""Backbones, decoder shapes, the official key layouts, C2D checkpoint loading and the double-softmax switch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anm.model import DigitsCNN, ReconstructionDecoder, SupCEResNet, create_model, load_c2d_checkpoint

# The state-dict keys of the released SANM networks, written from resnetc2d.py (SupCEResNet("resnet18") with its
# recon_module) and PreResNet.py (DivideMix's PreAct ResNet-18 + recon_module), in their registration order. Both
# end with the same decoder, registered last.
RECON_MODULE_KEYS = [f"recon_module.layer{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")]
OFFICIAL_SUPCE_RESNET18_KEYS = [
    "encoder.conv1.weight",
    "encoder.bn1.weight",
    "encoder.bn1.bias",
    "encoder.bn1.running_mean",
    "encoder.bn1.running_var",
    "encoder.bn1.num_batches_tracked",
    "encoder.layer1.0.conv1.weight",
    "encoder.layer1.0.bn1.weight",
    "encoder.layer1.0.bn1.bias",
    "encoder.layer1.0.bn1.running_mean",
    "encoder.layer1.0.bn1.running_var",
    "encoder.layer1.0.bn1.num_batches_tracked",
    "encoder.layer1.0.conv2.weight",
    "encoder.layer1.0.bn2.weight",
    "encoder.layer1.0.bn2.bias",
    "encoder.layer1.0.bn2.running_mean",
    "encoder.layer1.0.bn2.running_var",
    "encoder.layer1.0.bn2.num_batches_tracked",
    "encoder.layer1.1.conv1.weight",
    "encoder.layer1.1.bn1.weight",
    "encoder.layer1.1.bn1.bias",
    "encoder.layer1.1.bn1.running_mean",
    "encoder.layer1.1.bn1.running_var",
    "encoder.layer1.1.bn1.num_batches_tracked",
    "encoder.layer1.1.conv2.weight",
    "encoder.layer1.1.bn2.weight",
    "encoder.layer1.1.bn2.bias",
    "encoder.layer1.1.bn2.running_mean",
    "encoder.layer1.1.bn2.running_var",
    "encoder.layer1.1.bn2.num_batches_tracked",
    "encoder.layer2.0.conv1.weight",
    "encoder.layer2.0.bn1.weight",
    "encoder.layer2.0.bn1.bias",
    "encoder.layer2.0.bn1.running_mean",
    "encoder.layer2.0.bn1.running_var",
    "encoder.layer2.0.bn1.num_batches_tracked",
    "encoder.layer2.0.conv2.weight",
    "encoder.layer2.0.bn2.weight",
    "encoder.layer2.0.bn2.bias",
    "encoder.layer2.0.bn2.running_mean",
    "encoder.layer2.0.bn2.running_var",
    "encoder.layer2.0.bn2.num_batches_tracked",
    "encoder.layer2.0.shortcut.0.weight",
    "encoder.layer2.0.shortcut.1.weight",
    "encoder.layer2.0.shortcut.1.bias",
    "encoder.layer2.0.shortcut.1.running_mean",
    "encoder.layer2.0.shortcut.1.running_var",
    "encoder.layer2.0.shortcut.1.num_batches_tracked",
    "encoder.layer2.1.conv1.weight",
    "encoder.layer2.1.bn1.weight",
    "encoder.layer2.1.bn1.bias",
    "encoder.layer2.1.bn1.running_mean",
    "encoder.layer2.1.bn1.running_var",
    "encoder.layer2.1.bn1.num_batches_tracked",
    "encoder.layer2.1.conv2.weight",
    "encoder.layer2.1.bn2.weight",
    "encoder.layer2.1.bn2.bias",
    "encoder.layer2.1.bn2.running_mean",
    "encoder.layer2.1.bn2.running_var",
    "encoder.layer2.1.bn2.num_batches_tracked",
    "encoder.layer3.0.conv1.weight",
    "encoder.layer3.0.bn1.weight",
    "encoder.layer3.0.bn1.bias",
    "encoder.layer3.0.bn1.running_mean",
    "encoder.layer3.0.bn1.running_var",
    "encoder.layer3.0.bn1.num_batches_tracked",
    "encoder.layer3.0.conv2.weight",
    "encoder.layer3.0.bn2.weight",
    "encoder.layer3.0.bn2.bias",
    "encoder.layer3.0.bn2.running_mean",
    "encoder.layer3.0.bn2.running_var",
    "encoder.layer3.0.bn2.num_batches_tracked",
    "encoder.layer3.0.shortcut.0.weight",
    "encoder.layer3.0.shortcut.1.weight",
    "encoder.layer3.0.shortcut.1.bias",
    "encoder.layer3.0.shortcut.1.running_mean",
    "encoder.layer3.0.shortcut.1.running_var",
    "encoder.layer3.0.shortcut.1.num_batches_tracked",
    "encoder.layer3.1.conv1.weight",
    "encoder.layer3.1.bn1.weight",
    "encoder.layer3.1.bn1.bias",
    "encoder.layer3.1.bn1.running_mean",
    "encoder.layer3.1.bn1.running_var",
    "encoder.layer3.1.bn1.num_batches_tracked",
    "encoder.layer3.1.conv2.weight",
    "encoder.layer3.1.bn2.weight",
    "encoder.layer3.1.bn2.bias",
    "encoder.layer3.1.bn2.running_mean",
    "encoder.layer3.1.bn2.running_var",
    "encoder.layer3.1.bn2.num_batches_tracked",
    "encoder.layer4.0.conv1.weight",
    "encoder.layer4.0.bn1.weight",
    "encoder.layer4.0.bn1.bias",
    "encoder.layer4.0.bn1.running_mean",
    "encoder.layer4.0.bn1.running_var",
    "encoder.layer4.0.bn1.num_batches_tracked",
    "encoder.layer4.0.conv2.weight",
    "encoder.layer4.0.bn2.weight",
    "encoder.layer4.0.bn2.bias",
    "encoder.layer4.0.bn2.running_mean",
    "encoder.layer4.0.bn2.running_var",
    "encoder.layer4.0.bn2.num_batches_tracked",
    "encoder.layer4.0.shortcut.0.weight",
    "encoder.layer4.0.shortcut.1.weight",
    "encoder.layer4.0.shortcut.1.bias",
    "encoder.layer4.0.shortcut.1.running_mean",
    "encoder.layer4.0.shortcut.1.running_var",
    "encoder.layer4.0.shortcut.1.num_batches_tracked",
    "encoder.layer4.1.conv1.weight",
    "encoder.layer4.1.bn1.weight",
    "encoder.layer4.1.bn1.bias",
    "encoder.layer4.1.bn1.running_mean",
    "encoder.layer4.1.bn1.running_var",
    "encoder.layer4.1.bn1.num_batches_tracked",
    "encoder.layer4.1.conv2.weight",
    "encoder.layer4.1.bn2.weight",
    "encoder.layer4.1.bn2.bias",
    "encoder.layer4.1.bn2.running_mean",
    "encoder.layer4.1.bn2.running_var",
    "encoder.layer4.1.bn2.num_batches_tracked",
    "fc.weight",
    "fc.bias",
    *RECON_MODULE_KEYS,
]

OFFICIAL_SANM_PREACT_RESNET18_KEYS = [
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "layer1.0.bn1.weight",
    "layer1.0.bn1.bias",
    "layer1.0.bn1.running_mean",
    "layer1.0.bn1.running_var",
    "layer1.0.bn1.num_batches_tracked",
    "layer1.0.conv1.weight",
    "layer1.0.bn2.weight",
    "layer1.0.bn2.bias",
    "layer1.0.bn2.running_mean",
    "layer1.0.bn2.running_var",
    "layer1.0.bn2.num_batches_tracked",
    "layer1.0.conv2.weight",
    "layer1.1.bn1.weight",
    "layer1.1.bn1.bias",
    "layer1.1.bn1.running_mean",
    "layer1.1.bn1.running_var",
    "layer1.1.bn1.num_batches_tracked",
    "layer1.1.conv1.weight",
    "layer1.1.bn2.weight",
    "layer1.1.bn2.bias",
    "layer1.1.bn2.running_mean",
    "layer1.1.bn2.running_var",
    "layer1.1.bn2.num_batches_tracked",
    "layer1.1.conv2.weight",
    "layer2.0.bn1.weight",
    "layer2.0.bn1.bias",
    "layer2.0.bn1.running_mean",
    "layer2.0.bn1.running_var",
    "layer2.0.bn1.num_batches_tracked",
    "layer2.0.conv1.weight",
    "layer2.0.bn2.weight",
    "layer2.0.bn2.bias",
    "layer2.0.bn2.running_mean",
    "layer2.0.bn2.running_var",
    "layer2.0.bn2.num_batches_tracked",
    "layer2.0.conv2.weight",
    "layer2.0.shortcut.0.weight",
    "layer2.1.bn1.weight",
    "layer2.1.bn1.bias",
    "layer2.1.bn1.running_mean",
    "layer2.1.bn1.running_var",
    "layer2.1.bn1.num_batches_tracked",
    "layer2.1.conv1.weight",
    "layer2.1.bn2.weight",
    "layer2.1.bn2.bias",
    "layer2.1.bn2.running_mean",
    "layer2.1.bn2.running_var",
    "layer2.1.bn2.num_batches_tracked",
    "layer2.1.conv2.weight",
    "layer3.0.bn1.weight",
    "layer3.0.bn1.bias",
    "layer3.0.bn1.running_mean",
    "layer3.0.bn1.running_var",
    "layer3.0.bn1.num_batches_tracked",
    "layer3.0.conv1.weight",
    "layer3.0.bn2.weight",
    "layer3.0.bn2.bias",
    "layer3.0.bn2.running_mean",
    "layer3.0.bn2.running_var",
    "layer3.0.bn2.num_batches_tracked",
    "layer3.0.conv2.weight",
    "layer3.0.shortcut.0.weight",
    "layer3.1.bn1.weight",
    "layer3.1.bn1.bias",
    "layer3.1.bn1.running_mean",
    "layer3.1.bn1.running_var",
    "layer3.1.bn1.num_batches_tracked",
    "layer3.1.conv1.weight",
    "layer3.1.bn2.weight",
    "layer3.1.bn2.bias",
    "layer3.1.bn2.running_mean",
    "layer3.1.bn2.running_var",
    "layer3.1.bn2.num_batches_tracked",
    "layer3.1.conv2.weight",
    "layer4.0.bn1.weight",
    "layer4.0.bn1.bias",
    "layer4.0.bn1.running_mean",
    "layer4.0.bn1.running_var",
    "layer4.0.bn1.num_batches_tracked",
    "layer4.0.conv1.weight",
    "layer4.0.bn2.weight",
    "layer4.0.bn2.bias",
    "layer4.0.bn2.running_mean",
    "layer4.0.bn2.running_var",
    "layer4.0.bn2.num_batches_tracked",
    "layer4.0.conv2.weight",
    "layer4.0.shortcut.0.weight",
    "layer4.1.bn1.weight",
    "layer4.1.bn1.bias",
    "layer4.1.bn1.running_mean",
    "layer4.1.bn1.running_var",
    "layer4.1.bn1.num_batches_tracked",
    "layer4.1.conv1.weight",
    "layer4.1.bn2.weight",
    "layer4.1.bn2.bias",
    "layer4.1.bn2.running_mean",
    "layer4.1.bn2.running_var",
    "layer4.1.bn2.num_batches_tracked",
    "layer4.1.conv2.weight",
    "linear.weight",
    "linear.bias",
    *RECON_MODULE_KEYS,
]


def _random_state(keys: list[str], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(shapes[k], generator=gen) if "num_batches" not in k else torch.tensor(3) for k in keys}


def test_supce_resnet18_loads_official_keys_strictly() -> None:
    model = create_model("supce_resnet18")
    assert list(model.state_dict()) == OFFICIAL_SUPCE_RESNET18_KEYS
    state = _random_state(OFFICIAL_SUPCE_RESNET18_KEYS, model)
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.encoder.layer4[0].shortcut[1].weight, state["encoder.layer4.0.shortcut.1.weight"])
    # 11.17 M (ResNet-18 + fc) + 3.28 M (decoder 512-256-128-3)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962 + 3_283_331


def test_preact_resnet18_sanm_loads_official_keys_strictly() -> None:
    model = create_model("preact_resnet18")
    assert sorted(model.state_dict()) == sorted(OFFICIAL_SANM_PREACT_RESNET18_KEYS)
    model.load_state_dict(_random_state(OFFICIAL_SANM_PREACT_RESNET18_KEYS, model), strict=True)


@pytest.mark.parametrize(
    ("name", "size", "fmap"),
    [
        ("supce_resnet18_tiny", 32, 4),
        ("supce_resnet50_tiny", 224, 7),
        ("preact_resnet18_tiny", 32, 4),
        ("digits_cnn_tiny", 16, 4),
    ],
)
def test_feature_map_and_decoder_shapes(name: str, size: int, fmap: int) -> None:
    model = create_model(name, num_classes=14).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feature_map = model.forward_feature_map(x)
        assert feature_map.shape == (2, model.num_features, fmap, fmap)
        assert model.reconstruct(feature_map).shape == x.shape
        torch.testing.assert_close(model.forward_head(model.pool(feature_map)), model(x))


def test_flattened_digits_cnn_head_sees_the_whole_map() -> None:
    """``digits_cnn_flat`` (the CPU evidence's network): the 4 x 4 map flattened into the head, the decoder on the map;
    another input size is refused with a message."""
    model = create_model("digits_cnn_flat", num_classes=10, width=8).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        fmap = model.forward_feature_map(x)
        assert fmap.shape == (2, 32, 4, 4) and model.num_features == 32 * 16
        assert model.forward_features(x).shape == (2, 512)
        assert model.reconstruct(fmap).shape == x.shape
        torch.testing.assert_close(model(x), model.fc(fmap.flatten(1)))
        with pytest.raises(ValueError, match="16 x 16"):
            model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="pool"):
        DigitsCNN(pool="max")


def test_released_decoder_sizes() -> None:
    """The intermediate sizes of the sheet: 4 -> 10 -> 15 -> 32 (ResNet-18), 7 -> 25 -> 75 -> 224 (ResNet-50)."""
    for layout, start, sizes in (("resnet18", 4, (10, 15, 32)), ("resnet50", 7, (25, 75, 224))):
        channels = 512 if layout == "resnet18" else 2048
        decoder = ReconstructionDecoder(channels, layout)
        h = torch.zeros(1, channels, start, start)
        for layer, size, out_channels in zip((decoder.layer1, decoder.layer2, decoder.layer3), sizes, (256, 128, 3)):
            h = layer(h)
            assert h.shape == (1, out_channels, size, size)
        assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.BatchNorm2d)) for m in decoder.modules())


def test_double_softmax_changes_only_the_resnet18_output() -> None:
    torch.manual_seed(0)
    plain = create_model("supce_resnet18_tiny")
    quirk = create_model("supce_resnet18_tiny", double_softmax=True)
    quirk.load_state_dict(plain.state_dict())
    x = torch.randn(3, 3, 32, 32)
    plain.eval(), quirk.eval()
    with torch.no_grad():
        torch.testing.assert_close(quirk(x), F.softmax(plain(x), dim=1))  # softmax probabilities as "logits"
        torch.testing.assert_close(quirk.forward_feature_map(x), plain.forward_feature_map(x))  # features unchanged
        # so every loss sees softmax(softmax(z)): flatter than softmax(z)
        assert F.softmax(quirk(x), 1).max() < F.softmax(plain(x), 1).max()
    r50 = create_model("supce_resnet50_tiny", double_softmax=True)
    assert not r50.double_softmax  # the released ResNet-50 branch returns raw logits


def _c2d_file(tmp_path, model: SupCEResNet, drop: str | None = None, extra: str | None = None):
    weights = {f"module.{k}": v.clone() + 1 for k, v in model.state_dict().items() if k.startswith("encoder.")}
    weights["module.head.0.weight"] = torch.zeros(4, 4)  # SimCLR projection head: dropped
    if drop:
        weights.pop(f"module.{drop}")
    if extra:
        weights[f"module.{extra}"] = torch.zeros(1)
    path = tmp_path / "ckpt_cifar10_resnet18.pth"
    torch.save({"model": weights, "epoch": 500}, path)
    return path, weights


def test_c2d_checkpoint_loads_encoder_strictly(tmp_path) -> None:
    model = create_model("supce_resnet18_tiny")
    path, weights = _c2d_file(tmp_path, create_model("supce_resnet18_tiny"))
    fresh = model.fc.weight.clone()
    left = load_c2d_checkpoint(model, path)
    assert torch.equal(model.encoder.conv1.weight, weights["module.encoder.conv1.weight"])
    assert torch.equal(model.fc.weight, fresh)
    assert set(left) == {"fc.weight", "fc.bias", *RECON_MODULE_KEYS}


def test_c2d_checkpoint_in_supcontrast_save_format_loads(tmp_path) -> None:
    """SupContrast's save_model stores {'opt': argparse.Namespace, 'model', 'optimizer', 'epoch'}; the Namespace of
    plain values is allowed, any other pickled object still refused."""
    import argparse
    import datetime

    model = create_model("supce_resnet18_tiny")
    path, weights = _c2d_file(tmp_path, create_model("supce_resnet18_tiny"))
    opt = argparse.Namespace(model="resnet18", learning_rate=0.5, lr_decay_epochs=[700, 800, 900], cosine=True)
    torch.save({"opt": opt, "model": weights, "optimizer": {"state": {}, "param_groups": []}, "epoch": 1000}, path)
    load_c2d_checkpoint(model, path)
    assert torch.equal(model.encoder.conv1.weight, weights["module.encoder.conv1.weight"])
    torch.save({"opt": opt, "when": datetime.timedelta(days=1), "model": weights}, path)
    with pytest.raises(ValueError, match="not a readable C2D checkpoint"):
        load_c2d_checkpoint(model, path)


def test_c2d_checkpoint_mismatch_is_a_clear_error(tmp_path) -> None:
    model = create_model("supce_resnet18_tiny")
    path, _ = _c2d_file(tmp_path, create_model("supce_resnet18_tiny"), drop="encoder.layer2.0.shortcut.0.weight")
    with pytest.raises(ValueError, match="1 missing .*layer2.0.shortcut.0.weight"):
        load_c2d_checkpoint(model, path)
    path, _ = _c2d_file(tmp_path, create_model("supce_resnet18_tiny"), extra="encoder.layer5.0.conv1.weight")
    with pytest.raises(ValueError, match="1 unexpected"):
        load_c2d_checkpoint(model, path)
    path, _ = _c2d_file(tmp_path, create_model("supce_resnet18", width=16))
    with pytest.raises(ValueError, match="of another shape"):
        load_c2d_checkpoint(model, path)
    with pytest.raises(FileNotFoundError, match="ckpt_missing.pth"):
        load_c2d_checkpoint(model, tmp_path / "ckpt_missing.pth")
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="expected a dict with a 'model' state dict"):
        load_c2d_checkpoint(model, tmp_path / "other.pth")


def test_unknown_variant_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="supce_resnet18"):
        create_model("resnet1000")
