"""Dataset preparation for M3DM / LSFA (non-destructive: writes a new tree unless ``--in_place``).

    python -m lsfa.preprocess --root data/mvtec3d --output data/mvtec3d_preprocessed
    python -m lsfa.preprocess --dataset eyecandies --root data/eyecandies --output data/eyecandies_preprocessed

MVTec 3D-AD (M3DM ``utils/preprocessing.py``), per sample:

1. RANSAC plane fit (Open3D ``segment_plane``: distance 0.004, ransac_n 50, 1000 iterations) on the points of a
   10-pixel border strip of the organised cloud;
2. zero every point (and its RGB pixel) closer than 0.005 to the plane; pixels without a point keep their RGB;
3. zero-pad xyz, rgb and gt, centred (``pad_cropped_pc``), to a square whose side is the larger of H, W rounded up
   to the next multiple of 100;
4. DBSCAN (eps 0.006, min_points 30) on the present points (all three coordinates non-zero); keep the most frequent
   label, zero the other points and their RGB pixels.

Eyecandies (M3DM ``utils/preprocess_eyecandies.py``, with its ``os.path.join(root, '/train/data')`` path bug fixed
and the background written as (0, 0, 0)): depth png -> metres with ``info_depth.yaml``, back-projection through
inv(K @ pose) with focal 711.11 and the principal point at the image centre, background removal in a frame rotated
onto the table, axis swap (x, z, y) and scaling by (0.1, -0.1, 0.1); RGB = ``image_4.png``; test samples with a
non-empty mask go to ``test/bad``, the others to ``test/good``.
"""

from __future__ import annotations

import argparse
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from lsfa.data import read_rgb, read_xyz

__all__ = [
    "EYECANDIES_FOCAL_LENGTH",
    "PREPROCESSED_MARKER",
    "check_preprocessed",
    "convert_eyecandies",
    "dbscan_labels",
    "depth_to_pointcloud",
    "fit_border_plane",
    "has_point",
    "keep_largest_cluster",
    "main",
    "pad_to_square",
    "parse_args",
    "preprocess_mvtec3d",
    "preprocess_sample",
    "remove_background_plane",
    "remove_eyecandies_background",
    "zero_outside_largest_cluster",
    "zero_plane_points",
]

EYECANDIES_FOCAL_LENGTH = 711.11


def has_point(xyz: np.ndarray) -> np.ndarray:
    """M3DM's test for a present point: all three coordinates non-zero (``np.all(pc != 0, axis=1)``)."""
    return (xyz != 0).all(-1)


def fit_border_plane(
    xyz: np.ndarray,
    border: int = 10,
    fit_distance: float = 0.004,
    ransac_n: int = 50,
    iterations: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """RANSAC plane (a, b, c, d), unit normal, fit by Open3D to the present points of a ``border``-pixel strip."""
    import open3d as o3d

    h, w, _ = xyz.shape
    strip = np.zeros((h, w), bool)
    strip[:border], strip[-border:], strip[:, :border], strip[:, -border:] = True, True, True, True
    border_points = xyz[strip & has_point(xyz)].astype(np.float64)
    if len(border_points) < ransac_n:
        raise ValueError(
            f"remove_background_plane: only {len(border_points)} valid points in the {border}-px border "
            f"strip, fewer than ransac_n={ransac_n}"
        )
    o3d.utility.random.seed(seed)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(border_points))
    plane, _ = cloud.segment_plane(distance_threshold=fit_distance, ransac_n=ransac_n, num_iterations=iterations)
    return np.asarray(plane, np.float64)


