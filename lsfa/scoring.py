"""Per-class memory-bank scoring of LSFA (adapted features) and of the M3DM-style baseline (frozen features).

For one class (the release's ``PatchCore/m3dm_runner.py`` + ``features_double_lib.py``):

1. patch tokens of every training image: LSFA = adapted xyz (g x g) and adapted rgb (the ViT map replicated to
   g x g); M3DM = frozen xyz (g x g) and frozen rgb (the ViT's own 28 x 28);
2. scalar normalisation of both banks (release: mean of the xyz bank and std of the rgb bank for both);
3. greedy k-centre coreset after a sparse random projection (xyz: 10 %; rgb: 10 % of the reduced xyz bank in the
   release);
4. test image -> per-modality re-weighted image score and min-distance map (upsampled, blurred);
5. decision-layer fusion: two SGD one-class SVMs fit on the training images' [s_xyz, 0.1 s_rgb] vectors and on all
   their pixels' [map_xyz, 0.1 map_rgb]; or a single modality.

M3DM's full method (``DINO+Point_MAE+Fusion``, the release's ``TripleFeatures``) adds a third bank when a UFF module
(:mod:`lsfa.uff`) is given: fused frozen tokens on the xyz grid (rgb pooled to it), normalised with the same
mean(xyz bank) / std(rgb bank), coreset 10 % of the reduced xyz bank, and 3-d fusion vectors
[1.0 s_xyz, 0.1 s_rgb, 1.0 s_fus]; the release then keeps only the xyz coreset rows without any exact zero and
appends one zero vector (``triple_zero_row``).

Metrics (``shared.metrics``): I-AUROC over image scores, P-AUROC over all pixels, AUPRO@0.3 both as the exact curve
and as M3DM's ``au_pro_util`` (100 thresholds at evenly spaced ranks of the anomaly-free scores), the papers' number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.utils.data import DataLoader, Dataset

from lsfa.adaptation import pool_to_grid, tokens
from lsfa.memory_bank import LateFusion, ModalityBank, blur_anomaly_map
from lsfa.model import FeatureExtractor, LSFAAdaptors
from lsfa.uff import UnsupervisedFeatureFusion, fuse_feature_maps
from shared.metrics import aupro, auroc

__all__ = ["ScoringSettings", "SplitFeatures", "class_metrics", "extract_features", "score_class", "split_tokens"]


@dataclass
class ScoringSettings:
    """Memory-bank and fusion settings (defaults: the release)."""

    coreset_ratio: float = 0.1
    rgb_coreset_rule: str = "released"  # "released": 10 % of the reduced xyz bank | "ratio": 10 % of the rgb bank
    normalization: str = "released"  # "released": mean(xyz bank), std(rgb bank) for both | "per_modality"
    blur: Literal["pil_uint8", "gaussian"] = "pil_uint8"  # "pil_uint8" (release) | "gaussian"
    blur_sigma: float = 4.0
    fusion: str = "ocsvm"  # "ocsvm" (decision-layer fusion) | "xyz" | "rgb" (single bank) | "sum"
    xyz_weight: float = 1.0
    rgb_weight: float = 0.1
    fusion_weight: float = 1.0  # M3DM triple: weight of the fusion bank's score and map (--fusion_s_lambda)
    triple_zero_row: bool = True  # M3DM triple: keep the xyz coreset rows without any zero, append a zero vector
    projection_eps: float = 0.9
    seed: int = 0
    image_size: int = 224


@dataclass
class SplitFeatures:
    """Frozen features and labels of one split of one class (CPU tensors)."""

    xyz: torch.Tensor  # (N, C_x, g, g)
    rgb: torch.Tensor  # (N, C_r, g_r, g_r) at the ViT's own resolution
    valid: torch.Tensor  # (N, g, g)
    masks: torch.Tensor  # (N, S, S)
    labels: torch.Tensor  # (N,)
    defects: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor, dataset: Dataset, batch_size: int, device: torch.device, num_workers: int = 0
) -> SplitFeatures:
    """Run the frozen extractors over a dataset (features stored on the CPU)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    parts: dict[str, list] = {k: [] for k in ("xyz", "rgb", "valid", "masks", "labels", "defects", "paths")}
    for batch in loader:
        rgb, xyz = batch["rgb"].to(device), batch["xyz"].to(device)
        xyz_feats, valid = extractor.xyz_features(xyz)
        parts["xyz"].append(xyz_feats.cpu())
        parts["valid"].append(valid.cpu())
        parts["rgb"].append(extractor.rgb_features(rgb).cpu())
        parts["masks"].append(batch["mask"])
        parts["labels"].append(torch.as_tensor(batch["label"]))
        parts["defects"] += list(batch["defect"])
        parts["paths"] += list(batch["path"])
    return SplitFeatures(
        **{k: torch.cat(parts[k]) for k in ("xyz", "rgb", "valid", "masks", "labels")},
        defects=parts["defects"],
        paths=parts["paths"],
    )


