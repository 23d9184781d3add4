"""Anomaly / out-of-distribution metrics: exact ROC and PR curves, AUROC, AP, FPR at a TPR, and AUPRO.

Conventions shared by the ranking metrics (``roc_curve``, ``precision_recall_curve``, ``auroc``,
``average_precision``, ``fpr_at_tpr``):

- label 1 is the positive class (anomaly / out-of-distribution), label 0 the negative class; labels may be bool,
  integer or float 0/1. Entries whose label equals ``ignore_index`` are dropped first (segmentation void, 255).
- a higher score means "more anomalous"; a threshold ``t`` predicts positive for every entry with score ``>= t``,
  and the curves have one point per distinct score value (ties never split), exactly like scikit-learn's
  ``_binary_clf_curve`` / ``roc_curve(drop_intermediate=False)``.
- inputs of any shape are flattened (scores and labels must have the same number of entries); numpy inputs are
  evaluated on the CPU, tensors on their own device.
- an input with no positive or no negative entry (empty included) raises ``ValueError``, and so does a NaN score.

Exactness at scale: every curve comes from int64 keys that pack an order-preserving integer code of the score with a
small payload (the label here, the ground-truth region id in AUPRO), sorted once. For scores that float32 represents
exactly, the code is the float's bit pattern and the sort is values-only (numpy's in-place sort on CPU); float64 and
wide integer scores are argsorted instead (slower, same result). The sorted keys are scanned in chunks, collapsing
tied scores into one row per distinct threshold; the scalar metrics consume the chunks as they come, so beyond the
inputs the float32 path needs 8 bytes per entry plus one chunk of work space, whatever the number of distinct scores
(10^8 scores: ``python -m shared.bench_metrics``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from scipy import ndimage

from shared.metrics._inputs import ArrayLike, to_tensor

# Entries per step of key packing and of the tie-run scan: bounds the work space (~0.5 GB at most) while keeping
# the number of parallel regions low (each costs a thread barrier, expensive on a busy machine).
_CHUNK = 1 << 22
_LOW31 = 0x7FFFFFFF
# scipy.ndimage.label structure for an (N, H, W) stack: 8-connectivity inside each image, none across images.
_EIGHT_CONNECTED_PER_IMAGE = np.zeros((3, 3, 3), dtype=int)
_EIGHT_CONNECTED_PER_IMAGE[1] = 1


def _sort_inplace(keys: torch.Tensor) -> torch.Tensor:
    """Sort a 1-D tensor ascending and return it (the same storage on CPU)."""
    if keys.device.type == "cpu":
        # numpy's in-place SIMD sort needs no int64 index array and is 10-20x faster than torch.sort on CPU
        # (10^8 int64 keys: 2 s against 17 s and 1.9 GB of extra memory on 2 cores).
        keys.numpy().sort()
        return keys
    return torch.sort(keys).values


def _flatnonzero(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the True entries of a 1-D bool tensor (int64)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))  # 5-10x faster than torch.nonzero on CPU
    return mask.nonzero().squeeze(1)


def _flip_negatives(bits: torch.Tensor) -> torch.Tensor:
    """Map float32 bit patterns (as int32) to int32 values ordered like the floats; an involution."""
    return bits ^ ((bits >> 31) & _LOW31)


def _sort_descending(
    scores: torch.Tensor, payload: torch.Tensor, payload_bits: int
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Order (score, payload) pairs by descending score as packed int64 keys ``code << payload_bits | payload``.

    Codes increase as scores decrease and are equal exactly when scores are equal. Scores that float32 holds
    exactly (16/32-bit floats, integers up to 16 bits, bool) use their order-preserving float32 bit pattern as the
    code and need one values-only sort of the keys. Other dtypes (float64, 32/64-bit integers) are argsorted with
    ``torch.sort`` and coded by the index of their distinct value (slower on CPU, same result).

    Args:
        scores: 1-D scores without NaN.
        payload: 1-D non-negative integers (or bools) below ``2 ** payload_bits``, one per score.
        payload_bits: bits reserved for the payload, at most 31.

    Returns:
        The keys sorted ascending, and ``scores_at`` mapping positions in the sorted keys to their score values.
    """
    if scores.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.bool, torch.uint8, torch.int8, torch.int16):
        keys = torch.empty(scores.numel(), dtype=torch.int64, device=scores.device)
        for start in range(0, scores.numel(), _CHUNK):
            stop = start + _CHUNK
            # 0 - score: descending scores become ascending codes, and -0.0 ties with +0.0 (both become +0.0).
            bits = torch.rsub(scores[start:stop].float(), 0.0).view(torch.int32)
            chunk = keys[start:stop]
            chunk.copy_(_flip_negatives(bits))
            chunk.bitwise_left_shift_(payload_bits).bitwise_or_(payload[start:stop])
        keys = _sort_inplace(keys)

        def scores_at(positions: torch.Tensor) -> torch.Tensor:
            codes = torch.index_select(keys, 0, positions) >> payload_bits
            return torch.rsub(_flip_negatives(codes.int()).view(torch.float32), 0.0)

        return keys, scores_at

    values, order = torch.sort(scores, descending=True)
    new_value = torch.ones_like(values, dtype=torch.bool)
    new_value[1:] = values[1:] != values[:-1]
    codes = torch.cumsum(new_value, 0).sub_(1)
    keys = torch.add(torch.index_select(payload, 0, order), codes, alpha=1 << payload_bits)
    return keys, lambda positions: torch.index_select(values, 0, positions)


