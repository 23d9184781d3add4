"""Backbones, checkpoint key layouts (strict), feature alignment shapes, adaptors."""

import pytest
import safetensors.torch  # a dependency of timm
import torch
import torch.nn.functional as F

from lsfa import model as lsfa_model


def official_point_mae_encoder_shapes() -> dict[str, tuple[int, ...]]:
    """The encoder entries of Point-MAE's released ``pointmae_pretrain.pth`` (``base_model['MAE_encoder.<key>']``,
    trans_dim 384, 12 blocks, mini-PointNet 3-128-256 / 512-512-384, qkv without bias), written out by hand from
    Point-MAE's ``MaskTransformer`` / ``Encoder`` / ``Block`` definitions, not taken from this package's model."""
    bn = {"weight": (128,), "bias": (128,), "running_mean": (128,), "running_var": (128,), "num_batches_tracked": ()}
    bn2 = {k: (512,) if v else () for k, v in bn.items()}
    shapes = {
        "encoder.first_conv.0.weight": (128, 3, 1),
        "encoder.first_conv.0.bias": (128,),
        **{f"encoder.first_conv.1.{k}": v for k, v in bn.items()},
        "encoder.first_conv.3.weight": (256, 128, 1),
        "encoder.first_conv.3.bias": (256,),
        "encoder.second_conv.0.weight": (512, 512, 1),
        "encoder.second_conv.0.bias": (512,),
        **{f"encoder.second_conv.1.{k}": v for k, v in bn2.items()},
        "encoder.second_conv.3.weight": (384, 512, 1),
        "encoder.second_conv.3.bias": (384,),
        "pos_embed.0.weight": (128, 3),
        "pos_embed.0.bias": (128,),
        "pos_embed.2.weight": (384, 128),
        "pos_embed.2.bias": (384,),
        "norm.weight": (384,),
        "norm.bias": (384,),
    }
    for i in range(12):
        shapes.update(
            {
                f"blocks.blocks.{i}.norm1.weight": (384,),
                f"blocks.blocks.{i}.norm1.bias": (384,),
                f"blocks.blocks.{i}.attn.qkv.weight": (1152, 384),
                f"blocks.blocks.{i}.attn.proj.weight": (384, 384),
                f"blocks.blocks.{i}.attn.proj.bias": (384,),
                f"blocks.blocks.{i}.norm2.weight": (384,),
                f"blocks.blocks.{i}.norm2.bias": (384,),
                f"blocks.blocks.{i}.mlp.fc1.weight": (1536, 384),
                f"blocks.blocks.{i}.mlp.fc1.bias": (1536,),
                f"blocks.blocks.{i}.mlp.fc2.weight": (384, 1536),
                f"blocks.blocks.{i}.mlp.fc2.bias": (384,),
            }
        )
    return shapes


def official_encoder_tensors(seed: int = 0, drop: str | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.tensor(7) if not shape else torch.randn(shape, generator=g)
        for k, shape in official_point_mae_encoder_shapes().items()
        if k != drop
    }


def _official_point_mae_file(path, drop: str | None = None) -> dict[str, torch.Tensor]:
    encoder = official_encoder_tensors(drop=drop)
    base = {f"module.MAE_encoder.{k}": v for k, v in encoder.items()}
    base["module.MAE_decoder.blocks.0.norm1.weight"] = torch.ones(384)  # decoder / MAE-only keys are ignored
    base["module.mask_token"] = torch.zeros(1, 1, 384)
    base["module.increase_dim.0.weight"] = torch.zeros(8, 384, 1)
    torch.save({"base_model": base, "epoch": 300}, path)
    return encoder


