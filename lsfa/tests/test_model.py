"""Backbones, checkpoint key layouts (strict), feature alignment shapes, adaptors."""

import pytest
import torch
import torch.nn.functional as F

from lsfa import model as lsfa_model


def _official_point_mae_file(model: lsfa_model.PointMAEEncoder, path, drop: str | None = None):
    base = {f"module.MAE_encoder.{k}": v.clone() for k, v in model.state_dict().items() if k != drop}
    base["module.MAE_decoder.blocks.0.norm1.weight"] = torch.ones(384)  # decoder / MAE-only keys are ignored
    base["module.mask_token"] = torch.zeros(1, 1, 384)
    base["module.increase_dim.0.weight"] = torch.zeros(8, 384, 1)
    torch.save({"base_model": base, "epoch": 300}, path)


def test_point_mae_official_layout_loads_strictly(tmp_path):
    torch.manual_seed(0)
    source = lsfa_model.PointMAEEncoder(lsfa_model.POINT_VARIANTS["point_mae"])
    assert sum(p.numel() for p in source.parameters()) > 20e6  # 12 blocks of width 384
    assert "blocks.blocks.11.attn.qkv.weight" in source.state_dict()
    assert source.blocks.blocks[0].attn.qkv.bias is None  # qkv without bias, as Point-MAE
    _official_point_mae_file(source, tmp_path / "pointmae_pretrain.pth")
    target = lsfa_model.create_point_encoder("point_mae", tmp_path / "pointmae_pretrain.pth")
    for k, v in source.state_dict().items():
        assert torch.equal(v, target.state_dict()[k]), k
    _official_point_mae_file(source, tmp_path / "broken.pth", drop="encoder.first_conv.0.weight")
    with pytest.raises(KeyError, match="encoder.first_conv.0.weight"):
        lsfa_model.load_point_mae_checkpoint(lsfa_model.PointMAEEncoder(), tmp_path / "broken.pth")
    torch.save({"model": {}}, tmp_path / "other.pth")
    with pytest.raises(KeyError, match="base_model"):
        lsfa_model.load_point_mae_checkpoint(lsfa_model.PointMAEEncoder(), tmp_path / "other.pth")


