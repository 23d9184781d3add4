"""Ranking metrics against scikit-learn, AUPRO against a brute-force MVTec reference, scale and GPU checks."""

import bisect
import json
import resource
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn import metrics as skm

from shared.metrics import anomaly
from shared.testing import run_module

aupro, auroc, average_precision = anomaly.aupro, anomaly.auroc, anomaly.average_precision
fpr_at_tpr, precision_recall_curve, ranking_metrics, roc_curve = (
    anomaly.fpr_at_tpr,
    anomaly.precision_recall_curve,
    anomaly.ranking_metrics,
    anomaly.roc_curve,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_scores(seed: int, n: int = 4000, ties: bool = False, positive_rate: float = 0.3):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < positive_rate
    scores = rng.normal(size=n) + 1.2 * labels
    if ties:
        scores = np.round(scores, 1)
    return scores, labels


def sklearn_fpr_at_tpr(scores, labels, tpr, strict):
    """Walk scikit-learn's full ROC curve to the first point with TPR >= tpr (> tpr when strict)."""
    fpr_curve, tpr_curve, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    reached = tpr_curve > tpr if strict else tpr_curve >= tpr
    return fpr_curve[np.argmax(reached)]


@pytest.fixture
def small_chunks(monkeypatch):
    """Scan in chunks of 7 entries so tie runs cross chunk boundaries."""
    monkeypatch.setattr(anomaly, "_CHUNK", 7)


@pytest.mark.parametrize(
    ("dtype", "ties", "chunked"),
    [
        (dtype, ties, False)
        for dtype in (np.float64, np.float32, np.float16, np.int64, np.int16)
        for ties in (False, True)
    ]
    + [(np.float32, True, True), (np.float64, True, True)],
)
def test_ranking_metrics_match_sklearn(request, dtype, ties, chunked):
    if chunked:
        request.getfixturevalue("small_chunks")
    scores, labels = make_scores(seed=int(ties), n=300 if chunked else 2000, ties=ties)
    scores = (scores * 10 if np.issubdtype(dtype, np.integer) else scores).astype(dtype)
    assert auroc(scores, labels) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(skm.average_precision_score(labels, scores), abs=1e-12)
    for tpr in (0.3, 0.9, 0.95, 1.0):
        assert fpr_at_tpr(scores, labels, tpr=tpr) == sklearn_fpr_at_tpr(scores, labels, tpr, strict=False)
    for tpr in (0.0, 0.5, 0.95):
        assert fpr_at_tpr(scores, labels, tpr=tpr, strict=True) == sklearn_fpr_at_tpr(scores, labels, tpr, True)
    for strict in (False, True):
        together = ranking_metrics(scores, labels, tpr=0.95, strict=strict)
        assert together == {
            "auroc": auroc(scores, labels),
            "average_precision": average_precision(scores, labels),
            "fpr_at_tpr": fpr_at_tpr(scores, labels, tpr=0.95, strict=strict),
        }

    fpr, tpr, thresholds = roc_curve(scores, labels)
    ref_fpr, ref_tpr, ref_thresholds = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_array_equal(fpr.numpy(), ref_fpr)
    np.testing.assert_array_equal(tpr.numpy(), ref_tpr)
    np.testing.assert_array_equal(thresholds.numpy(), ref_thresholds)
    precision, recall, thresholds = precision_recall_curve(scores, labels)
    ref_precision, ref_recall, ref_thresholds = skm.precision_recall_curve(labels, scores)
    np.testing.assert_allclose(precision.numpy(), ref_precision, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(recall.numpy(), ref_recall)
    np.testing.assert_array_equal(thresholds.numpy(), ref_thresholds)


def test_auroc_counts_ties_as_half():
    # Positives {1, 1}, negatives {1, 0}: two wins and two ties out of four pairs -> (2 + 2 * 0.5) / 4.
    # (Ties counted as losses would give 0.5, as wins 1.0.)
    scores = np.array([1.0, 1.0, 0.0, 1.0])
    labels = np.array([1, 0, 0, 1])
    assert auroc(scores, labels) == 0.75 == skm.roc_auc_score(labels, scores)


def test_torch_inputs_and_label_types_agree_with_numpy():
    scores, labels = make_scores(seed=3, ties=True)
    expected = (auroc(scores, labels), average_precision(scores, labels), fpr_at_tpr(scores, labels))
    variants = [
        (torch.from_numpy(scores), torch.from_numpy(labels)),
        (torch.from_numpy(scores).float(), torch.from_numpy(labels).long()),
        (scores.reshape(40, 100), labels.astype(np.float32).reshape(40, 100)),
        (torch.from_numpy(scores).requires_grad_(), torch.from_numpy(labels).to(torch.uint8)),
    ]
    for s, y in variants:
        got = (auroc(s, y), average_precision(s, y), fpr_at_tpr(s, y))
        assert got == pytest.approx(expected, abs=1e-12)


def test_float32_fast_path_equals_float64_argsort_path():
    # float32 -> float64 is exact, so the packed-bit path and the argsort path must agree to the last bit.
    rng = np.random.default_rng(5)
    scores = np.concatenate([rng.normal(size=3000), [0.0, -0.0, np.inf, -np.inf, 1e-40, -1e-40]]).astype(np.float32)
    scores[::7] = np.round(scores[::7], 2)
    labels = rng.random(scores.size) < 0.4
    for metric in (auroc, average_precision, fpr_at_tpr):
        assert metric(scores, labels) == metric(scores.astype(np.float64), labels)
    for curve in (roc_curve, precision_recall_curve):
        for a, b in zip(curve(scores, labels), curve(scores.astype(np.float64), labels)):
            assert torch.equal(a, b)


def test_signed_zeros_and_infinities_tie_correctly():
    # Positives {0, -0, inf}, negatives {-0, 0, -inf}: inf wins 3 pairs, each zero wins 1 and ties 2 -> 7 / 9.
    scores = np.array([0.0, -0.0, 0.0, -0.0, np.inf, -np.inf], dtype=np.float32)
    labels = np.array([1, 0, 0, 1, 1, 0])
    assert auroc(scores, labels) == pytest.approx(7 / 9)
    _, _, thresholds = roc_curve(scores, labels)
    assert thresholds.tolist() == [np.inf, np.inf, 0.0, -np.inf]
    assert not torch.signbit(thresholds[2])


def test_ignore_index_drops_void_entries():
    scores, labels = make_scores(seed=7, ties=True)
    labels = labels.astype(np.uint8)
    void = np.random.default_rng(7).random(scores.size) < 0.2
    with_void = np.where(void, 255, labels)
    keep = ~void
    assert auroc(scores, with_void, ignore_index=255) == pytest.approx(
        skm.roc_auc_score(labels[keep], scores[keep]), abs=1e-12
    )
    assert average_precision(scores, with_void, ignore_index=255) == pytest.approx(
        skm.average_precision_score(labels[keep], scores[keep]), abs=1e-12
    )
    assert fpr_at_tpr(scores, with_void, ignore_index=255) == sklearn_fpr_at_tpr(
        scores[keep], labels[keep], 0.95, False
    )
    with pytest.raises(ValueError, match="found 255.*ignore_index"):
        auroc(scores, with_void)


def test_hand_made_roc_fpr95_strict_and_not_strict():
    # Descending scores: 10 positives, 2 negatives, 9 positives, 3 negatives, 1 positive, 4 negatives (P=20, N=9).
    # ROC points: (0, .5) (2/9, .5) (2/9, .95) (5/9, .95) (5/9, 1) (1, 1); TPR 0.95 = 19/20 is reached exactly.
    labels = np.array([1] * 10 + [0] * 2 + [1] * 9 + [0] * 3 + [1] + [0] * 4)
    scores = np.arange(labels.size, 0, -1, dtype=np.float64)
    assert fpr_at_tpr(scores, labels, 0.95) == pytest.approx(2 / 9)
    assert fpr_at_tpr(scores, labels, 0.95, strict=True) == pytest.approx(5 / 9)
    assert fpr_at_tpr(scores, labels, 0.5) == 0.0
    assert fpr_at_tpr(scores, labels, 0.5, strict=True) == pytest.approx(2 / 9)
    assert fpr_at_tpr(scores, labels, 1.0) == pytest.approx(5 / 9)
    # Tying the 9 positives with the 3 negatives that follow merges the two points at TPR 0.95 into (5/9, .95).
    tied = scores.copy()
    tied[12:24] = tied[12]
    assert fpr_at_tpr(tied, labels, 0.95) == pytest.approx(5 / 9)
    assert ranking_metrics(scores, labels, 0.95, strict=True)["fpr_at_tpr"] == pytest.approx(5 / 9)


def test_ranking_metrics_fpr_found_in_a_later_chunk(small_chunks):
    # With 7-entry chunks the TPR target is first reached several chunks into the scan; the chunks before it must
    # still count towards AUROC and AP.
    scores, labels = make_scores(seed=5, n=120, ties=True)
    together = ranking_metrics(scores, labels, tpr=0.95)
    assert together["fpr_at_tpr"] == sklearn_fpr_at_tpr(scores, labels, 0.95, strict=False)
    assert together["auroc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert together["average_precision"] == pytest.approx(skm.average_precision_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize(
    "metric", [auroc, average_precision, fpr_at_tpr, ranking_metrics, roc_curve, precision_recall_curve]
)
def test_invalid_ranking_inputs_raise(metric):
    with pytest.raises(ValueError, match="both classes.*0 positive"):
        metric(np.arange(5.0), np.zeros(5))
    with pytest.raises(ValueError, match="both classes.*0 negative"):
        metric(np.arange(5.0), np.ones(5, dtype=bool))
    with pytest.raises(ValueError, match="both classes"):
        metric(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="after dropping ignore_index=255"):
        metric(np.arange(3.0), np.array([1, 255, 1]), ignore_index=255)
    with pytest.raises(ValueError, match="NaN"):
        metric(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels must be 0 .* or 1"):
        metric(np.arange(3.0), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="3 entries but labels has 2"):
        metric(np.arange(3.0), np.array([0, 1]))


def test_fpr_at_tpr_rejects_unreachable_targets():
    scores, labels = np.arange(4.0), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="tpr must be in"):
        fpr_at_tpr(scores, labels, tpr=1.0, strict=True)
    with pytest.raises(ValueError, match="tpr must be in"):
        fpr_at_tpr(scores, labels, tpr=0.0)
    with pytest.raises(ValueError, match="tpr must be in"):
        ranking_metrics(scores, labels, tpr=1.0, strict=True)


# ----------------------------------------------------------------------------------------------------------------
# AUPRO


def reference_pro_curve(maps, masks, thresholds=None):
    """Brute force: per-image 8-connected regions, FPR and per-region overlaps counted directly at each threshold."""
    regions = [
        (i, labeled == r)
        for i, mask in enumerate(masks)
        for labeled, count in [ndimage.label(mask, structure=np.ones((3, 3)))]
        for r in range(1, count + 1)
    ]
    normal = masks == 0
    fprs, pros = [0.0], [0.0]
    for t in sorted(np.unique(maps) if thresholds is None else thresholds, reverse=True):
        marked = maps >= t
        fprs.append(marked[normal].sum() / normal.sum())
        pros.append(np.mean([marked[i][region].mean() for i, region in regions]))
    return np.array(fprs), np.array(pros)


def official_trapezoid(x, y, x_max):
    """The MVTec evaluation code's trapezoid(x, y, x_max): cut at x_max, interpolating y there, then / x_max."""
    correction = 0.0
    if x_max not in x:
        ins = bisect.bisect(x, x_max)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return (np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction) / x_max


def aupro_reference(maps, masks, fpr_limit, thresholds=None):
    return official_trapezoid(*reference_pro_curve(maps, masks, thresholds), fpr_limit)


def make_maps(seed, n=3, size=20, ties=False, dtype=np.float64):
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 2, 2))
    masks = noise > 1.2 * noise.std()
    maps = noise + rng.normal(scale=0.8 * noise.std(), size=noise.shape)
    if ties:
        maps = np.round(maps / maps.std(), 1)
    return maps.astype(dtype), masks


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ties", [False, True])
def test_aupro_matches_brute_force(dtype, ties):
    maps, masks = make_maps(seed=11 + int(ties), ties=ties, dtype=dtype)
    assert ndimage.label(masks[0], structure=np.ones((3, 3)))[1] >= 2  # several regions per image
    fprs, pros = reference_pro_curve(maps, masks)
    for fpr_limit in (0.3, 0.05, fprs[fprs > 0.1][0], 1.0):  # the third lies on a curve point: no interpolation
        expected = official_trapezoid(fprs, pros, fpr_limit)
        assert aupro(maps, masks, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-9)
        assert aupro(torch.from_numpy(maps), torch.from_numpy(masks).float(), fpr_limit) == pytest.approx(
            expected, abs=1e-9
        )


