"""The mmseg-layout loader: keys written here from mmsegmentation's naming rules (independently of model.py),
random values, strict loading."""

import pytest
import torch

from energy_anomaly_seg.mmseg_checkpoint import load_backbone_pretrained, load_mmseg_checkpoint
from energy_anomaly_seg.model import VARIANTS, create_model


def mmseg_layout(depth, stem=64, base=64, aspp=512, aux=256, ood=256, num_classes=19, with_head=True):
    """{key: shape} of mmseg's EncoderDecoder(ResNetV1c, ASPPHead, FCNHead aux) + SLEEG's patch_head (FCNHead x3)."""
    shapes = {}

    def conv(name, cout, cin, k):
        shapes[f"{name}.weight"] = (cout, cin, k, k)

    def bn(name, c):  # mmcv SyncBN / BN: affine + running stats + counter
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{p}"] = (c,)
        shapes[f"{name}.num_batches_tracked"] = ()

    def conv_module(name, cout, cin, k):  # mmcv ConvModule: conv (no bias with a norm) + bn
        conv(f"{name}.conv", cout, cin, k)
        bn(f"{name}.bn", cout)

    half = stem // 2  # ResNetV1c deep stem: Sequential(conv, bn, relu, conv, bn, relu, conv, bn, relu)
    conv("backbone.stem.0", half, 3, 3)
    bn("backbone.stem.1", half)
    conv("backbone.stem.3", half, half, 3)
    bn("backbone.stem.4", half)
    conv("backbone.stem.6", stem, half, 3)
    bn("backbone.stem.7", stem)
    bottleneck = depth >= 50
    expansion = 4 if bottleneck else 1
    blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    inplanes = stem
    for i, n in enumerate(blocks):
        planes = base * 2**i
        for j in range(n):
            p = f"backbone.layer{i + 1}.{j}"
            cin = inplanes if j == 0 else planes * expansion
            if bottleneck:
                conv(f"{p}.conv1", planes, cin, 1)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", planes * 4, planes, 1)
                bn(f"{p}.bn3", planes * 4)
            else:
                conv(f"{p}.conv1", planes, cin, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            stride = 2 if i == 1 else 1  # strides (1, 2, 1, 1)
            if j == 0 and (stride != 1 or inplanes != planes * expansion):
                conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
                bn(f"{p}.downsample.1", planes * expansion)
        inplanes = planes * expansion
    c3, c4 = inplanes // 2, inplanes
    conv_module("decode_head.image_pool.1", aspp, c4, 1)
    conv_module("decode_head.aspp_modules.0", aspp, c4, 1)
    for i in (1, 2, 3):
        conv_module(f"decode_head.aspp_modules.{i}", aspp, c4, 3)
    conv_module("decode_head.bottleneck", aspp, 5 * aspp, 3)
    shapes["decode_head.conv_seg.weight"] = (num_classes, aspp, 1, 1)
    shapes["decode_head.conv_seg.bias"] = (num_classes,)
    conv_module("auxiliary_head.convs.0", aux, c3, 3)
    shapes["auxiliary_head.conv_seg.weight"] = (num_classes, aux, 1, 1)
    shapes["auxiliary_head.conv_seg.bias"] = (num_classes,)
    if with_head:
        for i in range(3):
            conv_module(f"patch_head.convs.{i}", ood, c4 if i == 0 else ood, 3)
        shapes["patch_head.conv_seg.weight"], shapes["patch_head.conv_seg.bias"] = (2, ood, 1, 1), (2,)
    return shapes


def random_state(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        k: (
            torch.randint(0, 100, s, generator=g)
            if k.endswith("num_batches_tracked")
            else torch.rand(s, generator=g) + 0.5
        )
        for k, s in shapes.items()
    }


def mmcv_file(state, prefix=""):
    return {
        "meta": {"mmseg_version": "0.27.0", "iter": 40000, "CLASSES": ["road", "sidewalk"], "seed": 0},
        "state_dict": {prefix + k: v for k, v in state.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "momentum": 0.9}]},
    }


