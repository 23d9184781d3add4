"""Synthetic tree + MVTec 3D-AD loader, preprocessing (plane removal), patch rotation, Eyecandies conversion."""

import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image

from lsfa.data import MVTec3DDataset, patch_rotation, resize_mask, resolve_classes
from lsfa.preprocess import (
    convert_eyecandies,
    depth_to_pointcloud,
    pad_to_square,
    preprocess_mvtec3d,
    preprocess_sample,
    remove_background_plane,
)
from lsfa.synthetic import DEFECTS, render_sample, write_synthetic_mvtec3d


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    write_synthetic_mvtec3d(raw, classes=("cookie",), num_train=2, num_test_good=1, num_test_per_defect=1, size=120)
    done = tmp_path_factory.mktemp("pre") / "tree"
    preprocess_mvtec3d(raw, done)
    return raw, done


def test_loader_reads_the_synthetic_tree(tiny_tree):
    _raw, done = tiny_tree
    assert resolve_classes(done, None) == ["cookie"]
    test = MVTec3DDataset(done, "cookie", "test")
    assert [s[3] for s in test.samples] == sorted(["good", *DEFECTS])
    item = test[0]
    assert item["rgb"].shape == (3, 224, 224) and item["xyz"].shape == (3, 224, 224)
    assert item["mask"].shape == (224, 224) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    labels = [test[i]["label"] for i in range(len(test))]
    assert sum(labels) == len(DEFECTS)
    for i in range(len(test)):
        it = test[i]
        assert bool(it["mask"].any()) == bool(it["label"])
    train = MVTec3DDataset(done, "cookie", "train")
    assert len(train) == 2
    # the preprocessed tree is square (padded to a multiple of 100) and its background is zero
    xyz = tifffile.imread(done / "cookie" / "train" / "good" / "xyz" / "000.tiff")
    assert xyz.shape == (200, 200, 3)
    assert (np.abs(xyz).sum(-1) == 0).mean() > 0.3


@pytest.mark.parametrize("side", [200, 800, 97])
def test_default_mask_resize_is_m3dm_pil_nearest(side):
    """M3DM resizes the PIL gt mask with transforms.Resize(224, NEAREST) (PIL's pixel-centre rule), then ToTensor and
    > 0.5; ``mask_resize="torch"`` keeps the earlier torch ``mode="nearest"`` rule (the evidence run's)."""
    rng = np.random.default_rng(side)
    mask = (rng.random((side, side)) > 0.5).astype(np.uint8) * 255
    mask[rng.random((side, side)) > 0.9] = 128  # grey levels on both sides of 0.5 x 255
    mask[rng.random((side, side)) > 0.9] = 127
    pil = np.asarray(Image.fromarray(mask).resize((224, 224), Image.Resampling.NEAREST), dtype=np.float32) / 255.0
    default = resize_mask(mask, 224)
    assert default.dtype == torch.float32 and torch.equal(default, torch.from_numpy((pil > 0.5).astype(np.float32)))
    gt = torch.from_numpy(mask.astype(np.float32) / 255.0)[None, None]
    exact = torch.nn.functional.interpolate(gt, size=(224, 224), mode="nearest-exact")[0, 0] > 0.5
    assert torch.equal(default.bool(), exact)  # PIL's nearest is torch's nearest-exact
    old = torch.nn.functional.interpolate(gt, size=(224, 224), mode="nearest")[0, 0] > 0.5
    assert torch.equal(resize_mask(mask, 224, "torch").bool(), old)
    assert not torch.equal(old, exact)  # the two rules differ on these sizes
    with pytest.raises(ValueError, match="mask_resize"):
        resize_mask(mask, 224, "bilinear")


def test_loader_resizes_masks_by_the_configured_rule(tiny_tree):
    _raw, done = tiny_tree
    i = next(i for i, sample in enumerate(MVTec3DDataset(done, "cookie", "test").samples) if sample[2] is not None)
    gt = np.asarray(Image.open(MVTec3DDataset(done, "cookie", "test").samples[i][2]).convert("L"))
    for rule in ("pil", "torch"):
        item = MVTec3DDataset(done, "cookie", "test", mask_resize=rule)[i]
        assert torch.equal(item["mask"], resize_mask(gt, 224, rule)), rule
    with pytest.raises(ValueError, match="mask_resize"):
        MVTec3DDataset(done, "cookie", "test", mask_resize="nearest")


def test_corrupt_gt_mask_is_named(tmp_path, tiny_tree):
    import re
    import shutil

    _raw, done = tiny_tree
    tree = tmp_path / "tree"
    shutil.copytree(done / "cookie", tree / "cookie")
    test = MVTec3DDataset(tree, "cookie", "test")
    i = next(i for i, sample in enumerate(test.samples) if sample[2] is not None)
    gt_path = test.samples[i][2]
    gt_path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(OSError, match=re.escape(f"cannot read ground-truth mask {gt_path}")):
        test[i]