def _assert_loaded(model: lsfa_model.PointMAEEncoder, encoder: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert set(own) == set(encoder)
    for k, v in encoder.items():
        assert torch.equal(own[k], v), k


def test_point_mae_official_layout_loads_strictly(tmp_path):
    encoder = _official_point_mae_file(tmp_path / "pointmae_pretrain.pth")
    target = lsfa_model.create_point_encoder("point_mae", tmp_path / "pointmae_pretrain.pth")
    _assert_loaded(target, encoder)
    assert sum(p.numel() for p in target.parameters()) > 20e6  # 12 blocks of width 384
    _official_point_mae_file(tmp_path / "broken.pth", drop="encoder.first_conv.0.weight")
    with pytest.raises(KeyError, match="encoder.first_conv.0.weight"):
        lsfa_model.load_point_mae_checkpoint(lsfa_model.PointMAEEncoder(), tmp_path / "broken.pth")
    torch.save({"model": {}}, tmp_path / "other.pth")
    with pytest.raises(KeyError, match="base_model"):
        lsfa_model.load_point_mae_checkpoint(lsfa_model.PointMAEEncoder(), tmp_path / "other.pth")


def test_lsfa_fine_tuned_point_encoder_file_loads_and_converts(tmp_path):
    encoder = official_encoder_tensors(seed=1)
    # LSFA's modelrgb_vitbase_finetunewholenew_fcall_bnpointnewv<class>.pkl: a flat dict, point_encoder.* + others
    flat = {f"point_encoder.{k}": v for k, v in encoder.items()}
    flat["rgb_backbone.cls_token"] = torch.zeros(1, 1, 768)
    torch.save(flat, tmp_path / "modelrgb_vitbase_finetunewholenew_fcall_bnpointnewvbagel.pkl")
    direct = lsfa_model.create_point_encoder(
        "point_mae", tmp_path / "modelrgb_vitbase_finetunewholenew_fcall_bnpointnewvbagel.pkl"
    )
    _assert_loaded(direct, encoder)
    out = lsfa_model.convert_lsfa_point_encoder(
        tmp_path / "modelrgb_vitbase_finetunewholenew_fcall_bnpointnewvbagel.pkl", tmp_path / "lsfa_point_bagel.pth"
    )
    stored = torch.load(out, weights_only=True)
    assert set(stored) == {"base_model"} and all(k.startswith("MAE_encoder.") for k in stored["base_model"])
    _assert_loaded(lsfa_model.create_point_encoder("point_mae", out), encoder)
    flat.pop("point_encoder.norm.bias")
    torch.save(flat, tmp_path / "partial.pkl")
    with pytest.raises(KeyError, match="norm.bias"):
        lsfa_model.convert_lsfa_point_encoder(tmp_path / "partial.pkl", tmp_path / "x.pth")
    torch.save({"rgb_backbone.cls_token": torch.zeros(1)}, tmp_path / "foreign.pkl")
    with pytest.raises(KeyError, match="point_encoder"):
        lsfa_model.convert_lsfa_point_encoder(tmp_path / "foreign.pkl", tmp_path / "x.pth")


def test_safetensors_and_unreadable_files(tmp_path):
    encoder = official_encoder_tensors(seed=2)
    safetensors.torch.save_file(
        {f"base_model.MAE_encoder.{k}": v.contiguous() for k, v in encoder.items()}, str(tmp_path / "pm.safetensors")
    )
    _assert_loaded(lsfa_model.create_point_encoder("point_mae", tmp_path / "pm.safetensors"), encoder)
    vit = lsfa_model.create_rgb_backbone("vit_test8")
    safetensors.torch.save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp_path / "v.bin"))
    lsfa_model.load_dino_checkpoint(lsfa_model.create_rgb_backbone("vit_test8"), tmp_path / "v.bin")  # by content
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "pm.safetensors").read_bytes()[:5000])
    with pytest.raises(ValueError, match="cut.safetensors"):
        lsfa_model.load_point_mae_checkpoint(lsfa_model.PointMAEEncoder(), tmp_path / "cut.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pth"):
        lsfa_model.load_point_mae_checkpoint(lsfa_model.PointMAEEncoder(), tmp_path / "junk.pth")


def test_adaptor_init_switch():
    torch.manual_seed(0)
    released = lsfa_model.create_model("lsfa_adaptors_test")
    assert float(released.xyz_head.bias.detach().abs().sum()) > 0  # torch's default Linear init: uniform, non-zero bias
    assert float(released.xyz_block.mlp.fc1.weight.detach().std()) > 0.05
    timm_like = lsfa_model.create_model("lsfa_adaptors_test", init="trunc_normal")
    assert float(timm_like.xyz_head.bias.detach().abs().sum()) == 0
    assert float(timm_like.xyz_block.mlp.fc1.weight.detach().std()) == pytest.approx(0.02, rel=0.3)
    with pytest.raises(ValueError, match="init"):
        lsfa_model.create_model("lsfa_adaptors_test", init="xavier")


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
        lsfa_model.load_dino_checkpoint(target, tmp_path / "broken.pth")
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