TEST_VARIANT = dict(depth=18, stem=8, base=8, aspp=8, aux=8, ood=8)


def test_variant_settings_match_layout_helper():
    v = VARIANTS["deeplabv3_r18_d8_test"]
    assert (
        v["depth"],
        v["stem_channels"],
        v["base_channels"],
        v["aspp_channels"],
        v["aux_channels"],
        v["ood_channels"],
    ) == tuple(TEST_VARIANT.values())


def test_r101_model_has_exactly_the_mmseg_keys_and_shapes():
    with torch.device("meta"):
        model = create_model("deeplabv3_r101_d8")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == mmseg_layout(101)


def test_strict_load_of_random_mmseg_checkpoint(tmp_path):
    state = random_state(mmseg_layout(**TEST_VARIANT))
    path = tmp_path / "sleeg_mmseg.pth"
    torch.save(mmcv_file(state, prefix="module."), path)  # DDP-saved keys
    model = create_model("deeplabv3_r18_d8_test")
    info = load_mmseg_checkpoint(model, path, allow_missing_ood_head=False)
    assert info["ood_head_loaded"] and info["loaded_keys"] == len(state) and info["meta"]["iter"] == 40000
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    model.eval()(torch.randn(1, 3, 32, 64))  # usable


def test_segmentor_only_file_keeps_head_unless_required():
    state = random_state(mmseg_layout(**TEST_VARIANT, with_head=False), seed=1)
    model = create_model("deeplabv3_r18_d8_test")
    head_before = {k: v.clone() for k, v in model.patch_head.state_dict().items()}
    info = load_mmseg_checkpoint(model, mmcv_file(state))
    assert not info["ood_head_loaded"]
    assert all(torch.equal(model.patch_head.state_dict()[k], v) for k, v in head_before.items())
    assert torch.equal(model.state_dict()["backbone.stem.0.weight"], state["backbone.stem.0.weight"])
    with pytest.raises(KeyError, match=r"missing key\(s\): patch_head\.conv_seg\.bias"):
        load_mmseg_checkpoint(create_model("deeplabv3_r18_d8_test"), mmcv_file(state), allow_missing_ood_head=False)


@pytest.mark.parametrize(
    "corruption, message",
    [
        ("drop", r"1 missing key\(s\): backbone\.layer2\.0\.downsample\.1\.running_var"),
        ("extra", r"1 unexpected key\(s\): decode_head\.conv_seg_extra\.weight"),
        ("shape", r"wrong shape key\(s\): decode_head\.conv_seg\.weight: checkpoint \(20, 8, 1, 1\)"),
    ],
)
def test_loader_is_strict(corruption, message):
    state = random_state(mmseg_layout(**TEST_VARIANT))
    if corruption == "drop":
        del state["backbone.layer2.0.downsample.1.running_var"]
    elif corruption == "extra":
        state["decode_head.conv_seg_extra.weight"] = torch.zeros(1)
    else:
        state["decode_head.conv_seg.weight"] = torch.zeros(20, 8, 1, 1)
    model = create_model("deeplabv3_r18_d8_test")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(KeyError, match=message):
        load_mmseg_checkpoint(model, mmcv_file(state))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # untouched on failure


def test_imagenet_v1c_backbone_loader():
    layout = mmseg_layout(**TEST_VARIANT)
    backbone = {k.removeprefix("backbone."): v for k, v in random_state(layout, 2).items() if k.startswith("backbone.")}
    backbone["fc.weight"], backbone["fc.bias"] = torch.zeros(1000, 64), torch.zeros(1000)
    model = create_model("deeplabv3_r18_d8_test")
    assert load_backbone_pretrained(model, {"state_dict": backbone}) == len(backbone) - 2
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, backbone["layer4.1.bn2.running_var"])
    del backbone["layer1.0.conv1.weight"]
    with pytest.raises(KeyError, match="layer1.0.conv1.weight"):
        load_backbone_pretrained(model, backbone)
