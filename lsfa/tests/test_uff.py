"""M3DM's UFF: official checkpoint layout (strict), fused features, the contrastive loss, the triple-bank scoring and
the train -> save -> load round trip."""

import argparse
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lsfa import scoring
from lsfa.config import TrainConfig
from lsfa.pipeline import build_uff
from lsfa.scoring import ScoringSettings, SplitFeatures, score_class
from lsfa.uff import (
    UFFSettings,
    UnsupervisedFeatureFusion,
    fuse_feature_maps,
    load_uff_checkpoint,
    released_uff_rgb_pairing,
    save_uff_checkpoint,
    train_uff,
    uff_contrastive_loss,
    uff_token_pairs,
)

XYZ, RGB = 6, 4


def _official_state(xyz: int = XYZ, rgb: int = RGB, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the key names and shapes of M3DM's FeatureFusionBlock(xyz, rgb, mlp_ratio=4)."""
    g = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {}
    for side, d in (("xyz", xyz), ("rgb", rgb)):  # per modality: LayerNorm(d), then Mlp(d, 4 d)
        shapes |= {
            f"{side}_norm.weight": (d,),
            f"{side}_norm.bias": (d,),
            f"{side}_mlp.fc1.weight": (4 * d, d),
            f"{side}_mlp.fc1.bias": (4 * d,),
            f"{side}_mlp.fc2.weight": (d, 4 * d),
            f"{side}_mlp.fc2.bias": (d,),
        }
    for side, d in (("rgb", rgb), ("xyz", xyz)):  # the 256-d projection heads, in the release's key order
        shapes |= {f"{side}_head.weight": (256, d), f"{side}_head.bias": (256,)}
    return {k: torch.randn(*s, generator=g) for k, s in shapes.items()}


def test_official_checkpoint_loads_strictly(tmp_path):
    state = _official_state()
    path = tmp_path / "uff_pretrained.pth"
    # the release's misc.save_model layout, with its argparse.Namespace under "args"
    torch.save(
        {
            "model": state,
            "optimizer": {"state": {}, "param_groups": []},
            "epoch": 2,
            "scaler": {"scale": 65536.0},
            "args": argparse.Namespace(lr=0.003, accum_iter=16),
        },
        path,
    )
    module = load_uff_checkpoint(UnsupervisedFeatureFusion(XYZ, RGB), path)
    for k, v in module.state_dict().items():
        assert torch.equal(v, state[k]), k
    missing = dict(state)
    missing.pop("rgb_head.bias")
    torch.save({"model": missing}, tmp_path / "missing.pth")
    with pytest.raises(KeyError, match="rgb_head.bias"):
        load_uff_checkpoint(UnsupervisedFeatureFusion(XYZ, RGB), tmp_path / "missing.pth")
    torch.save({"model": {**state, "fusion_proj.weight": torch.zeros(1)}}, tmp_path / "unexpected.pth")
    with pytest.raises(KeyError, match="fusion_proj.weight"):
        load_uff_checkpoint(UnsupervisedFeatureFusion(XYZ, RGB), tmp_path / "unexpected.pth")
    torch.save(state, tmp_path / "flat.pth")
    with pytest.raises(KeyError, match="'model'"):
        load_uff_checkpoint(UnsupervisedFeatureFusion(XYZ, RGB), tmp_path / "flat.pth")
    with pytest.raises(KeyError, match="xyz_mlp.fc1.weight"):  # a checkpoint of another width
        load_uff_checkpoint(UnsupervisedFeatureFusion(XYZ + 1, RGB), path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_uff_checkpoint(UnsupervisedFeatureFusion(XYZ, RGB), tmp_path / "nope.pth")


def test_fused_feature_is_the_concatenation_of_the_two_mlp_branches():
    module = UnsupervisedFeatureFusion(XYZ, RGB)
    module.load_state_dict(_official_state())
    g = torch.Generator().manual_seed(1)
    x, r = torch.randn(2, 5, XYZ, generator=g), torch.randn(2, 5, RGB, generator=g)
    sd = _official_state()

    def branch(t, name, d):
        t = F.layer_norm(t, (d,), sd[f"{name}_norm.weight"], sd[f"{name}_norm.bias"])
        t = F.gelu(t @ sd[f"{name}_mlp.fc1.weight"].T + sd[f"{name}_mlp.fc1.bias"])
        return t @ sd[f"{name}_mlp.fc2.weight"].T + sd[f"{name}_mlp.fc2.bias"]

    fused = module(x, r)
    assert fused.shape == (2, 5, XYZ + RGB)
    torch.testing.assert_close(fused, torch.cat([branch(x, "xyz", XYZ), branch(r, "rgb", RGB)], -1))
    assert UnsupervisedFeatureFusion(1152, 768).out_dim == 1920  # paper size
    assert UnsupervisedFeatureFusion(288, 96)(torch.zeros(1, 2, 288), torch.zeros(1, 2, 96)).shape[-1] == 384


def test_uff_loss_known_value_and_zero_patch_exclusion():
    module = UnsupervisedFeatureFusion(XYZ, RGB)
    for head in (module.rgb_head, module.xyz_head):  # every projection = the same vector: uniform softmax
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.ones_(head.bias)
    g = torch.Generator().manual_seed(2)
    x, r = torch.randn(1, 5, XYZ, generator=g), torch.randn(1, 5, RGB, generator=g)
    x[0, 1] = 0.0  # an empty patch
    x[0, 3, 2] = 0.0  # one zero entry: not "entirely non-zero", excluded too
    # 3 patches remain: CE = log 3, times 2T
    assert uff_contrastive_loss(module, x, r).item() == pytest.approx(2 * math.log(3), rel=1e-6)

    module = UnsupervisedFeatureFusion(XYZ, RGB)
    loss = uff_contrastive_loss(module, x, r)
    fused = module(x, r)[0]
    q, k = module.rgb_head(fused[[0, 2, 4], XYZ:]), module.xyz_head(fused[[0, 2, 4], :XYZ])
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T
    manual = 2 * F.cross_entropy(logits, torch.arange(3))
    torch.testing.assert_close(loss, manual)
    r2 = r.clone()
    r2[0, [1, 3]] = torch.randn(2, RGB, generator=g)  # changing the excluded patches changes nothing
    torch.testing.assert_close(uff_contrastive_loss(module, x, r2), loss)
    r2[0, 0] = torch.randn(RGB, generator=g)
    assert not torch.allclose(uff_contrastive_loss(module, x, r2), loss)
    with pytest.raises(ValueError, match="fewer than 2"):
        uff_contrastive_loss(module, torch.zeros(1, 5, XYZ), r)


def test_released_rgb_pairing_matches_the_saved_feature_reshape():
    n, c = 9, 2
    rgb = torch.arange(n * c, dtype=torch.float32).reshape(1, n, c)
    ref = rgb[0].numpy()
    ref = np.tile(ref, (4, 1)).reshape(n, 4, c).transpose(1, 0, 2).reshape(4 * n, c)  # repeat/reshape/permute
    np.testing.assert_array_equal(released_uff_rgb_pairing(rgb)[0].numpy(), ref)
    x, r = uff_token_pairs(torch.randn(1, XYZ, 6, 6), torch.randn(1, RGB, 3, 3), "released")
    assert x.shape == (1, 36, XYZ) and r.shape == (1, 36, RGB)
    with pytest.raises(ValueError, match="twice"):
        uff_token_pairs(torch.randn(1, XYZ, 5, 5), torch.randn(1, RGB, 3, 3), "released")


def _split(n: int, seed: int, defect: bool = False) -> SplitFeatures:
    g = torch.Generator().manual_seed(seed)
    xyz, rgb = torch.randn(n, XYZ, 4, 4, generator=g), torch.randn(n, RGB, 2, 2, generator=g)
    masks = torch.zeros(n, 16, 16)
    labels = torch.zeros(n, dtype=torch.long)
    if defect:
        xyz[-1, :, 1, 1] += 6.0
        masks[-1, 4:8, 4:8] = 1
        labels[-1] = 1
    return SplitFeatures(xyz, rgb, torch.ones(n, 4, 4, dtype=torch.bool), masks, labels)


def test_triple_bank_scoring_adds_a_fusion_column(monkeypatch):
    fits = []

    class RecordingFusion(scoring.LateFusion):
        def fit(self, image_vectors, pixel_vectors):
            fits.append((image_vectors.clone(), pixel_vectors.clone()))
            return super().fit(image_vectors, pixel_vectors)

    monkeypatch.setattr(scoring, "LateFusion", RecordingFusion)
    train, test = _split(6, 0), _split(4, 1, defect=True)
    uff = UnsupervisedFeatureFusion(XYZ, RGB)
    cpu = torch.device("cpu")
    s = ScoringSettings(coreset_ratio=0.5, image_size=16, triple_zero_row=False)
    double = score_class(train, test, None, s, cpu)
    triple = score_class(train, test, None, s, cpu, uff=uff)
    (img2, pix2), (img3, pix3) = fits
    assert img2.shape == (6, 2) and img3.shape == (6, 3) and pix3.shape == (6, 3, 16, 16)
    torch.testing.assert_close(img3[:, :2], img2)  # [1.0 s_xyz, 0.1 s_rgb] unchanged, fusion appended
    torch.testing.assert_close(pix3[:, :2], pix2)
    for key in ("xyz_image", "xyz_map", "rgb_image", "rgb_map"):
        torch.testing.assert_close(triple[key], double[key])
    assert triple["fusion_image"].shape == (4,) and triple["fusion_map"].shape == (4, 16, 16)
    assert triple["image"].shape == (4,) and not torch.allclose(triple["image"], double["image"])
    # banks: xyz 10 % rule -> 48; rgb and fusion = 0.5 x the reduced xyz bank (48) -> 24
    sizes = triple["bank_sizes"].tolist()
    assert sizes == [48, 24, 24, 96, 24, 96]
    # the fusion tokens are the UFF of the xyz tokens and the rgb map pooled to the xyz grid
    fused = fuse_feature_maps(uff, test.xyz[:1], test.rgb[:1], cpu)
    rgb_up = F.adaptive_avg_pool2d(test.rgb[:1], 4).flatten(2).transpose(1, 2)
    torch.testing.assert_close(fused, uff(test.xyz[:1].flatten(2).transpose(1, 2), rgb_up))
    # the release's quirk: the xyz bank keeps its rows without zeros and gets one zero row; rgb unaffected
    quirk = score_class(train, test, None, ScoringSettings(coreset_ratio=0.5, image_size=16), cpu, uff=uff)
    assert quirk["bank_sizes"].tolist()[:3] == [49, 24, 24]
    torch.testing.assert_close(quirk["rgb_image"], double["rgb_image"])
    summed = score_class(
        train,
        test,
        None,
        ScoringSettings(coreset_ratio=0.5, image_size=16, fusion="sum", triple_zero_row=False),
        cpu,
        uff=uff,
    )
    torch.testing.assert_close(
        summed["image"], double["xyz_image"] + 0.1 * double["rgb_image"] + summed["fusion_image"]
    )
    with pytest.raises(ValueError, match="fusion bank"):
        score_class(train, test, torch.nn.Identity(), s, cpu, uff=uff)


def test_train_save_load_round_trip(tmp_path):
    g = torch.Generator().manual_seed(3)
    xyz_maps, rgb_maps = torch.randn(8, XYZ, 4, 4, generator=g), torch.randn(8, RGB, 2, 2, generator=g)
    xyz_maps[:, :, 0, 0] = 0.0  # background tokens, excluded from the loss

    def source(idx):
        return uff_token_pairs(xyz_maps[idx], rgb_maps[idx])

    settings = UFFSettings(epochs=10, lr=0.01, batch_size=4, accum_iter=1, warmup_epochs=1)
    x_all, r_all = source(torch.arange(8))
    module, optimizer = train_uff(source, 8, XYZ, RGB, settings, torch.device("cpu"), log=None)
    again, _ = train_uff(source, 8, XYZ, RGB, settings, torch.device("cpu"), log=None)
    for k, v in module.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k  # deterministic for a seed
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)
        start = UnsupervisedFeatureFusion(XYZ, RGB)  # the initialisation train_uff starts from
    with torch.no_grad():
        before = float(uff_contrastive_loss(start, x_all, r_all))
        after = float(uff_contrastive_loss(module, x_all, r_all))
    assert after < before - 0.1
    path = save_uff_checkpoint(module, tmp_path / "uff_pretrained.pth", settings.epochs - 1, optimizer, settings)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "epoch", "args"} <= set(raw) and raw["epoch"] == 9
    assert set(raw["model"]) == set(_official_state())  # the official key layout
    loaded = load_uff_checkpoint(UnsupervisedFeatureFusion(XYZ, RGB), path)
    for k, v in module.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_uff(source, 3, XYZ, RGB, settings, torch.device("cpu"), log=None)


