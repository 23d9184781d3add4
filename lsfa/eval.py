"""Score LSFA (adapted features) and the M3DM-style baseline (frozen features) with per-class memory banks.

    python eval.py --checkpoint runs/lsfa/default/<time>/last.pt [--output_dir DIR] [-c configs/NAME.yaml] [--k v]

Settings come from the checkpoint's config, then ``-c`` (which replaces it), then the command line. Per class: banks
from the training images, late fusion (two SGD one-class SVMs), I-AUROC / P-AUROC / AUPRO@0.3 through
``shared.metrics``. Prints a README-style table; writes ``metrics.json``, ``overlays/<method>_<class>.png`` and
``roc_<method>.png`` into ``--output_dir`` (default ``<checkpoint folder>/eval``).

Methods (``eval.methods``): ``lsfa`` (adapted features, two banks), ``m3dm`` (frozen features, xyz + rgb banks) and
``m3dm_triple`` (M3DM's full method: + the UFF fusion bank; needs ``backbone.uff_checkpoint``, the UFF saved in the
run's checkpoint, or ``uff.train: true``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from lsfa.config import TrainConfig
from lsfa.data import MVTec3DDataset, resolve_classes
from lsfa.model import FeatureExtractor, LSFAAdaptors, UnsupervisedFeatureFusion
from lsfa.pipeline import build_extractor, build_uff, load_adaptors, resolve_root
from lsfa.scoring import ScoringSettings, SplitFeatures, class_metrics, extract_features, score_class
from shared.entrypoints import Evaluation, checkpoint_parser
from shared.logger import RunLogger
from shared.training import resolve_device

__all__ = [
    "METHODS",
    "evaluate",
    "evaluate_classes",
    "format_table",
    "main",
    "parse_args",
    "score_run",
]

PACKAGE = "lsfa"


METHODS = {"lsfa": "LSFA", "m3dm": "M3DM (no adaptors)", "m3dm_triple": "M3DM + fusion bank"}
METRICS = ("i_auroc", "p_auroc", "aupro", "aupro_exact", "aupro_m3dm")
TABLE_METRICS = ("i_auroc", "p_auroc", "aupro")


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def format_table(metrics: dict[str, float], classes: list[str], methods: list[str]) -> str:
    """Per-class rows x (method, metric) columns, as in the README."""
    short = {"lsfa": "LSFA", "m3dm": "M3DM", "m3dm_triple": "M3DM+F"}
    header = f"{'class':<12}" + "".join(
        f"{short[m] + ' ' + k:>17}" for m in methods for k in ("I-AUROC", "P-AUROC", "AUPRO@0.3")
    )
    lines = [header]
    for c in [*classes, "mean"]:
        row = f"{c:<12}"
        for m in methods:
            for k in TABLE_METRICS:
                row += f"{metrics.get(f'{m}/{c}/{k}' if c != 'mean' else f'{m}_{k}_mean', float('nan')):>17.3f}"
        lines.append(row)
    return "\n".join(lines)


def evaluate_classes(
    extractor: FeatureExtractor,
    adaptors: LSFAAdaptors | None,
    root: str | Path,
    classes: list[str],
    scoring: ScoringSettings,
    methods: list[str],
    device: torch.device,
    batch_size: int = 8,
    image_size: int = 224,
    max_train_samples: int | None = None,
    train_cache: dict[str, SplitFeatures] | None = None,
    output_dir: Path | None = None,
    logger: RunLogger | None = None,
    vis_images: int = 4,
    uff: UnsupervisedFeatureFusion | None = None,
    rgb_resize: str = "pil",
    aupro_method: str = "exact",
    mask_resize: str = "pil",
) -> dict[str, float]:
    """Score every class with every method; returns flat metrics (``<method>/<class>/<metric>`` and means)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"evaluate_classes: unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    if "lsfa" in methods and adaptors is None:
        raise ValueError("evaluate_classes: method 'lsfa' needs trained adaptors")
    if "m3dm_triple" in methods and uff is None:
        raise ValueError("evaluate_classes: method 'm3dm_triple' needs a UFF module (lsfa.uff)")
    say = logger.info if logger is not None else print
    metrics: dict[str, float] = {}
    curves: dict[str, list] = {m: [] for m in methods}
    extractor.eval()
    if adaptors is not None:
        adaptors.eval()
    for c in classes:
        t0 = time.perf_counter()
        train = (train_cache or {}).get(c) or extract_features(
            extractor,
            MVTec3DDataset(
                root, c, "train", image_size=image_size, max_samples=max_train_samples, rgb_resize=rgb_resize
            ),
            batch_size,
            device,
        )
        test_set = MVTec3DDataset(
            root, c, "test", image_size=image_size, rgb_resize=rgb_resize, mask_resize=mask_resize
        )
        test = extract_features(extractor, test_set, batch_size, device)
        for m in methods:
            out = score_class(
                train, test, adaptors if m == "lsfa" else None, scoring, device, uff if m == "m3dm_triple" else None
            )
            for k, v in class_metrics(out["image"], out["map"], test.labels, test.masks, aupro_method).items():
                metrics[f"{m}/{c}/{k}"] = v
            curves[m].append((c, out["image"], test.labels))
            if output_dir is not None and vis_images > 0:
                from lsfa.visualization import save_overlays

                save_overlays(test_set, out["map"], test.masks, output_dir / "overlays" / f"{m}_{c}.png", vis_images)
        say(
            f"{c}: "
            + "  ".join(
                f"{METHODS[m]} I-AUROC {metrics[f'{m}/{c}/i_auroc']:.3f} AUPRO {metrics[f'{m}/{c}/aupro']:.3f}"
                for m in methods
            )
            + f"  ({time.perf_counter() - t0:.0f} s)"
        )
    for m in methods:
        for k in METRICS:
            metrics[f"{m}_{k}_mean"] = _mean([metrics[f"{m}/{c}/{k}"] for c in classes])
    if output_dir is not None:
        from lsfa.visualization import plot_roc

        for m in methods:
            plot_roc(curves[m], output_dir / f"roc_{m}.png", METHODS[m])
    say(f"\nAUPRO@0.3 in the table: {aupro_method} (metrics.json has aupro_exact and aupro_m3dm)")
    say(format_table(metrics, classes, methods))
    return metrics