def test_missing_dataset_errors_name_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="Expected layout"):
        MVTec3DDataset(tmp_path, "bagel", "train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_classes(tmp_path / "nope", None)
    bad = tmp_path / "bagel" / "train" / "good" / "rgb"
    bad.mkdir(parents=True)
    (tmp_path / "bagel" / "train" / "good" / "xyz").mkdir()
    Image.new("RGB", (4, 4)).save(bad / "000.png")
    with pytest.raises(FileNotFoundError, match="000.tiff"):
        MVTec3DDataset(tmp_path, "bagel", "train")


def test_preprocessing_removes_a_synthetic_plane():
    rng = np.random.default_rng(0)
    size = 160
    v, u = np.mgrid[:size, :size] * 0.001
    z = 0.45 + 0.06 * u - 0.04 * v + rng.normal(0, 2e-4, (size, size))  # a tilted, noisy table
    bump = (np.abs(u - 0.08) < 0.03) & (np.abs(v - 0.08) < 0.03)
    z = z - 0.02 * bump  # a 2 cm high box on it
    xyz = np.stack([u, v, z], -1).astype(np.float32)
    rgb = np.full((size, size, 3), 128, np.uint8)
    cleaned, rgb2 = remove_background_plane(xyz, rgb)
    removed = np.abs(cleaned).sum(-1) == 0
    assert removed[~bump].mean() > 0.99 and not removed[bump].any()
    assert (rgb2[removed] == 0).all() and (rgb2[~removed] == 128).all()
    xyz[5, 5] = [0.3, 0.3, 0.2]  # an isolated outlier far above the table survives the plane but not DBSCAN
    full, rgb3, gt = preprocess_sample(xyz, rgb, np.zeros((size, size), np.uint8))
    assert full.shape == (200, 200, 3) and rgb3.shape == (200, 200, 3) and gt.shape == (200, 200)
    kept = np.abs(full).sum(-1) > 0
    off = (200 - size) // 2  # centred padding, M3DM's pad_cropped_pc
    assert kept[off : off + size, off : off + size][bump].all() and kept.sum() == bump.sum()
    assert (rgb3[off + 5, off + 5] == 0).all()  # the DBSCAN outlier's pixel is zeroed with it (M3DM)
    assert pad_to_square(np.zeros((230, 120))).shape == (300, 300)
    # the synthetic scans lose their table too
    scan, scan_rgb, _ = render_sample(rng, "cookie", None, size=160)
    assert (np.abs(remove_background_plane(scan, scan_rgb)[0]).sum(-1) == 0).mean() > 0.3


def test_patch_rotation_rotates_each_cell():
    image = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = patch_rotation(image, cell=4, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(out, image)
    for b in range(2):
        for y in (0, 4):
            for x in (0, 4):
                cell, new = image[b, :, y : y + 4, x : x + 4], out[b, :, y : y + 4, x : x + 4]
                assert any(torch.equal(torch.rot90(cell, k, (1, 2)), new) for k in range(4))


def test_eyecandies_conversion(tmp_path):
    pose = np.eye(4)
    depth = np.full((6, 8), 32768, np.uint16)
    pts = depth_to_pointcloud(depth, 0.5, 1.5, pose, focal=10.0)
    z = 32768 / 65535 * 1.0 + 0.5
    # pixel (u=8/2, v=6/2) is the principal point: x = y = 0; pixel (u=0, v=0): x = -4 z / f, y = -3 z / f
    np.testing.assert_allclose(pts[3 * 8 + 4], [0, 0, z], atol=1e-9)
    np.testing.assert_allclose(pts[0], [-4 * z / 10, -3 * z / 10, z], atol=1e-9)
    # a tiny raw Eyecandies tree -> the MVTec-3D-like tree read by the same loader
    for split, ids in (("train", ["000"]), ("test_public", ["00", "01"])):
        data = tmp_path / "raw" / "Candy" / split / "data"
        data.mkdir(parents=True)
        for sid in ids:
            Image.fromarray(np.full((32, 32), 30000, np.uint16)).save(data / f"{sid}_depth.png")
            (data / f"{sid}_info_depth.yaml").write_text(yaml.safe_dump({"normalization": {"min": 0.5, "max": 1.5}}))
            np.savetxt(data / f"{sid}_pose.txt", np.eye(4))
            Image.new("RGB", (32, 32), (200, 10, 10)).save(data / f"{sid}_image_4.png")
            if split == "test_public":
                mask = np.zeros((32, 32), np.uint8)
                if sid == "01":
                    mask[4:8, 4:8] = 255
                Image.fromarray(mask).save(data / f"{sid}_mask.png")
    out = convert_eyecandies(tmp_path / "raw", tmp_path / "out")
    assert (out / "Candy" / "train" / "good" / "xyz" / "000.tiff").is_file()
    test = MVTec3DDataset(out, "Candy", "test", image_size=32)
    assert sorted(s[3] for s in test.samples) == ["bad", "good"]
    assert [test[i]["label"] for i in range(2)] == [1, 0]