@torch.no_grad()
def split_tokens(
    feats: SplitFeatures, adaptors: LSFAAdaptors | None, device: torch.device, batch_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Tokens of a split: LSFA (adaptors given) = adapted xyz and adapted rgb on the xyz grid; M3DM = frozen xyz and
    frozen rgb at the ViT resolution. Returns (xyz (N, P_x, C_x), rgb (N, P_r, C_r), g_x, g_r) on ``device``."""
    grid = feats.xyz.shape[-1]
    xs, rs = [], []
    for start in range(0, feats.xyz.shape[0], batch_size):
        x = feats.xyz[start : start + batch_size].to(device)
        r = feats.rgb[start : start + batch_size].to(device)
        if adaptors is not None:
            r = pool_to_grid(r, grid)
            xs.append(adaptors.adapt_xyz(tokens(x)))
            rs.append(adaptors.adapt_rgb(tokens(r)))
        else:
            xs.append(tokens(x))
            rs.append(tokens(r))
    rgb_grid = grid if adaptors is not None else feats.rgb.shape[-1]
    return torch.cat(xs), torch.cat(rs), grid, rgb_grid


def _normalisation(x_bank: torch.Tensor, r_bank: torch.Tensor, mode: str) -> tuple[float, float, float, float]:
    if mode == "released":
        mean, std = float(x_bank.mean()), float(r_bank.std())
        return mean, std, mean, std
    if mode == "per_modality":
        return float(x_bank.mean()), float(x_bank.std()), float(r_bank.mean()), float(r_bank.std())
    raise ValueError(f"normalization must be 'released' or 'per_modality', got {mode!r}")


def _score_split(
    bank: ModalityBank, toks: torch.Tensor, grid: int, s: ScoringSettings, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    scores, dists = [], []
    for image in toks:
        score, dist = bank.score(image, eps)
        scores.append(score)
        dists.append(dist.reshape(grid, grid))
    maps = blur_anomaly_map(torch.stack(dists), s.image_size, s.blur_sigma, s.blur)
    return torch.stack(scores).cpu(), maps.cpu()


def _released_zero_row(bank: torch.Tensor) -> torch.Tensor:
    """M3DM ``TripleFeatures.run_coreset``: keep the (normalised) xyz coreset rows whose entries are all non-zero,
    then append one zero vector."""
    return torch.cat([bank[(bank != 0).all(1)], bank.new_zeros(1, bank.shape[1])])


def score_class(
    train: SplitFeatures,
    test: SplitFeatures,
    adaptors: LSFAAdaptors | None,
    settings: ScoringSettings,
    device: torch.device,
    uff: UnsupervisedFeatureFusion | None = None,
) -> dict[str, torch.Tensor]:
    """Fit the banks on ``train``, score ``test``; returns fused and per-modality image scores and maps.

    ``uff`` (M3DM baseline only, ``adaptors`` None) adds the third, fusion bank of M3DM's full method; its image
    scores and maps are returned as ``fusion_image`` / ``fusion_map`` and enter the late fusion as a third column.
    """
    s = settings
    if s.fusion not in ("ocsvm", "xyz", "rgb", "sum"):
        raise ValueError(f"fusion must be ocsvm, xyz, rgb or sum, got {s.fusion!r}")
    if uff is not None and adaptors is not None:
        raise ValueError("score_class: the fusion bank belongs to the M3DM baseline (frozen features); LSFA has none")
    x_tr, r_tr, gx, gr = split_tokens(train, adaptors, device)
    x_te, r_te, _, _ = split_tokens(test, adaptors, device)
    # The banks are views of the train tokens, normalised in place: one copy of the train tokens per modality is
    # held (not four, as a functional ``(x - mean) / std`` per use would; peak memory in bench.py).
    x_bank, r_bank = x_tr.view(-1, x_tr.shape[-1]), r_tr.view(-1, r_tr.shape[-1])
    xm, xs, rm, rs = _normalisation(x_bank, r_bank, s.normalization)
    for t, mean, std in ((x_tr, xm, xs), (x_te, xm, xs), (r_tr, rm, rs), (r_te, rm, rs)):
        t.sub_(mean).div_(std)
    coreset_dtype = torch.float16 if device.type == "cuda" else None
    bank_x = ModalityBank(s.coreset_ratio, s.projection_eps, s.seed, coreset_dtype).fit(x_bank)
    rgb_size = None
    if s.rgb_coreset_rule == "released":
        rgb_size = int(s.coreset_ratio * bank_x.bank.shape[0])
    elif s.rgb_coreset_rule != "ratio":
        raise ValueError(f"rgb_coreset_rule must be 'released' or 'ratio', got {s.rgb_coreset_rule!r}")
    bank_r = ModalityBank(s.coreset_ratio, s.projection_eps, s.seed + 1, coreset_dtype).fit(r_bank, rgb_size)
    eps = 1e-5 if s.fusion in ("xyz", "rgb") else 0.0  # M3DM's single-bank variants add 1e-5 to the denominator
    # (name, bank, normalised train tokens, normalised test tokens, grid, weight) per memory bank
    banks = [
        ("xyz", bank_x, x_tr, x_te, gx, s.xyz_weight),
        ("rgb", bank_r, r_tr, r_te, gr, s.rgb_weight),
    ]
    sizes = [bank_x.bank.shape[0], bank_r.bank.shape[0], x_bank.shape[0], r_bank.shape[0]]
    if uff is not None:
        f_tr = fuse_feature_maps(uff, train.xyz, train.rgb, device)
        f_te = fuse_feature_maps(uff, test.xyz, test.rgb, device)
        f_bank = f_tr.view(-1, f_tr.shape[-1])
        # the release normalises the fusion bank with mean(xyz bank) / std(rgb bank) too
        fm, fs = (xm, xs) if s.normalization == "released" else (float(f_bank.mean()), float(f_bank.std()))
        f_tr.sub_(fm).div_(fs)
        f_te.sub_(fm).div_(fs)
        fusion_size = int(s.coreset_ratio * bank_x.bank.shape[0]) if s.rgb_coreset_rule == "released" else None
        bank_f = ModalityBank(s.coreset_ratio, s.projection_eps, s.seed + 2, coreset_dtype).fit(f_bank, fusion_size)
        if s.triple_zero_row:  # after all three coresets, whose sizes come from the reduced xyz bank
            bank_x.bank = _released_zero_row(bank_x.bank)
        banks.append(("fusion", bank_f, f_tr, f_te, gx, s.fusion_weight))
        sizes = [
            bank_x.bank.shape[0],
            bank_r.bank.shape[0],
            bank_f.bank.shape[0],
            x_bank.shape[0],
            r_bank.shape[0],
            f_bank.shape[0],
        ]
    out: dict[str, torch.Tensor] = {}
    for name, bank, _, te, grid, _ in banks:
        out[f"{name}_image"], out[f"{name}_map"] = _score_split(bank, te, grid, s, eps)
    if s.fusion == "ocsvm":
        w = torch.tensor([b[5] for b in banks])
        train_scores = [_score_split(bank, tr, grid, s, eps) for _, bank, tr, _, grid, _ in banks]
        fusion = LateFusion().fit(
            torch.stack([img for img, _ in train_scores], 1) * w,
            torch.stack([m for _, m in train_scores], 1) * w[:, None, None],
        )
        out["image"], out["map"] = fusion.score(
            torch.stack([out[f"{b[0]}_image"] for b in banks], 1) * w,
            torch.stack([out[f"{b[0]}_map"] for b in banks], 1) * w[:, None, None],
        )
    elif s.fusion == "sum":
        out["image"] = sum(b[5] * out[f"{b[0]}_image"] for b in banks)
        out["map"] = sum(b[5] * out[f"{b[0]}_map"] for b in banks)
    else:
        out["image"], out["map"] = out[f"{s.fusion}_image"], out[f"{s.fusion}_map"]
    out["bank_sizes"] = torch.tensor(sizes)
    return out


AUPRO_METHODS = ("exact", "m3dm")


def class_metrics(
    image_scores: torch.Tensor,
    maps: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    aupro_method: str = "exact",
) -> dict[str, float]:
    """I-AUROC, P-AUROC and AUPRO@0.3 of one class (NaN where a metric is undefined, e.g. no defect).

    ``aupro_exact`` and ``aupro_m3dm`` are both returned; ``aupro`` is the one named by ``aupro_method`` (the paper
    recipes use ``m3dm``, the number M3DM and LSFA report)."""
    if aupro_method not in AUPRO_METHODS:
        raise ValueError(f"aupro_method must be one of {AUPRO_METHODS}, got {aupro_method!r}")
    nan = float("nan")
    has_both = bool((labels == 1).any() and (labels == 0).any())
    out = {
        "i_auroc": auroc(image_scores, labels) if has_both else nan,
        "p_auroc": auroc(maps, masks.bool()) if bool(masks.any()) else nan,
    }
    for method in AUPRO_METHODS:
        out[f"aupro_{method}"] = aupro(maps, masks.bool(), 0.3, method=method) if bool(masks.any()) else nan
    out["aupro"] = out[f"aupro_{aupro_method}"]
    return out