def _tie_runs(
    keys: torch.Tensor,
    payload_bits: int,
    increments: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Scan sorted packed keys chunk by chunk, one output row per distinct score, scores descending.

    Args:
        keys: sorted keys from :func:`_sort_descending`.
        payload_bits: as given to :func:`_sort_descending`.
        increments: maps a chunk of payloads to one or more new per-entry increment tensors, in the dtype to
            accumulate in (the scan overwrites them with their cumulative sums).

    Yields:
        Per chunk that closes a tie run, ``(counts, *totals)``: for each tie run ending there, the number of entries
        with a score ``>=`` the run's score (the run's last position in ``keys`` plus one), and for each increment
        tensor its sum over those entries (cumulative sums over the whole array, carried across chunks).
    """
    n = keys.numel()
    payload_mask = (1 << payload_bits) - 1
    carries = None
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        # One look-ahead entry decides whether the chunk's last tie run continues in the next chunk.
        codes = keys[start : stop + 1] >> payload_bits
        run_ends = torch.empty(stop - start, dtype=torch.bool, device=keys.device)
        torch.ne(codes[1:], codes[:-1], out=run_ends[: codes.numel() - 1])
        if stop == n:
            run_ends[-1] = True
        totals = increments(keys[start:stop] & payload_mask)
        for total, carry in zip(totals, carries or ()):
            total[:1] += carry
        totals = [total.cumsum_(0) for total in totals]
        carries = [total[-1].clone() for total in totals]
        ends = _flatnonzero(run_ends)
        if ends.numel():  # a chunk inside one long tie run closes no run
            yield ends + (start + 1), *(torch.index_select(total, 0, ends) for total in totals)


def _concat_runs(runs: Iterator[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    """Concatenate the per-chunk outputs of a run scan into whole curves."""
    return [torch.cat(parts) for parts in zip(*runs)]


def _ranked_runs(
    scores: ArrayLike, labels: ArrayLike, ignore_index: int | None, metric: str
) -> tuple[Iterator[tuple[torch.Tensor, ...]], Callable[[torch.Tensor], torch.Tensor], int, int]:
    """Validate binary ranking inputs and start the exact ROC scan.

    Returns:
        An iterator over chunks of the ROC points ``(counts, tps, fps, previous_tps, previous_fps)``, one per
        distinct threshold, descending: the number of entries, true positives and false positives with
        ``score >= threshold``, and the last two at the previous point (int64); the function mapping positions in
        the sorted keys (``counts - 1``) to thresholds; the number of positives and of negatives.
    """
    scores = to_tensor(scores, "scores").reshape(-1)
    labels = to_tensor(labels, "labels").to(scores.device).reshape(-1)
    if scores.numel() != labels.numel():
        raise ValueError(f"{metric}: scores has {scores.numel()} entries but labels has {labels.numel()}")
    if scores.is_complex():
        raise TypeError(f"{metric}: scores must be real numbers, got {scores.dtype}")
    if ignore_index is not None:
        keep = labels != ignore_index
        scores, labels = scores[keep], labels[keep]
    if scores.is_floating_point() and torch.isnan(scores).any():
        raise ValueError(f"{metric}: scores contain NaN")
    positive = labels if labels.dtype == torch.bool else _binary_labels(labels, metric, ignore_index)
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        dropped = "" if ignore_index is None else f" after dropping ignore_index={ignore_index}"
        raise ValueError(
            f"{metric} is undefined without both classes: got {n_pos} positive (label 1) and {n_neg} negative "
            f"(label 0) entries{dropped}"
        )
    keys, scores_at = _sort_descending(scores, positive, 1)
    return _roc_points(keys), scores_at, n_pos, n_neg


def _roc_points(keys: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """Turn the tie-run scan of label-packed keys into ROC points (see :func:`_ranked_runs`)."""
    last_tp = last_fp = torch.zeros(1, dtype=torch.int64, device=keys.device)
    for counts, tps in _tie_runs(keys, 1, lambda labels: (labels,)):
        fps = counts - tps
        yield counts, tps, fps, torch.cat([last_tp, tps[:-1]]), torch.cat([last_fp, fps[:-1]])
        last_tp, last_fp = tps[-1:], fps[-1:]


def _binary_labels(labels: torch.Tensor, metric: str, ignore_index: int | None) -> torch.Tensor:
    """Return ``labels == 1`` after checking that every label is 0 or 1."""
    positive = labels == 1
    valid = positive | (labels == 0)
    if not valid.all():
        bad = labels[~valid][0].item()
        hint = " Pass ignore_index to drop void entries." if ignore_index is None else ""
        raise ValueError(f"{metric}: labels must be 0 (negative) or 1 (positive), found {bad}.{hint}")
    return positive


def _ratio(counts: torch.Tensor, total: int | float) -> torch.Tensor:
    """``counts / total`` in float64, correctly rounded on every device: CUDA turns a division by a Python scalar
    into a multiplication by its reciprocal, which can differ from the CPU in the last bit (and move a threshold)."""
    return counts.double() / torch.tensor(float(total), dtype=torch.float64, device=counts.device)


def roc_curve(
    scores: ArrayLike, labels: ArrayLike, ignore_index: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact ROC curve, one point per distinct score (scikit-learn ``roc_curve(drop_intermediate=False)``).

    Args:
        scores: anomaly scores, any shape (flattened); higher = more anomalous.
        labels: 1 = positive (anomaly), 0 = negative; same number of entries as ``scores``.
        ignore_index: label value whose entries are dropped (e.g. 255 for void pixels).

    Returns:
        ``(fpr, tpr, thresholds)``, float64 tensors on the scores' device. ``thresholds`` is decreasing and starts
        with ``+inf`` (the point (0, 0)); point i counts the entries with ``score >= thresholds[i]``.

    Raises:
        ValueError: a class is missing (or no entry is left), NaN scores, labels other than 0/1, size mismatch.
    """
    runs, scores_at, n_pos, n_neg = _ranked_runs(scores, labels, ignore_index, "roc_curve")
    counts, tps, fps, _, _ = _concat_runs(runs)
    thresholds = scores_at(counts - 1)
    start = torch.zeros(1, dtype=torch.float64, device=tps.device)
    fpr = torch.cat([start, _ratio(fps, n_neg)])
    tpr = torch.cat([start, _ratio(tps, n_pos)])
    return fpr, tpr, torch.cat([start + torch.inf, thresholds.double()])