def test_dino_official_layout_loads_strictly(tmp_path):
    torch.manual_seed(0)
    source = lsfa_model.create_rgb_backbone("dino_vitb8")
    state = {k: v.clone() for k, v in source.state_dict().items()}
    assert state["patch_embed.proj.weight"].shape == (768, 3, 8, 8) and "cls_token" in state
    torch.save(state, tmp_path / "dino_vitbase8_pretrain.pth")
    target = lsfa_model.create_rgb_backbone("dino_vitb8", tmp_path / "dino_vitbase8_pretrain.pth")
    assert torch.equal(target.state_dict()["blocks.11.mlp.fc2.weight"], state["blocks.11.mlp.fc2.weight"])
    del state["norm.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(KeyError, match="norm.weight"):
        lsfa_model.load_dino_checkpoint(lsfa_model.create_rgb_backbone("dino_vitb8"), tmp_path / "broken.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        lsfa_model.load_dino_checkpoint(source, tmp_path / "missing.pth")


def test_adaptor_loading_refuses_missing_keys():
    adaptors = lsfa_model.create_model("lsfa_adaptors", xyz_dim=24, rgb_dim=12, num_heads=4, proj_dim=8)
    state = adaptors.state_dict()
    state.pop("xyz_block.attn.qkv.weight")
    with pytest.raises(KeyError, match="xyz_block.attn.qkv.weight"):
        lsfa_model.load_state_dict_strict(
            lsfa_model.LSFAAdaptors(24, 12, num_heads=4, proj_dim=8), state, "adaptors.pth"
        )
    paper = lsfa_model.create_model("lsfa_adaptors")
    assert paper.xyz_block.attn.num_heads == 12 and paper.xyz_head.out_features == 512
    assert paper.rgb_block.mlp.fc1.out_features == 4 * 768


@pytest.mark.parametrize(
    ("suffix", "rgb", "point"),
    [
        ("", "dino_vitb8", "point_mae"),
        ("_tiny", "vit_tiny8_d2", "point_mae_tiny"),
        ("_test", "vit_test8", "point_mae_test"),
    ],
)
def test_model_variants_fit_their_backbone_pair(suffix, rgb, point):
    rgb_dim, xyz_dim = lsfa_model.create_rgb_backbone(rgb).embed_dim, lsfa_model.POINT_VARIANTS[point].out_dim
    for name, cls in (("lsfa_adaptors", lsfa_model.LSFAAdaptors), ("m3dm_uff", lsfa_model.UnsupervisedFeatureFusion)):
        model = lsfa_model.create_model(name + suffix)
        assert type(model) is cls
        assert (model.xyz_head.in_features, model.rgb_head.in_features) == (xyz_dim, rgb_dim)
    with pytest.raises(ValueError, match="lsfa_adaptors_tiny"):
        lsfa_model.create_model("lsfa_adaptor")


def test_feature_extractor_aligns_point_features_to_the_grid():
    torch.manual_seed(0)
    ext = lsfa_model.FeatureExtractor(
        lsfa_model.create_rgb_backbone("vit_test8"), lsfa_model.create_point_encoder("point_mae_test"), grid=28
    )
    xyz = torch.zeros(2, 3, 224, 224)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 224), torch.linspace(-1, 1, 224), indexing="ij")
    obj = (yy.abs() < 0.5) & (xx.abs() < 0.5)
    xyz[:, 0], xyz[:, 1], xyz[:, 2] = xx * obj, yy * obj, (1 + 0.1 * xx) * obj
    xyz[1, :, :, :100] = 0  # a different, smaller cloud in the same batch
    feats = ext(torch.randn(2, 3, 224, 224), xyz)
    assert feats["xyz"].shape == (2, ext.xyz_dim, 28, 28) and feats["rgb"].shape == (2, 24, 28, 28)
    valid = feats["valid"]
    assert valid[0].sum() > valid[1].sum() > 0
    assert (feats["xyz"].abs().sum(1) > 0).eq(valid).all()  # features exactly where points are
    assert ext.rgb_features(torch.randn(1, 3, 224, 224), grid=56).shape == (1, 24, 56, 56)
    with pytest.raises(ValueError, match="valid points"):
        ext.xyz_features(torch.zeros(1, 3, 224, 224))


def test_masked_pool_divides_by_the_token_coverage():
    torch.manual_seed(0)
    point = lsfa_model.create_point_encoder("point_mae_test")
    plain = lsfa_model.FeatureExtractor(lsfa_model.create_rgb_backbone("vit_test8"), point, grid=28)
    masked = lsfa_model.FeatureExtractor(plain.rgb_backbone, point, grid=28, masked_pool=True)
    xyz = torch.zeros(1, 3, 224, 224)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 224), torch.linspace(-1, 1, 224), indexing="ij")
    obj = (yy.abs() < 0.43) & (xx.abs() < 0.43)  # the silhouette cuts through tokens
    xyz[0, 0], xyz[0, 1], xyz[0, 2] = xx * obj, yy * obj, (1 + 0.1 * xx) * obj
    a, valid = plain.xyz_features(xyz)
    b, valid_b = masked.xyz_features(xyz)
    assert valid.eq(valid_b).all()
    occ = F.adaptive_avg_pool2d(F.avg_pool2d(obj[None, None].float(), 3, stride=1), 28)[0]
    assert ((occ > 0) & (occ < 1)).any()
    torch.testing.assert_close(b * occ, a, rtol=1e-4, atol=1e-5)
    full = occ[0] == 1
    torch.testing.assert_close(b[0][:, full], a[0][:, full])
