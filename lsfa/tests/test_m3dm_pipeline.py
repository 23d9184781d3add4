"""The input pipeline against small NumPy / PIL ports of M3DM's own functions (README, Fidelity notes).

Each ``m3dm_*`` function below restates the behaviour of the M3DM function of the same name (``utils/
preprocessing.py``, ``utils/preprocess_eyecandies.py``, ``dataset.py``) in plain loops and NumPy, independently of the
package's vectorised code.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from lsfa.data import IMAGENET_MEAN, IMAGENET_STD, MVTec3DDataset, resize_rgb
from lsfa.preprocess import (
    PREPROCESSED_MARKER,
    check_preprocessed,
    pad_to_square,
    preprocess_mvtec3d,
    remove_eyecandies_background,
    zero_outside_largest_cluster,
    zero_plane_points,
)
from lsfa.synthetic import write_synthetic_mvtec3d


def m3dm_pad_cropped_pc(pc):
    """Round each side up to the next 100, take the larger; pad (large - h) // 2 on top, the rest below; same for
    the width."""
    h, w = pc.shape[:2]
    side = max(math.ceil(h / 100.0) * 100, math.ceil(w / 100.0) * 100)
    out = np.zeros((side, side, *pc.shape[2:]), pc.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = pc
    return out


def m3dm_remove_plane(pc, rgb, plane, threshold=0.005):
    """Distance = |plane . (x, y, z, 1)| per pixel; pc and rgb zeroed where the distance is below the threshold."""
    pc, rgb = pc.copy(), rgb.copy()
    for i in range(pc.shape[0]):
        for j in range(pc.shape[1]):
            x, y, z = (float(v) for v in pc[i, j])
            if abs(plane[0] * x + plane[1] * y + plane[2] * z + plane[3]) < threshold:
                pc[i, j] = 0
                rgb[i, j] = 0
    return pc, rgb


def m3dm_connected_components_cleaning(pc, rgb, labels):
    """Labels belong to the points with all three coordinates non-zero, in row-major order; the label with the most
    members (noise included) survives; every other point and its rgb pixel is zeroed."""
    pc, rgb = pc.copy(), rgb.copy()
    flat_pc, flat_rgb = pc.reshape(-1, 3), rgb.reshape(-1, 3)
    present = [k for k in range(flat_pc.shape[0]) if all(v != 0 for v in flat_pc[k])]
    counts = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    largest = sorted(counts)[int(np.argmax([counts[k] for k in sorted(counts)]))]
    for k, label in zip(present, labels):
        if label != largest:
            flat_pc[k] = 0
            flat_rgb[k] = 0
    return pc, rgb


def m3dm_remove_point_cloud_background(pc):
    """Rotation from pc[256] / pc[-256], per-point background test (y > -0.02, z > 1.8, |x| > 1 in the rotated
    frame) writing -start, rotation back, axis swap (x, z, y), scaling (0.1, -0.1, 0.1)."""
    dz, dy = pc[256, 1] - pc[-256, 1], pc[256, 2] - pc[-256, 2]
    norm = math.sqrt(dz**2 + dy**2)
    start = np.array([0, pc[-256, 1], pc[-256, 2]])
    cos_t, sin_t = dy / norm, dz / norm
    rot = np.array([[1, 0, 0], [0, cos_t, -sin_t], [0, sin_t, cos_t]])
    q = (rot @ (pc - start).T).T
    for i in range(q.shape[0]):
        if q[i, 1] > -0.02:
            q[i] = -start
        if q[i, 2] > 1.8 or q[i, 0] > 1 or q[i, 0] < -1:
            q[i] = -start
    q = (rot.T @ q.T).T + start
    return q[:, [0, 2, 1]] * [0.1, -0.1, 0.1], (rot.T @ -start + start)[[0, 2, 1]] * [0.1, -0.1, 0.1]


@pytest.mark.parametrize("shape", [(230, 120, 3), (400, 400, 3), (801, 512, 3), (57, 300)])
def test_padding_is_m3dm_pad_cropped_pc(shape):
    rng = np.random.default_rng(0)
    array = rng.integers(1, 255, shape).astype(np.uint8)
    np.testing.assert_array_equal(pad_to_square(array), m3dm_pad_cropped_pc(array))
    bottom_right = pad_to_square(array, centred=False)
    np.testing.assert_array_equal(bottom_right[: shape[0], : shape[1]], array)


def test_plane_removal_masks_rgb_as_m3dm():
    rng = np.random.default_rng(1)
    pc = rng.normal(0, 0.01, (12, 14, 3)).astype(np.float32)
    pc[2:4] = 0.0  # pixels without a point keep their rgb (the origin is 0.3 away from the plane)
    rgb = rng.integers(1, 255, (12, 14, 3)).astype(np.uint8)
    plane = np.array([0.0, 0.6, 0.8, 0.3]) / 1.0
    pc[..., 2] = (-0.3 - 0.6 * pc[..., 1]) / 0.8 + rng.choice([0.0, 0.02], (12, 14))  # half on the plane
    pc[2:4] = 0.0
    ours_pc, ours_rgb = zero_plane_points(pc, rgb, plane)
    ref_pc, ref_rgb = m3dm_remove_plane(pc, rgb, plane)
    np.testing.assert_array_equal(ours_pc, ref_pc)
    np.testing.assert_array_equal(ours_rgb, ref_rgb)
    assert (ours_rgb[2:4] == rgb[2:4]).all() and (ours_rgb == 0).all(-1).sum() > 20
    _, old_rgb = zero_plane_points(pc, rgb, plane, zero_rgb_without_depth=True)
    assert (old_rgb[2:4] == 0).all()


@pytest.mark.parametrize("noise_wins", [False, True])
def test_cluster_cleaning_is_m3dm_connected_components_cleaning(noise_wins):
    rng = np.random.default_rng(2)
    pc = rng.normal(0, 1, (10, 9, 3)).astype(np.float32)
    pc[rng.random((10, 9)) < 0.2] = 0.0
    pc[0, 0, 1] = 0.0  # one zero coordinate: not a present point for M3DM, never touched
    rgb = rng.integers(1, 255, (10, 9, 3)).astype(np.uint8)
    present = int((pc != 0).all(-1).sum())
    labels = rng.choice([-1, 0, 1] if noise_wins else [0, 1, 1, 2, -1], present)
    ours = zero_outside_largest_cluster(pc, rgb, labels)
    ref = m3dm_connected_components_cleaning(pc, rgb, labels)
    np.testing.assert_array_equal(ours[0], ref[0])
    np.testing.assert_array_equal(ours[1], ref[1])
    assert (ours[0][0, 0] == pc[0, 0]).all()
    with pytest.raises(ValueError, match="DBSCAN labels"):
        zero_outside_largest_cluster(pc, rgb, labels[:-1])


def test_eyecandies_background_uses_pc_256():
    rng = np.random.default_rng(3)
    size = 32
    v, u = np.mgrid[:size, :size] / size
    # a table tilted towards the camera, with objects above it, in Eyecandies' metre frame before the axis swap
    pts = np.stack([u - 0.5, -0.3 + 0.1 * v, 0.8 + 0.5 * v], -1).reshape(-1, 3)
    pts[rng.random(len(pts)) < 0.3, 1] -= 0.2
    ours = remove_eyecandies_background(pts)
    ref, background_value = m3dm_remove_point_cloud_background(pts)
    kept = (ours != 0).any(1)
    assert 0 < kept.sum() < len(pts)
    np.testing.assert_allclose(ours[kept], ref[kept], atol=1e-12)
    np.testing.assert_allclose(ref[~kept], np.broadcast_to(background_value, ref[~kept].shape), atol=1e-12)
    with_width = remove_eyecandies_background(pts, anchor=size)  # the earlier points[width] anchor differs
    assert not np.allclose(with_width, ours)


def test_rgb_resize_is_pil_bicubic():
    rng = np.random.default_rng(4)
    photo = (rng.random((300, 260, 3)) * 255).astype(np.uint8)
    expected = np.asarray(Image.fromarray(photo).resize((224, 224), Image.BICUBIC), np.float32) / 255.0
    ours = resize_rgb(photo, 224).permute(1, 2, 0).numpy()
    assert np.abs(ours - expected).max() <= 1 / 255 / 100
    old = resize_rgb(photo, 224, "torch").permute(1, 2, 0).numpy()
    assert np.abs(old - expected).max() > 1 / 255  # the unantialiased torch resize differs
    with pytest.raises(ValueError, match="rgb_resize"):
        resize_rgb(photo, 224, "nearest")


def test_loader_rgb_is_m3dm_transform(tmp_path):
    raw = tmp_path / "raw"
    write_synthetic_mvtec3d(raw, classes=("cookie",), num_train=1, num_test_good=1, num_test_per_defect=1, size=150)
    png = sorted((raw / "cookie" / "train" / "good" / "rgb").glob("*.png"))[0]
    with Image.open(png) as im:
        ref = np.asarray(im.convert("RGB").resize((224, 224), Image.BICUBIC), np.float32) / 255.0
    ref = (torch.from_numpy(ref).permute(2, 0, 1) - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(
        IMAGENET_STD
    )[:, None, None]
    item = MVTec3DDataset(raw, "cookie", "train")[0]
    torch.testing.assert_close(item["rgb"], ref, atol=1e-5, rtol=0)


def test_unpreprocessed_tree_is_refused_with_the_fix_command(tmp_path):
    raw = tmp_path / "raw"
    write_synthetic_mvtec3d(raw, classes=("cookie",), num_train=1, num_test_good=1, num_test_per_defect=1, size=120)
    with pytest.raises(FileNotFoundError, match="python -m lsfa.preprocess --dataset mvtec3d --root"):
        check_preprocessed(raw, "mvtec3d")
    done = preprocess_mvtec3d(raw, tmp_path / "done")
    check_preprocessed(done, "mvtec3d")
    marker = done / PREPROCESSED_MARKER
    marker.write_text(marker.read_text().replace('"version": 2', '"version": 1'))
    with pytest.raises(ValueError, match="python -m lsfa.preprocess"):
        check_preprocessed(done, "mvtec3d")