def precision_recall_curve(
    scores: ArrayLike, labels: ArrayLike, ignore_index: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact precision-recall curve in scikit-learn's ``precision_recall_curve`` layout (for plots).

    ``scores``, ``labels`` and ``ignore_index`` are those of :func:`roc_curve`.

    Returns:
        ``(precision, recall, thresholds)``, float64 tensors: thresholds increasing over the distinct scores,
        precision and recall at ``score >= threshold``, each followed by the conventional last point
        (precision 1, recall 0) that has no threshold.

    Raises:
        ValueError: as :func:`roc_curve`.
    """
    runs, scores_at, n_pos, _ = _ranked_runs(scores, labels, ignore_index, "precision_recall_curve")
    counts, tps, _, _, _ = _concat_runs(runs)
    thresholds = scores_at(counts - 1)
    precision = tps.double() / counts
    recall = _ratio(tps, n_pos)
    last = torch.ones(1, dtype=torch.float64, device=tps.device)
    return torch.cat([precision.flip(0), last]), torch.cat([recall.flip(0), last - 1]), thresholds.double().flip(0)


def auroc(scores: ArrayLike, labels: ArrayLike, ignore_index: int | None = None) -> float:
    """Exact area under the ROC curve (scikit-learn ``roc_auc_score`` for binary labels).

    Trapezoidal area under the exact ROC curve, so a tie between a positive and a negative counts 1/2 (the
    Mann-Whitney U statistic divided by #positives * #negatives). Computed in exact integer arithmetic (valid up
    to about 4e9 entries) and streamed over the sorted scores.

    ``scores``, ``labels`` and ``ignore_index`` are those of :func:`roc_curve`, and so are the errors it raises.

    Returns:
        AUROC in [0, 1].
    """
    runs, _, n_pos, n_neg = _ranked_runs(scores, labels, ignore_index, "auroc")
    # Twice the trapezoid between consecutive points, in units of 1 / (P * N).
    twice_area = sum(int(((fps - prev_fps) * (tps + prev_tps)).sum()) for _, tps, fps, prev_tps, prev_fps in runs)
    return twice_area / (2 * n_pos * n_neg)


def average_precision(scores: ArrayLike, labels: ArrayLike, ignore_index: int | None = None) -> float:
    """Average precision, step-wise: ``sum_n (R_n - R_{n-1}) * P_n`` (scikit-learn ``average_precision_score``).

    ``P_n`` and ``R_n`` are precision and recall at the n-th distinct threshold (descending), ``R_0 = 0``. This is
    not the trapezoidal area under the PR curve (which is larger), nor an interpolated (VOC/COCO) AP.

    ``scores``, ``labels`` and ``ignore_index`` are those of :func:`roc_curve`, and so are the errors it raises.

    Returns:
        AP in [0, 1].
    """
    runs, _, n_pos, _ = _ranked_runs(scores, labels, ignore_index, "average_precision")
    total = sum(
        float(torch.dot((tps - prev_tps).double(), tps.double().div_(counts))) for counts, tps, _, prev_tps, _ in runs
    )
    return total / n_pos


def fpr_at_tpr(
    scores: ArrayLike,
    labels: ArrayLike,
    tpr: float = 0.95,
    strict: bool = False,
    ignore_index: int | None = None,
) -> float:
    """False positive rate at the first exact-ROC point that reaches a true positive rate (e.g. FPR95).

    Walks the exact ROC (one point per distinct score, thresholds descending, no interpolation) and returns the
    FPR of the first point with ``TPR >= tpr`` (``strict=False``, the common definition, also torchmetrics'
    ``BinarySpecificityAtSensitivity`` -> 1 - specificity) or ``TPR > tpr`` (``strict=True``: SLEEG's official
    ``OODEvaluation``, used by energy_anomaly_seg). TPR is ``tps / #positives`` in float64, as scikit-learn's
    ``roc_curve``. Anomaly / OoD is the positive class (the energy-OOD papers that treat in-distribution as positive
    get different numbers). Note that walking scikit-learn's default ``roc_curve(drop_intermediate=True)`` can skip
    a collinear point and give a later one; this function uses every distinct threshold.

    Args:
        scores: anomaly scores, any shape (flattened); higher = more anomalous.
        labels: 1 = positive (anomaly), 0 = negative; same number of entries as ``scores``.
        tpr: target true positive rate, in (0, 1] (non-strict) or [0, 1) (strict).
        strict: require TPR strictly above ``tpr``.
        ignore_index: label value whose entries are dropped.

    Returns:
        The FPR in [0, 1].

    Raises:
        ValueError: ``tpr`` out of range, or as :func:`roc_curve`.
    """
    _check_tpr(tpr, strict)
    runs, _, n_pos, n_neg = _ranked_runs(scores, labels, ignore_index, "fpr_at_tpr")
    hits_per_chunk = (
        (fps, (_ratio(tps, n_pos) > tpr if strict else _ratio(tps, n_pos) >= tpr).nonzero())
        for _, tps, fps, _, _ in runs
    )
    # The last ROC point has TPR 1, which reaches any allowed target, so next() always finds a chunk.
    fps, hits = next(chunk for chunk in hits_per_chunk if chunk[1].numel())
    return int(fps[hits[0, 0]]) / n_neg


def ranking_metrics(
    scores: ArrayLike,
    labels: ArrayLike,
    tpr: float = 0.95,
    strict: bool = False,
    ignore_index: int | None = None,
) -> dict[str, float]:
    """AUROC, average precision and FPR at a TPR from one sort and one scan of the scores.

    Equal to calling :func:`auroc`, :func:`average_precision` and :func:`fpr_at_tpr` separately (same exact
    arithmetic), at a third of the cost: each of those validates, packs and sorts the scores again, which dominates
    at the 10^8-10^9 pixels of a segmentation test set.

    Args:
        scores, labels, ignore_index: as :func:`roc_curve`.
        tpr: target true positive rate of ``fpr_at_tpr``.
        strict: require TPR strictly above ``tpr`` (see :func:`fpr_at_tpr`).

    Returns:
        ``{"auroc": ..., "average_precision": ..., "fpr_at_tpr": ...}``, each in [0, 1].

    Raises:
        ValueError: ``tpr`` out of range, or as :func:`roc_curve`.
    """
    _check_tpr(tpr, strict)
    runs, _, n_pos, n_neg = _ranked_runs(scores, labels, ignore_index, "ranking_metrics")
    twice_area = 0
    precision_sum = 0.0
    fpr = None
    for counts, tps, fps, prev_tps, prev_fps in runs:
        twice_area += int(((fps - prev_fps) * (tps + prev_tps)).sum())
        precision_sum += float(torch.dot((tps - prev_tps).double(), tps.double() / counts))
        if fpr is None:
            rate = _ratio(tps, n_pos)
            hits = (rate > tpr if strict else rate >= tpr).nonzero()
            if hits.numel():
                fpr = int(fps[hits[0, 0]]) / n_neg
    # The last ROC point has TPR 1, which reaches any allowed target, so fpr is set by the end of the scan.
    return {"auroc": twice_area / (2 * n_pos * n_neg), "average_precision": precision_sum / n_pos, "fpr_at_tpr": fpr}


def _check_tpr(tpr: float, strict: bool) -> None:
    if not (0.0 <= tpr < 1.0 if strict else 0.0 < tpr <= 1.0):
        allowed = "[0, 1) with strict=True" if strict else "(0, 1] with strict=False"
        raise ValueError(f"fpr_at_tpr: tpr must be in {allowed}, got {tpr}")


def aupro(
    anomaly_maps: ArrayLike,
    gt_masks: ArrayLike,
    fpr_limit: float = 0.3,
    num_thresholds: int | None = None,
    method: str = "exact",
) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to an FPR limit (MVTec AD / MVTec 3D-AD).

    ``method="exact"`` (default) is the curve described below; ``method="m3dm"`` is M3DM's ``au_pro_util``
    (``calculate_au_pro``, used by M3DM, LSFA and the papers that compare with them), see :func:`_aupro_m3dm`.

    Follows the official MVTec evaluation code (``generic_util.compute_pro`` + ``trapezoid``):

    - ground-truth regions are the 8-connected components of each image's mask (``scipy.ndimage.label`` with a
      3x3 structure of ones), counted over all images;
    - a threshold ``t`` marks every pixel with score ``>= t`` (the official code sorts scores descending and keeps
      the last point of each run of tied scores, which is exactly ``>=``);
    - PRO(t) = mean over all regions of all images of the fraction of the region's pixels marked;
    - FPR(t) = marked anomaly-free pixels / all anomaly-free pixels, pooled over all images;
    - the curve, starting at (0, 0), is integrated with the trapezoid rule up to ``fpr_limit``; when the limit falls
      between two points, the PRO there is interpolated linearly; the area is divided by ``fpr_limit`` (a perfect
      map scores 1.0; anomalib divides by the last FPR reached instead).

    Differences from the official code: FPRs are float64 (the official code casts them to float32, a ~1e-7
    effect), and PRO sums are clipped to 1 as there.

    Args:
        anomaly_maps: (N, H, W) or (H, W) scores, higher = more anomalous; upsample to the mask resolution first.
        gt_masks: binary masks (bool or 0/1) of the same shape; resize them with nearest neighbour.
        fpr_limit: integration limit in (0, 1]; 0.3 is the standard, some papers also report 0.01.
        num_thresholds: None for the exact curve over every distinct score; otherwise that many thresholds evenly
            spaced from the minimum to the maximum score (an approximation, ``score >= t`` as well; M3DM's
            ``au_pro_util``, which LSFA uses, instead takes 100 thresholds at evenly spaced ranks of the sorted
            anomaly-free scores: ``method="m3dm"``).
        method: ``"exact"`` or ``"m3dm"`` (``num_thresholds`` then defaults to M3DM's 100).

    Returns:
        AUPRO in [0, 1].

    Raises:
        ValueError: no anomalous pixel, no anomaly-free pixel, non-binary masks, shape mismatch, NaN scores, or an
            invalid ``fpr_limit`` / ``num_thresholds``.
    """
    maps = to_tensor(anomaly_maps, "anomaly_maps")
    masks = to_tensor(gt_masks, "gt_masks").to(maps.device)
    if maps.shape != masks.shape or maps.ndim not in (2, 3):
        raise ValueError(
            f"aupro: anomaly_maps and gt_masks must both be (N, H, W) or (H, W), got {tuple(maps.shape)} and "
            f"{tuple(masks.shape)}"
        )
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"aupro: fpr_limit must be in (0, 1], got {fpr_limit}")
    if method not in ("exact", "m3dm"):
        raise ValueError(f"aupro: method must be 'exact' or 'm3dm', got {method!r}")
    if num_thresholds is not None and num_thresholds < 2:
        raise ValueError(f"aupro: num_thresholds must be None or at least 2, got {num_thresholds}")
    if maps.is_floating_point() and torch.isnan(maps).any():
        raise ValueError("aupro: anomaly_maps contain NaN")
    if masks.dtype != torch.bool:
        if not ((masks == 0) | (masks == 1)).all():
            raise ValueError("aupro: gt_masks must be binary (bool or 0/1); binarise them first, e.g. mask > 0")
        masks = masks == 1
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None]

    regions, num_regions = ndimage.label(masks.cpu().numpy(), structure=_EIGHT_CONNECTED_PER_IMAGE)
    sizes = np.bincount(regions.reshape(-1), minlength=num_regions + 1)
    if num_regions == 0:
        raise ValueError("aupro: the ground-truth masks contain no anomalous pixel, so PRO is undefined")
    num_normal = int(sizes[0])
    if num_normal == 0:
        raise ValueError("aupro: the ground-truth masks contain no anomaly-free pixel, so the FPR is undefined")
    region_weights = torch.from_numpy(np.concatenate([[0.0], 1.0 / sizes[1:]])).to(maps.device)
    region_ids = torch.from_numpy(regions).to(maps.device).reshape(-1)
    scores = maps.reshape(-1)
    if method == "m3dm":
        return _aupro_m3dm(scores, region_ids, region_weights, num_regions, fpr_limit, num_thresholds or 100)

    def increments(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Anomaly-free pixels count towards the FPR; a pixel of region r adds 1 / |r| to the sum of overlaps.
        return torch.eq(ids, 0, out=torch.empty_like(ids)), torch.index_select(region_weights, 0, ids)

    if num_thresholds is None:
        payload_bits = num_regions.bit_length()
        keys, _ = _sort_descending(scores, region_ids, payload_bits)
        # The curve is needed up to its first point beyond the limit: the end of the tie run holding the K-th
        # anomaly-free pixel, K = floor(limit * #anomaly-free) + 1, at most K - 1 + #anomalous entries in (+ 1 spare).
        needed = min(keys.numel(), math.floor(fpr_limit * num_normal) + 2 + keys.numel() - num_normal)
        next_code = (keys[needed - 1 : needed] >> payload_bits) + 1
        keys = keys[: int(torch.searchsorted(keys, next_code << payload_bits))]
        totals = ((fp_counts, overlap_sums) for _, fp_counts, overlap_sums in _tie_runs(keys, payload_bits, increments))
    else:
        grid = torch.linspace(
            float(scores.min()), float(scores.max()), num_thresholds, dtype=torch.float64, device=scores.device
        )
        # Index of the highest grid threshold <= score: the pixel is marked at that threshold and all lower ones.
        bins = torch.searchsorted(grid, scores.double(), right=True) - 1
        totals = [
            tuple(
                torch.bincount(bins, weights=inc.double(), minlength=num_thresholds).flip(0).cumsum(0)
                for inc in increments(region_ids)
            )
        ]
    curve = (
        (_ratio(fp_counts, num_normal), (overlap_sums / num_regions).clamp_(max=1.0))
        for fp_counts, overlap_sums in totals
    )
    return _area_up_to(curve, fpr_limit) / fpr_limit


def _aupro_m3dm(
    scores: torch.Tensor,
    region_ids: torch.Tensor,
    region_weights: torch.Tensor,
    num_regions: int,
    fpr_limit: float,
    num_thresholds: int,
) -> float:
    """M3DM's ``compute_pro`` + ``trapezoid`` (``utils/au_pro_util.py``), vectorised.

    - The anomaly-free scores are sorted ascending (n of them); the thresholds are the scores at the ranks
      ``np.linspace(0, n - 1, num_thresholds, dtype=int)`` (truncated to integers).
    - At the threshold of rank ``pos``: FPR = 1 - (pos + 1) / n (the rank, not the count of scores above it, so
      ties are not merged) and PRO = mean over all regions of the fraction of the region's pixels with score
      ``> t`` (strictly).
    - The point (1, 1) is added, the curve taken in increasing FPR (it starts at the highest threshold's FPR, 0,
      not at the origin) and integrated with the trapezoid rule up to ``fpr_limit``, with a linearly interpolated
      end point when the limit is not on the curve; divided by ``fpr_limit``.
    """
    normal = region_ids == 0
    ok_sorted = torch.sort(scores[normal].double()).values
    n = ok_sorted.numel()
    positions = np.linspace(0, n - 1, num=num_thresholds, dtype=int)
    thresholds = ok_sorted[torch.from_numpy(positions).to(scores.device)]
    # A region pixel counts for every threshold strictly below its score: the thresholds are non-decreasing, so
    # those are the first ``searchsorted(thresholds, score, side="left")`` of them.
    anomalous = ~normal
    above = torch.searchsorted(thresholds, scores[anomalous].double().contiguous(), right=False)
    weights = torch.index_select(region_weights, 0, region_ids[anomalous])
    per_count = torch.bincount(above, weights=weights, minlength=num_thresholds + 1)
    # PRO at threshold k = sum of the weights of pixels whose count exceeds k
    pro = per_count.flip(0).cumsum(0).flip(0)[1:] / num_regions
    fpr = 1.0 - (positions + 1) / n
    x = np.concatenate([fpr[::-1], [1.0]])
    y = np.concatenate([pro.cpu().numpy()[::-1], [1.0]])
    correction = 0.0
    if fpr_limit not in x:
        ins = bisect.bisect(x.tolist(), fpr_limit)
        y_limit = y[ins - 1] + (y[ins] - y[ins - 1]) * (fpr_limit - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_limit + y[ins - 1]) * (fpr_limit - x[ins - 1])
    keep = x <= fpr_limit
    x, y = x[keep], y[keep]
    return float((np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction) / fpr_limit)


def _area_up_to(curve: Iterable[tuple[torch.Tensor, torch.Tensor]], limit: float) -> float:
    """Trapezoidal area under a curve from (0, 0) up to x = ``limit``, as the official MVTec ``trapezoid``.

    When ``limit`` falls between two points, the curve is closed with a linearly interpolated point at ``limit``.
    The curve comes in chunks of (x, y) points following the origin, x non-decreasing and ending at or beyond
    ``limit``; chunks past the limit are never consumed.
    """
    area = 0.0
    previous = None
    for x, y in curve:
        if previous is None:
            previous = x.new_zeros(1), y.new_zeros(1)
        x, y = torch.cat([previous[0], x]), torch.cat([previous[1], y])
        inside = int(torch.searchsorted(x, x.new_tensor([limit]), right=True))
        area += float(torch.trapezoid(y[:inside], x[:inside]))
        if inside < x.numel():  # this chunk passes the limit
            x_last, y_last, x_next, y_next = (float(v) for v in (x[inside - 1], y[inside - 1], x[inside], y[inside]))
            if x_last < limit:
                y_limit = y_last + (y_next - y_last) * (limit - x_last) / (x_next - x_last)
                area += 0.5 * (y_limit + y_last) * (limit - x_last)
            return area
        previous = x[-1:], y[-1:]
    return area