def test_triple_method_never_falls_back_to_random_uff_weights():
    extractor = SimpleNamespace(xyz_dim=XYZ, rgb_dim=RGB)
    with pytest.raises(FileNotFoundError, match="uff_checkpoint"):
        build_uff(TrainConfig(), extractor, None, [], torch.device("cpu"))


@pytest.mark.slow
def test_train_py_pretrains_the_uff_and_eval_py_rescores_it(tmp_path, monkeypatch):
    from lsfa import eval as lsfa_eval
    from lsfa import train as lsfa_train
    from lsfa.tests.test_train import TINY

    monkeypatch.setenv("SYNTHETIC_DATA_ROOT", str(tmp_path / "synthetic"))
    out = tmp_path / "run"
    args = [
        *TINY,
        "--optim.epochs",
        "0",
        "--eval.methods",
        "m3dm",
        "m3dm_triple",
        "--uff.train",
        "--uff.batch_size",
        "2",
        "--uff.accum_iter",
        "1",
        "--uff.epochs",
        "1",
        "--output_dir",
        str(out),
    ]
    metrics = lsfa_train.main(lsfa_train.parse_args(args))
    for key in ("m3dm_triple_i_auroc_mean", "m3dm_triple_aupro_mean", "m3dm_aupro_mean"):
        assert 0.0 <= metrics[key] <= 1.0
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    loaded = load_uff_checkpoint(UnsupervisedFeatureFusion(48, 24), out / "uff_pretrained.pth")  # 2 x 24, 24
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state["uff"][k]), k
    again = lsfa_eval.main(
        lsfa_eval.parse_args(["--checkpoint", str(out / "last.pt"), "--output_dir", str(out / "eval")])
    )
    from_file = lsfa_eval.main(
        lsfa_eval.parse_args(
            [
                "--checkpoint",
                str(out / "last.pt"),
                "--output_dir",
                str(out / "eval2"),
                "--backbone.uff_checkpoint",
                str(out / "uff_pretrained.pth"),
            ]
        )
    )
    for key in ("m3dm_triple_i_auroc_mean", "m3dm_triple_p_auroc_mean", "m3dm_triple_aupro_mean"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6)
        assert from_file[key] == pytest.approx(metrics[key], abs=1e-6)