def score_run(
    cfg: TrainConfig,
    extractor: FeatureExtractor,
    adaptors: LSFAAdaptors | None,
    root: Path,
    classes: list[str],
    device: torch.device,
    out: Path,
    logger: RunLogger,
    uff: UnsupervisedFeatureFusion | None = None,
    train_cache: dict[str, SplitFeatures] | None = None,
) -> dict[str, float]:
    """:func:`evaluate_classes` with the scoring, data and eval settings of a run's config (``train.py`` after the
    last epoch, ``eval.py`` on a checkpoint); overlays and ROC plots go to ``out``."""
    return evaluate_classes(
        extractor,
        adaptors,
        root,
        classes,
        cfg.scoring,
        cfg.eval.methods,
        device,
        batch_size=cfg.data.batch_size,
        image_size=cfg.data.image_size,
        max_train_samples=cfg.data.max_train_samples,
        train_cache=train_cache,
        output_dir=out,
        logger=logger,
        vis_images=cfg.eval.vis_images,
        uff=uff,
        rgb_resize=cfg.data.rgb_resize,
        aupro_method=cfg.eval.aupro,
        mask_resize=cfg.data.mask_resize,
    )


def evaluate(ev: Evaluation, device: torch.device, logger: RunLogger) -> dict[str, float]:
    """Rebuild the extractor, the adaptors and (for ``m3dm_triple``) the UFF of a checkpoint and score every class."""
    cfg, state, out = ev.config, ev.state, ev.output_dir
    extractor = build_extractor(cfg, state.get("backbones"), logger).to(device)
    adaptors = load_adaptors(cfg, extractor, state["adaptors"], str(ev.checkpoint)).to(device)
    root = resolve_root(cfg)
    classes = resolve_classes(root, cfg.data.classes)
    uff = (
        build_uff(cfg, extractor, root, classes, device, logger=logger, saved=state.get("uff"), out_dir=out)
        if "m3dm_triple" in cfg.eval.methods
        else None
    )
    return score_run(cfg, extractor, adaptors, root, classes, device, out, logger, uff=uff)


# The config stored in ``--checkpoint`` (in today's keys: ``TrainConfig.upgrade_stored``), then ``-c`` and
# ``--key value`` overrides; metrics go to ``--output_dir`` (default ``<checkpoint folder>/eval``).
parse_args = checkpoint_parser(
    TrainConfig,
    __doc__,
    PACKAGE,
    required=("config", "adaptors"),
    checkpoint_help="last.pt of a train.py run",
)


def main(ev: Evaluation) -> dict[str, float]:
    """Score the checkpoint ``ev.checkpoint``; writes and returns the metrics."""
    cfg = ev.config
    logger = RunLogger(ev.output_dir, tensorboard=False, name="eval")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    metrics = evaluate(ev, device, logger)
    logger.write_metrics(metrics)
    logger.info(f"wrote {ev.output_dir / 'metrics.json'}")
    logger.close()
    return metrics


if __name__ == "__main__":
    main(parse_args())
