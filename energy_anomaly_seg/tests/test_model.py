"""Architecture: shapes, output stride, parameter counts against hand/independent counts, freezing."""

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

from energy_anomaly_seg.model import VARIANTS, FCNHead, count_parameters, create_deeplabv3, create_model


def test_ood_head_shapes_and_parameter_count():
    head = FCNHead(2048, 256, 2, num_convs=3)
    out = head(torch.randn(2, 2048, 8, 16))
    assert out.shape == (2, 2, 8, 16)
    # 3x3 conv 2048->256 + BN, two 3x3 convs 256->256 + BN (no conv bias before BN), 1x1 classifier 256->2 + bias
    expected = 2048 * 256 * 9 + 2 * 256 + 2 * (256 * 256 * 9 + 2 * 256) + 256 * 2 + 2
    assert expected == 5_900_290
    assert count_parameters(head) == expected
    assert [type(m).__name__ for m in head.convs] == ["ConvModule"] * 3


def test_r101_backbone_matches_torchvision_resnet101_plus_deep_stem():
    with torch.device("meta"):
        model = create_model("deeplabv3_r101_d8")
        tv = torchvision.models.resnet101()
    tv_conv_params = count_parameters(tv) - (2048 * 1000 + 1000)  # drop the classifier
    # V1c deep stem (3x3 3->32, 32->32, 32->64 + three BNs) instead of the 7x7 3->64 conv + BN
    stem_delta = (3 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 2 * (32 + 32 + 64)) - (3 * 64 * 49 + 2 * 64)
    assert count_parameters(model.backbone) == tv_conv_params + stem_delta == 42_519_392
    c = 512
    aspp = 2048 * c + 2 * c + 2048 * c + 2 * c + 3 * (2048 * c * 9 + 2 * c) + (5 * c * c * 9 + 2 * c) + c * 19 + 19
    assert count_parameters(model.decode_head) == aspp
    assert count_parameters(model.auxiliary_head) == 1024 * 256 * 9 + 2 * 256 + 256 * 19 + 19
    assert count_parameters(model.patch_head) == 5_900_290


def test_output_stride_8_and_dilations():
    model = create_model("deeplabv3_r18_d8_test").eval()
    out = model(torch.randn(1, 3, 64, 96))
    assert out["seg_logits"].shape == (1, 19, 8, 12)
    assert out["ood_logits"].shape == (1, 2, 8, 12)
    assert [f.shape[-2:] for f in out["features"]] == [(16, 24), (8, 12), (8, 12), (8, 12)]
    with torch.device("meta"):
        big = create_deeplabv3("deeplabv3_r101_d8")
    l3, l4 = big.backbone.layer3, big.backbone.layer4
    assert l3[0].conv2.dilation == (1, 1) and l3[1].conv2.dilation == (2, 2)  # contract_dilation
    assert l4[0].conv2.dilation == (2, 2) and l4[1].conv2.dilation == (4, 4)
    assert [m.conv.dilation[0] for m in big.decode_head.aspp_modules] == [1, 12, 24, 36]
    assert big.decode_head.aspp_modules[0].conv.kernel_size == (1, 1)
    assert len(l3) == 23 and big.backbone.stem[0].stride == (2, 2)


def test_segmentor_frozen_bn_eval_only_head_learns():
    torch.manual_seed(0)
    model = create_model("deeplabv3_r18_d8_test")
    model.train()
    assert model.patch_head.training and not model.backbone.training and not model.decode_head.training
    bn = model.backbone.layer1[0].bn1
    before_stats = bn.running_mean.clone()
    before_seg = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("patch_head")}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(torch.randn(2, 3, 32, 64))
    loss = F.cross_entropy(out["ood_logits"], torch.randint(0, 2, (2, 4, 8))) + out["seg_logits"].sum() * 0
    loss.backward()
    opt.step()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("patch_head"))
    assert all(p.grad is not None for p in model.patch_head.parameters())
    assert torch.equal(bn.running_mean, before_stats)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before_seg.items())


def test_timm_registration():
    model = timm.create_model("sleeg_deeplabv3_r18_d8_test")
    assert count_parameters(model.patch_head) == 64 * 8 * 9 + 2 * 8 + 2 * (8 * 8 * 9 + 2 * 8) + 8 * 2 + 2


def test_create_model_builds_the_variants_with_overrides():
    assert {"deeplabv3_r101_d8", "deeplabv3_r18_d8_tiny", "deeplabv3_r18_d8_test"} <= set(VARIANTS)
    model = create_model("deeplabv3_r18_d8_test", num_classes=5, segmentor_dropout_in_train=True)
    assert model.decode_head.conv_seg.out_channels == 5 and model.segmentor_dropout_in_train
    assert create_model("deeplabv3_r18_d8_test").decode_head.conv_seg.out_channels == 19  # Cityscapes
    segmentor = create_deeplabv3("deeplabv3_r18_d8_test")
    assert set(segmentor.state_dict()) == {k for k in model.state_dict() if not k.startswith("patch_head.")}
    with pytest.raises(ValueError, match="unknown variant"):
        create_model("deeplabv3_r7")
