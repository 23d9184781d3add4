"""harmonize.py at any resolution (odd sizes keep their size), both modes, folder mode; padding helpers."""

import numpy as np
import pytest
import torch
from PIL import Image

from frih import harmonize
from frih.config import Config
from frih.inference import Harmonizer, pad_to_multiple, unpad
from frih.model import FRIHConfig, build_model
from shared.checkpoint import save_checkpoint
from shared.config import config_to_dict

MICRO = FRIHConfig(stage1_ch=2, module_ch=2, fpm_ch=4, num_clusters=2)  # cheap at 1001x777 on a CPU


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(MICRO).eval()
    path = tmp_path_factory.mktemp("ckpt") / "micro.pt"
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(Config(model=MICRO))}, path)
    return path


def _harmonize(checkpoint, *argv):
    """harmonize.py with ``checkpoint`` on the CPU."""
    return harmonize.main(harmonize.parse_args(["--checkpoint", str(checkpoint), *argv, "--device", "cpu"]))


def _harmonize_image(checkpoint, comp, mask, out, *argv):
    """harmonize.py on one composite + mask, written to ``out``."""
    return _harmonize(checkpoint, "--composite", str(comp), "--mask", str(mask), "--out", str(out), *argv)


def _write_pair(folder, w, h, comp_name="comp.jpg", mask_name="mask.png"):
    rng = np.random.default_rng(0)
    composite = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h // 2, w // 3 : 2 * w // 3] = 255
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(composite).save(folder / comp_name, quality=95)
    Image.fromarray(mask).save(folder / mask_name)
    return folder / comp_name, folder / mask_name


@pytest.mark.parametrize("mode", ["full", "lowres"])
def test_odd_size_output_keeps_the_input_size(tmp_path, checkpoint, mode):
    comp, mask = _write_pair(tmp_path, 1001, 777)
    out = tmp_path / f"out_{mode}.png"
    _harmonize_image(checkpoint, comp, mask, out, "--mode", mode, "--lowres_size", "64")
    result = Image.open(out)
    assert result.size == (1001, 777) and result.mode == "RGB"
    if mode == "lowres":  # the change is applied inside the mask only: the background is the composite's
        original = np.asarray(Image.open(comp).convert("RGB"))
        assert np.array_equal(np.asarray(result)[:100], original[:100])


def test_folder_mode_with_iharmony4_names(tmp_path, checkpoint):
    comp, mask = _write_pair(tmp_path / "src", 45, 37)
    (tmp_path / "set" / "composite_images").mkdir(parents=True)
    (tmp_path / "set" / "masks").mkdir()
    comp.rename(tmp_path / "set" / "composite_images" / "c1_22_1.jpg")
    mask.rename(tmp_path / "set" / "masks" / "c1_22.png")  # found by the iHarmony4 rule
    written = _harmonize(checkpoint, "--input_dir", str(tmp_path / "set"), "--output_dir", str(tmp_path / "out"))
    assert [p.name for p in written] == ["c1_22_1.png"]
    assert Image.open(written[0]).size == (45, 37)


def test_default_checkpoint_is_the_newest_best_pt(tmp_path, checkpoint):
    import os
    import shutil

    with pytest.raises(FileNotFoundError, match="no --checkpoint given"):
        harmonize.latest_checkpoint([tmp_path])
    old, new = tmp_path / "runs/frih/a/1/best.pt", tmp_path / "runs/frih/b/2/best.pt"
    for i, p in enumerate((old, new)):
        p.parent.mkdir(parents=True)
        shutil.copy(checkpoint, p)
        os.utime(p, (1000 + i, 1000 + i))
    assert harmonize.latest_checkpoint([tmp_path]) == new


def test_mismatched_mask_is_a_clear_error(tmp_path, checkpoint):
    comp, _ = _write_pair(tmp_path, 40, 30)
    _, mask = _write_pair(tmp_path / "other", 30, 40)
    with pytest.raises(ValueError, match="mask .* is 30x40 but composite"):
        _harmonize_image(checkpoint, comp, mask, tmp_path / "o.png")


def test_pad_unpad_roundtrip_and_full_mode_matches_an_unpadded_run():
    x = torch.randn(1, 3, 37, 50)
    padded, pads = pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (40, 56) and pads == (1, 2, 3, 3)
    assert torch.equal(unpad(padded, pads), x)
    torch.manual_seed(0)
    model = build_model(MICRO).eval()
    comp = torch.rand(1, 3, 32, 48)
    mask = torch.zeros(1, 1, 32, 48)
    mask[:, :, 8:20, 10:30] = 1
    # a size that is already a multiple needs no padding: Harmonizer == the network in [0, 1] space
    from frih.model import denormalize_image, normalize_image

    with torch.no_grad():
        direct = denormalize_image(model(normalize_image(comp), mask)["images"]).clamp(0, 1)
    assert torch.allclose(Harmonizer(model).predict(comp, mask)["images"], direct, atol=1e-6)
