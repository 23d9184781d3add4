"""iHarmony4 name mapping and loader on the synthetic tree, joint transforms, HAdobe5k pre-resize, clear errors."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from frih.data import (
    SUBSETS,
    EvalTransform,
    IHarmony4Dataset,
    TrainTransform,
    composite_to_mask_name,
    composite_to_real_name,
    read_rgb,
    resize_hadobe5k,
)
from frih.synthetic import ensure_synthetic_iharmony4, write_synthetic_iharmony4


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return ensure_synthetic_iharmony4(
        image_size=48, num_real_per_subset=4, seed=5, root=tmp_path_factory.mktemp("syn") / "frih_iharmony4"
    )


@pytest.mark.parametrize(
    ("composite", "real", "mask"),
    [
        ("c108140_1698416_1.jpg", "c108140.jpg", "c108140_1698416.png"),
        ("a3200_1_1.jpg", "a3200.jpg", "a3200_1.png"),
        ("f4452_1_2.jpg", "f4452.jpg", "f4452_1.png"),
        ("d573-56_1_6.jpg", "d573-56.jpg", "d573-56_1.png"),
        ("d8915-20110321-090528_1_4.jpg", "d8915-20110321-090528.jpg", "d8915-20110321-090528_1.png"),
        ("HCOCO/composite_images/c1_2_3.jpg", "c1.jpg", "c1_2.png"),
    ],
)
def test_name_mapping_rules(composite, real, mask):
    assert composite_to_real_name(composite) == real
    assert composite_to_mask_name(composite) == mask


def test_name_mapping_rejects_foreign_names():
    with pytest.raises(ValueError, match="does not follow"):
        composite_to_mask_name("photo.jpg")


def test_loader_maps_names_on_the_synthetic_tree(synthetic_root):
    train = IHarmony4Dataset(synthetic_root, SUBSETS, "train")
    test = IHarmony4Dataset(synthetic_root, SUBSETS, "test")
    assert {s.subset for s in train.samples} == set(SUBSETS)
    for ds, split in ((train, "train"), (test, "test")):
        for subset in SUBSETS:
            listed = (synthetic_root / subset / f"{subset}_{split}.txt").read_text().split()
            assert [s.name for s in ds.samples if s.subset == subset] == listed
    train_reals = {s.real for s in train.samples}
    assert train_reals.isdisjoint({s.real for s in test.samples})  # split by real image
    prefixes = {"HCOCO": "c", "HAdobe5k": "a", "HFlickr": "f", "Hday2night": "d"}
    for s in train.samples + test.samples:
        assert s.name.startswith(prefixes[s.subset])
        assert s.real.name == s.name.split("_")[0] + ".jpg"
        assert s.mask.name == s.name.rsplit("_", 1)[0] + ".png"
    item = train[0]
    assert item["composite"].dtype == np.uint8 and item["mask"].dtype == np.float32
    assert (item["subset"], item["name"]) == (train.samples[0].subset, train.samples[0].name)
    # the mapping pairs each composite with its own real image: equal outside the mask (up to JPEG noise),
    # different inside it (the colour transfer)
    for i in range(len(test)):
        item = test[i]
        diff = np.abs(item["composite"].astype(float) - item["target"].astype(float)).mean(-1)
        fg = item["mask"] > 0.5
        assert diff[~fg].mean() < 3.0, test.samples[i]
        assert diff[fg].mean() > 5.0, test.samples[i]


def test_dovenet_ihd_split_files_give_the_same_samples(synthetic_root, tmp_path):
    lines = [f"{s.subset}/composite_images/{s.name}" for s in IHarmony4Dataset(synthetic_root, SUBSETS, "test").samples]
    (tmp_path / "ihd_root").mkdir()
    for subset in SUBSETS:
        (tmp_path / "ihd_root" / subset).symlink_to(synthetic_root / subset, target_is_directory=True)
    (tmp_path / "ihd_root" / "IHD_test.txt").write_text("\n".join(lines) + "\n")
    ihd = IHarmony4Dataset(tmp_path / "ihd_root", ["HFlickr", "Hday2night"], "test", split_source="ihd")
    expected = [
        s for s in IHarmony4Dataset(synthetic_root, SUBSETS, "test").samples if s.subset in ("HFlickr", "Hday2night")
    ]
    assert [(s.subset, s.name) for s in ihd.samples] == [(s.subset, s.name) for s in expected]


def test_missing_dataset_and_corrupt_file_errors(tmp_path, synthetic_root):
    with pytest.raises(FileNotFoundError) as err:
        IHarmony4Dataset(tmp_path / "nowhere", SUBSETS, "train")
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "composite_images/" in msg
    assert "python -m shared.datasets info iharmony4" in msg
    (tmp_path / "root" / "HCOCO").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="HCOCO_train.txt"):
        IHarmony4Dataset(tmp_path / "root", ["HCOCO"], "train")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match="bad.jpg"):
        read_rgb(bad)


def test_synthetic_generator_is_deterministic_and_fills_the_fg_bins(tmp_path, synthetic_root):
    again = write_synthetic_iharmony4(tmp_path / "again", image_size=48, num_real_per_subset=4, seed=5)

    def digest(root):
        return {
            p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in (".jpg", ".png", ".txt")
        }

    assert digest(again) == digest(synthetic_root)
    ratios = [float((np.asarray(Image.open(p)) > 127).mean()) for p in sorted(synthetic_root.rglob("masks/*.png"))]
    assert min(ratios) <= 0.05 and any(0.05 < r <= 0.15 for r in ratios) and max(ratios) > 0.15


def _pair(h=60, w=80):
    rng = np.random.default_rng(0)
    real = rng.integers(0, 200, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.float32)
    mask[10:40, 20:60] = 1.0
    composite = real.copy()
    composite[mask > 0] += 50
    return composite, mask, real


def test_train_transform_crops_and_flips_jointly():
    import random

    random.seed(0)
    composite, mask, real = _pair()
    tf = TrainTransform(32, keep_background_prob=0.0)
    for _ in range(20):
        out = tf(composite, mask, real)
        assert out["composite"].shape == (3, 32, 32) and out["mask"].shape == (1, 32, 32)
        assert out["mask"].sum() > 1.0  # crops without foreground are re-drawn
        m = out["mask"][0]
        diff = (out["composite"] - out["target"]).abs().amax(0)
        assert torch.all(diff[m == 0] == 0)  # same geometry for all three: outside the mask they agree
        assert torch.all(diff[m == 1] > 0.1)
        assert float(m.min()) >= 0 and float(m.max()) <= 1


def test_eval_transform_resizes_everything_with_a_soft_mask():
    composite, mask, real = _pair()
    out = EvalTransform(32)(composite, mask, real)
    assert out["composite"].shape == (3, 32, 32) and out["target"].shape == (3, 32, 32)
    m = out["mask"]
    assert ((m > 0) & (m < 1)).any()  # bilinear: soft edges
    vals = out["composite"] * 255
    assert torch.allclose(vals, vals.round())  # uint8-valued like cv2.resize on uint8
    native = EvalTransform(None)(composite, mask, real)
    assert native["composite"].shape == (3, 60, 80)


def test_resize_hadobe5k(tmp_path):
    src = tmp_path / "HAdobe5k"
    for sub in ("composite_images", "masks", "real_images"):
        (src / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (900, 1300, 3), dtype=np.uint8)).save(src / "real_images" / "a1.jpg")
    Image.fromarray(rng.integers(0, 255, (1300, 900, 3), dtype=np.uint8)).save(src / "composite_images" / "a1_1_1.jpg")
    Image.fromarray((rng.random((900, 1300)) > 0.5).astype(np.uint8) * 255).save(src / "masks" / "a1_1.png")
    Image.fromarray(rng.integers(0, 255, (500, 700, 3), dtype=np.uint8)).save(src / "real_images" / "a2.jpg")
    (src / "HAdobe5k_train.txt").write_text("a1_1_1.jpg\n")
    dst = tmp_path / "HAdobe5k_resized1024"
    counts = resize_hadobe5k(src, dst, max_side=1024)
    assert counts == {"copied": 1, "resized": 3}
    assert Image.open(dst / "real_images" / "a1.jpg").size == (1024, 709)  # round(900 * 1024 / 1300)
    assert Image.open(dst / "composite_images" / "a1_1_1.jpg").size == (709, 1024)
    assert Image.open(dst / "masks" / "a1_1.png").size == (1024, 709)
    assert (dst / "real_images" / "a2.jpg").read_bytes() == (src / "real_images" / "a2.jpg").read_bytes()
    assert (dst / "HAdobe5k_train.txt").read_text() == "a1_1_1.jpg\n"
    with pytest.raises(FileExistsError):
        resize_hadobe5k(src, dst)