def zero_plane_points(
    xyz: np.ndarray,
    rgb: np.ndarray | None,
    plane: np.ndarray,
    remove_distance: float = 0.005,
    zero_rgb_without_depth: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero every point, and its RGB pixel, whose distance ``|(a, b, c, d) . (x, y, z, 1)|`` to the plane is below
    ``remove_distance`` (M3DM ``remove_plane``). A pixel without a point (0, 0, 0) keeps its RGB, as in M3DM, unless
    ``zero_rgb_without_depth`` (this package's earlier behaviour, README Fidelity notes)."""
    a, b, c, d = (float(v) for v in plane)
    distance = np.abs(xyz.astype(np.float64) @ np.array([a, b, c]) + d) / math.sqrt(a * a + b * b + c * c)
    on_plane = distance < remove_distance
    xyz = np.where(on_plane[..., None], 0.0, xyz).astype(np.float32)
    if rgb is not None:
        blank = on_plane | ~has_point(xyz) if zero_rgb_without_depth else on_plane
        rgb = np.where(blank[..., None], 0, rgb).astype(np.uint8)
    return xyz, rgb


def remove_background_plane(
    xyz: np.ndarray,
    rgb: np.ndarray | None = None,
    border: int = 10,
    fit_distance: float = 0.004,
    remove_distance: float = 0.005,
    ransac_n: int = 50,
    iterations: int = 1000,
    seed: int = 0,
    zero_rgb_without_depth: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Fit a plane to the border strip with RANSAC and zero every point (and pixel) within ``remove_distance``."""
    plane = fit_border_plane(xyz, border, fit_distance, ransac_n, iterations, seed)
    return zero_plane_points(xyz, rgb, plane, remove_distance, zero_rgb_without_depth)


def pad_to_square(array: np.ndarray, multiple: int = 100, centred: bool = True) -> np.ndarray:
    """Zero-pad (H, W, ...) to S x S, S = max(ceil(H / 100), ceil(W / 100)) * 100: centred as M3DM's
    ``pad_cropped_pc`` (the odd pixel at the bottom / right), or all at the bottom / right (``centred=False``)."""
    h, w = array.shape[:2]
    side = max(math.ceil(h / multiple), math.ceil(w / multiple)) * multiple
    top, left = ((side - h) // 2, (side - w) // 2) if centred else (0, 0)
    pad = [(top, side - h - top), (left, side - w - left)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad)


def dbscan_labels(points: np.ndarray, eps: float = 0.006, min_points: int = 30) -> np.ndarray:
    """Open3D DBSCAN cluster labels of (N, 3) points (-1 = noise)."""
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    return np.asarray(cloud.cluster_dbscan(eps=eps, min_points=min_points))


def zero_outside_largest_cluster(
    xyz: np.ndarray, rgb: np.ndarray | None, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """M3DM ``connected_components_cleaning`` given the DBSCAN ``labels`` of the present points (row-major order):
    keep the most frequent label (noise, -1, counts as a label there too), zero every other point and its RGB."""
    present = np.flatnonzero(has_point(xyz).reshape(-1))
    if len(labels) != len(present):
        raise ValueError(f"{len(labels)} DBSCAN labels for {len(present)} present points")
    xyz, rgb = xyz.copy(), None if rgb is None else rgb.copy()
    if not len(present):
        return xyz, rgb
    ids, counts = np.unique(labels, return_counts=True)
    outliers = present[labels != ids[np.argmax(counts)]]
    xyz.reshape(-1, 3)[outliers] = 0.0
    if rgb is not None:
        rgb.reshape(-1, rgb.shape[-1])[outliers] = 0
    return xyz, rgb


def keep_largest_cluster(
    xyz: np.ndarray, rgb: np.ndarray | None = None, eps: float = 0.006, min_points: int = 30
) -> tuple[np.ndarray, np.ndarray | None]:
    """DBSCAN (Open3D) on the present points; zero every point (and RGB pixel) outside the largest cluster."""
    present = has_point(xyz)
    labels = dbscan_labels(xyz[present], eps, min_points) if present.any() else np.zeros(0, np.int64)
    return zero_outside_largest_cluster(xyz, rgb, labels)


def preprocess_sample(
    xyz: np.ndarray,
    rgb: np.ndarray,
    gt: np.ndarray | None = None,
    centred_padding: bool = True,
    zero_rgb_without_depth: bool = False,
    **plane_kwargs,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The four M3DM steps on one sample (plane removal, square padding, largest DBSCAN cluster); the RGB image is
    zeroed where the plane and the DBSCAN outliers were removed, as M3DM's ``preprocess_pc``."""
    xyz, rgb = remove_background_plane(xyz, rgb, zero_rgb_without_depth=zero_rgb_without_depth, **plane_kwargs)
    xyz, rgb = pad_to_square(xyz, centred=centred_padding), pad_to_square(rgb, centred=centred_padding)
    gt = pad_to_square(gt, centred=centred_padding) if gt is not None else None
    xyz, rgb = keep_largest_cluster(xyz, rgb)
    return xyz, rgb, gt


def preprocess_mvtec3d(
    root: str | Path,
    output: str | Path | None,
    in_place: bool = False,
    classes: list[str] | None = None,
    centred_padding: bool = True,
    zero_rgb_without_depth: bool = False,
) -> Path:
    """Preprocess every ``<class>/<split>/<defect>`` sample of an MVTec 3D-AD tree into ``output`` (or in place).
    ``centred_padding`` / ``zero_rgb_without_depth``: see :func:`preprocess_sample` (README, Fidelity notes)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MVTec 3D-AD root {root} not found (python -m shared.datasets info mvtec3d)")
    if in_place:
        out_root = root
    elif output is None:
        raise ValueError("give --output DIR (a new tree) or --in_place")
    else:
        out_root = Path(output)
        if out_root.resolve() == root.resolve():
            raise ValueError("--output equals --root; pass --in_place to overwrite the dataset")
    rgb_files = sorted(root.glob("*/*/*/rgb/*.png"))
    if classes:
        rgb_files = [p for p in rgb_files if p.relative_to(root).parts[0] in classes]
    if not rgb_files:
        raise FileNotFoundError(f"no <class>/<split>/<defect>/rgb/*.png under {root}")
    for rgb_path in rgb_files:
        sample_dir = rgb_path.parent.parent
        xyz_path = sample_dir / "xyz" / (rgb_path.stem + ".tiff")
        gt_path = sample_dir / "gt" / rgb_path.name
        gt = np.asarray(Image.open(gt_path)) if gt_path.is_file() else None
        xyz, rgb, gt = preprocess_sample(
            read_xyz(xyz_path), read_rgb(rgb_path), gt, centred_padding, zero_rgb_without_depth
        )
        target = out_root / sample_dir.relative_to(root)
        for sub in ("rgb", "xyz") + (("gt",) if gt is not None else ()):
            (target / sub).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(target / "xyz" / xyz_path.name, xyz, photometric="rgb")
        Image.fromarray(rgb).save(target / "rgb" / rgb_path.name)
        if gt is not None:
            Image.fromarray(gt).save(target / "gt" / rgb_path.name)
    write_preprocessed_marker(out_root, "mvtec3d", root, sorted({p.relative_to(root).parts[0] for p in rgb_files}))
    return out_root


#: Written last into a tree made by this module; `train.py` and `eval.py` (:func:`lsfa.pipeline.resolve_root`) refuse a
#: real-data root without it.
PREPROCESSED_MARKER = "LSFA_PREPROCESSED.json"
PREPROCESSOR_VERSION = 2  # 2: M3DM's centred padding and RGB masking (1: bottom / right, RGB zeroed without depth)


def write_preprocessed_marker(out_root: Path, dataset: str, source: Path, classes: list[str]) -> Path:
    """Record that ``out_root`` holds preprocessed samples (dataset, source root, classes, preprocessor version)."""
    import json

    marker = out_root / PREPROCESSED_MARKER
    marker.write_text(
        json.dumps(
            {
                "preprocessor": "lsfa.preprocess",
                "version": PREPROCESSOR_VERSION,
                "dataset": dataset,
                "source": str(source.resolve()),
                "classes": classes,
            },
            indent=1,
        )
        + "\n"
    )
    return marker


def check_preprocessed(root: Path, dataset: str) -> None:
    """Refuse a real-data root that ``python -m lsfa.preprocess`` did not write (e.g. the raw download, whose
    clouds still hold the table plane), or one written for another dataset or by an older preprocessor."""
    import json

    marker = root / PREPROCESSED_MARKER
    hint = (
        f"run `python -m lsfa.preprocess --dataset {dataset} --root <raw root> --output {root}` first, or pass "
        "--data.require_preprocessed false for a tree preprocessed by M3DM's own script"
    )
    if not marker.is_file():
        raise FileNotFoundError(
            f"{root} has no {PREPROCESSED_MARKER}: it is not a tree written by lsfa.preprocess "
            f"(a raw {dataset} tree keeps the table plane in its point clouds); {hint}"
        )
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{marker} is unreadable ({err}); {hint}") from err
    if record.get("dataset") != dataset or record.get("version") != PREPROCESSOR_VERSION:
        raise ValueError(
            f"{root} was preprocessed for dataset {record.get('dataset')!r} by preprocessor version "
            f"{record.get('version')}, but {dataset!r} version {PREPROCESSOR_VERSION} is needed; {hint}"
        )


# ----------------------------------------------------------------------------------------------------------------
# Eyecandies


def depth_to_pointcloud(
    depth_png: np.ndarray, depth_min: float, depth_max: float, pose: np.ndarray, focal: float = EYECANDIES_FOCAL_LENGTH
) -> np.ndarray:
    """16-bit depth (H, W) -> (H*W, 3) points: depth in metres, back-projected through inv(K @ pose) applied to
    (u, v, 1, 1 / depth) and scaled by the depth (the Eyecandies recipe), vectorised."""
    depth = depth_png.astype(np.float64) / 65535.0 * (depth_max - depth_min) + depth_min
    h, w = depth.shape
    k = np.array([[focal, 0, w / 2, 0], [0, focal, h / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    v, u = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    vectors = np.stack([u.ravel(), v.ravel(), np.ones(h * w), 1.0 / depth.ravel()], 0)
    points = (np.linalg.inv(k @ pose) @ vectors).T * depth.reshape(-1, 1)
    return points[:, :3]


def remove_eyecandies_background(points: np.ndarray, anchor: int = 256) -> np.ndarray:
    """Rotate the cloud so the table is level (using the points ``pc[anchor]`` and ``pc[-anchor]`` of the flattened
    cloud, M3DM's ``pc[256]`` / ``pc[-256]``: the middle of the first and last rows of a 512-px image), drop points
    above the table (y > -0.02), too far (z > 1.8) or too wide (|x| > 1), rotate back, swap axes to (x, z, y) and
    scale by (0.1, -0.1, 0.1). Background points become (0, 0, 0) (the release writes a constant non-zero point)."""
    if len(points) <= anchor:
        raise ValueError(f"remove_eyecandies_background: {len(points)} points, but the anchor pc[{anchor}] is needed")
    first, last = points[anchor], points[-anchor]
    dz, dy = first[1] - last[1], first[2] - last[2]
    norm = math.hypot(dz, dy)
    cos_t, sin_t = dy / norm, dz / norm
    rotation = np.array([[1, 0, 0], [0, cos_t, -sin_t], [0, sin_t, cos_t]])
    origin = np.array([0.0, last[1], last[2]])
    local = (points - origin) @ rotation.T
    background = (local[:, 1] > -0.02) | (local[:, 2] > 1.8) | (np.abs(local[:, 0]) > 1)
    out = (local @ rotation + origin)[:, [0, 2, 1]] * np.array([0.1, -0.1, 0.1])
    out[background] = 0.0
    return out


def _eyecandies_sample(data_dir: Path, sample_id: str) -> tuple[np.ndarray, Path]:
    import yaml

    depth_path = data_dir / f"{sample_id}_depth.png"
    info = yaml.safe_load((data_dir / f"{sample_id}_info_depth.yaml").read_text())
    pose = np.loadtxt(data_dir / f"{sample_id}_pose.txt")
    depth = np.asarray(Image.open(depth_path))
    points = depth_to_pointcloud(depth, info["normalization"]["min"], info["normalization"]["max"], pose)
    h, w = depth.shape
    xyz = remove_eyecandies_background(points).reshape(h, w, 3).astype(np.float32)
    return xyz, data_dir / f"{sample_id}_image_4.png"


def convert_eyecandies(root: str | Path, output: str | Path, classes: list[str] | None = None) -> Path:
    """Convert ``<root>/<Class>/{train,test_public}/data`` into the MVTec-3D-like tree read by MVTec3DDataset."""
    root, output = Path(root), Path(output)
    class_dirs = [root / c for c in classes] if classes else sorted(d for d in root.iterdir() if d.is_dir())
    for class_dir in class_dirs:
        for split, target_split in (("train", "train"), ("test_public", "test")):
            data_dir = class_dir / split / "data"
            if not data_dir.is_dir():
                raise FileNotFoundError(
                    f"{data_dir} not found; expected <root>/<Class>/{{train,test_public}}/data "
                    f"(python -m shared.datasets info eyecandies)"
                )
            for depth_path in sorted(data_dir.glob("*_depth.png")):
                sample_id = depth_path.name[: -len("_depth.png")]
                xyz, rgb_path = _eyecandies_sample(data_dir, sample_id)
                name = sample_id.zfill(3)
                if target_split == "train":
                    folder, mask = output / class_dir.name / "train" / "good", None
                else:
                    mask = np.asarray(Image.open(data_dir / f"{sample_id}_mask.png").convert("L"))
                    folder = output / class_dir.name / "test" / ("bad" if mask.any() else "good")
                for sub in ("rgb", "xyz") + (("gt",) if mask is not None else ()):
                    (folder / sub).mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(folder / "xyz" / f"{name}.tiff", xyz, photometric="rgb")
                shutil.copyfile(rgb_path, folder / "rgb" / f"{name}.png")
                if mask is not None:
                    Image.fromarray(((mask > 0) * 255).astype(np.uint8)).save(folder / "gt" / f"{name}.png")
    write_preprocessed_marker(output, "eyecandies", root, [d.name for d in class_dirs])
    return output


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("mvtec3d", "eyecandies"), default="mvtec3d")
    parser.add_argument("--root", required=True, help="the downloaded dataset")
    parser.add_argument("--output", default=None, help="new tree to write (default <root>_preprocessed)")
    parser.add_argument("--in_place", action="store_true", help="overwrite the files of --root (MVTec 3D-AD only)")
    parser.add_argument("--classes", nargs="*", default=None)
    parser.add_argument(
        "--bottom_right_padding", action="store_true", help="pad at the bottom / right (M3DM: centred; MVTec 3D-AD)"
    )
    parser.add_argument(
        "--zero_rgb_without_depth",
        action="store_true",
        help="also zero the RGB of pixels without a point (M3DM keeps them; MVTec 3D-AD)",
    )
    args = parser.parse_args(argv)
    if args.dataset == "eyecandies" and args.in_place:
        parser.error("--in_place is not supported for Eyecandies (it is a format conversion)")
    return args


def main(args: argparse.Namespace) -> Path:
    """Write the preprocessed tree; returns its root."""
    output = args.output or (None if args.in_place else str(Path(args.root).resolve()) + "_preprocessed")
    if args.dataset == "eyecandies":
        out = convert_eyecandies(args.root, output, args.classes)
    else:
        out = preprocess_mvtec3d(
            args.root, output, args.in_place, args.classes, not args.bottom_right_padding, args.zero_rgb_without_depth
        )
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main(parse_args())