def test_aupro_chunked_scan_matches_brute_force(small_chunks):
    maps, masks = make_maps(seed=21, ties=True, dtype=np.float32)
    assert aupro(maps, masks, 0.3) == pytest.approx(aupro_reference(maps, masks, 0.3), abs=1e-9)


def test_aupro_hand_made():
    # One 2x3 image: a 2-pixel region scored 0.9 and 0.5; normal pixels scored 0.8, 0.3, 0.2, 0.1.
    # Curve: (0,0) (0,.5) (.25,.5) (.25,1) (.5,1) (.75,1) (1,1).
    maps = np.array([[0.9, 0.5, 0.8], [0.3, 0.2, 0.1]])
    masks = np.array([[1, 1, 0], [0, 0, 0]])
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx((0.25 * 0.5 + 0.05 * 1.0) / 0.3)
    assert aupro(maps, masks, fpr_limit=0.25) == pytest.approx(0.5)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.875)
    assert aupro(maps, masks, fpr_limit=0.1) == pytest.approx(0.5)
    # Perfect separation gives 1.0.
    assert aupro(masks * 2.0 + 1.0, masks) == pytest.approx(1.0)


def test_aupro_uses_eight_connectivity_and_averages_over_regions():
    # Image 0: two diagonal pixels, ONE 8-connected region (two 4-connected ones). Image 1: a 2x2 region.
    masks = np.zeros((2, 6, 6), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True
    masks[1, 3:5, 3:5] = True
    maps = np.zeros((2, 6, 6))
    maps[0, 0, 0] = 1.0
    # Curve (0, 0) -> (0, mean(1/2, 0/4) = 0.25) -> (1, 1); PRO at FPR 0.3 is 0.25 + 0.75 * 0.3 = 0.475.
    # (With 4-connectivity the first PRO would be mean(1, 0, 0) = 1/3 and the result 0.4333.)
    expected = 0.5 * (0.25 + 0.475) * 0.3 / 0.3
    assert aupro(maps, masks, 0.3) == pytest.approx(expected)
    assert aupro_reference(maps, masks, 0.3) == pytest.approx(expected)


def test_aupro_binned_thresholds():
    # On a grid that contains every score, evenly spaced thresholds give the exact curve.
    rng = np.random.default_rng(4)
    _, masks = make_maps(seed=4)
    maps = rng.integers(0, 11, size=masks.shape).astype(np.float64) + 3 * masks
    assert aupro(maps, masks, num_thresholds=14) == pytest.approx(aupro(maps, masks), abs=1e-12)
    # Otherwise it approximates the exact value, and equals the brute force on the same thresholds.
    maps, masks = make_maps(seed=5)
    grid = np.linspace(maps.min(), maps.max(), 50)
    assert aupro(maps, masks, num_thresholds=50) == pytest.approx(aupro_reference(maps, masks, 0.3, grid), abs=1e-9)
    assert aupro(maps, masks, num_thresholds=2000) == pytest.approx(aupro(maps, masks), abs=2e-3)


def m3dm_pro_curve(maps, masks, num_thresholds=100):
    """Brute-force port of M3DM's ``compute_pro``: every anomaly-free score sorted ascending; thresholds at the ranks
    ``np.linspace(0, n - 1, num_thresholds, dtype=int)``; FPR = 1 - (rank + 1) / n; PRO = mean over all 8-connected
    regions of the fraction of pixels with score > t; (1, 1) added; increasing FPR."""
    components, ok = [], []
    for prediction, mask in zip(maps, masks):
        labeled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        ok.extend(prediction[labeled == 0].tolist())
        components += [prediction[labeled == k + 1] for k in range(count)]
    ok = sorted(ok)
    fprs, pros = [1.0], [1.0]
    for pos in np.linspace(0, len(ok) - 1, num=num_thresholds, dtype=int):
        t = ok[pos]
        fprs.append(1.0 - (pos + 1) / len(ok))
        pros.append(sum(sum(1 for v in comp if v > t) / len(comp) for comp in components) / len(components))
    return fprs[::-1], pros[::-1]


@pytest.mark.parametrize(
    "seed, ties, num_thresholds, limit",
    [(0, False, 100, 0.3), (1, True, 100, 0.3), (2, False, 37, 0.3), (3, True, 100, 0.05), (4, False, 100, 1.0)],
)
def test_aupro_m3dm_matches_its_brute_force_port(seed, ties, num_thresholds, limit):
    maps, masks = make_maps(seed, ties=ties)
    fprs, pros = m3dm_pro_curve(maps, masks, num_thresholds)
    expected = official_trapezoid(np.array(fprs), np.array(pros), limit)
    kwargs = {} if num_thresholds == 100 else {"num_thresholds": num_thresholds}
    got = aupro(maps, masks, fpr_limit=limit, method="m3dm", **kwargs)
    assert got == pytest.approx(expected, abs=1e-12)
    assert abs(got - aupro(maps, masks, fpr_limit=limit)) < 0.05  # the two definitions are close, not equal


def test_aupro_m3dm_differs_from_the_exact_curve_on_ties():
    # rank-based FPRs: 10 tied anomaly-free scores are 10 curve points for M3DM, one for the exact curve
    maps = np.zeros((1, 4, 5))
    masks = np.zeros((1, 4, 5), bool)
    masks[0, 0, :2] = True
    maps[0, 0, :2] = [1.0, 0.0]
    fprs, pros = m3dm_pro_curve(maps, masks, 100)
    assert aupro(maps, masks, 0.3, method="m3dm") == pytest.approx(
        official_trapezoid(np.array(fprs), np.array(pros), 0.3)
    )
    assert aupro(maps, masks, 0.3, method="m3dm") != pytest.approx(aupro(maps, masks, 0.3))
    with pytest.raises(ValueError, match="method"):
        aupro(maps, masks, method="mvtec")


def test_aupro_invalid_inputs():
    maps, masks = make_maps(seed=1)
    with pytest.raises(ValueError, match="no anomalous pixel"):
        aupro(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match="no anomaly-free pixel"):
        aupro(maps, np.ones_like(masks))
    with pytest.raises(ValueError, match="binary"):
        aupro(maps, masks * 255)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        aupro(maps, masks[0])
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, masks, fpr_limit=0.0)
    with pytest.raises(ValueError, match="num_thresholds"):
        aupro(maps, masks, num_thresholds=1)
    with pytest.raises(ValueError, match="NaN"):
        aupro(np.where(masks, np.nan, maps), masks)
    assert aupro(maps[0], masks[0]) == pytest.approx(aupro(maps[:1], masks[:1]))  # (H, W) accepted


def speed_maps(seed: int = 0):
    """100 float32 maps of 224x224 with ~1 % anomalous pixels in ~1000 blobs, MVTec-like."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal((100, 224, 224), dtype=np.float32), sigma=(0, 4, 4))
    masks = noise > 2.5 * noise.std()
    maps = noise + rng.standard_normal(noise.shape, dtype=np.float32) * (0.5 * noise.std())
    return torch.from_numpy(maps), torch.from_numpy(masks)


@pytest.mark.slow
def test_aupro_speed_100_maps_224():
    maps, masks = speed_maps()
    aupro(maps, masks)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        aupro(maps, masks)
        times.append(time.perf_counter() - start)
    assert np.median(times) < 1.0, times


# ----------------------------------------------------------------------------------------------------------------
# Scale and GPU


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["auroc", "average_precision", "fpr_at_tpr", "ranking_metrics"])
def test_1e8_scores_time_and_memory(metric):
    # A fresh process builds 10^8 float32 scores (normal, shifted by the label; about half of them distinct) and bool
    # labels, 0.5 GB, and times one metric. The all-distinct worst case is measured by shared.bench_metrics.
    out = run_module("shared.bench_metrics", ["--worker", metric, "--n", "100000000", "--scores", "randn"], timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    peak_children_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    assert result["seconds"] < 30, result
    assert result["peak_rss_gib"] < 4 and peak_children_gib < 4, (result, peak_children_gib)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    scores, labels = make_scores(seed=9, n=200_000, ties=True)
    for dtype in (torch.float32, torch.float64):
        s, y = torch.from_numpy(scores).to(dtype), torch.from_numpy(labels)
        for metric in (auroc, average_precision, fpr_at_tpr):
            assert metric(s.cuda(), y.cuda()) == pytest.approx(metric(s, y), abs=1e-12)
        for a, b in zip(roc_curve(s.cuda(), y.cuda()), roc_curve(s, y)):
            assert a.is_cuda and torch.equal(a.cpu(), b)
    maps, masks = make_maps(seed=2, n=8, size=64, dtype=np.float32)
    maps, masks = torch.from_numpy(maps), torch.from_numpy(masks)
    assert aupro(maps.cuda(), masks.cuda()) == pytest.approx(aupro(maps, masks), abs=1e-12)
    assert aupro(maps.cuda(), masks.cuda(), num_thresholds=100) == pytest.approx(
        aupro(maps, masks, num_thresholds=100), abs=1e-12
    )
