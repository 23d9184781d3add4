"""Builders shared by ``train.py`` and ``eval.py``: the dataset root, the frozen feature extractor, the LSFA
adaptors and M3DM's UFF module, each from a :class:`lsfa.config.TrainConfig` (README, Recipes)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset

from lsfa.config import TrainConfig
from lsfa.data import MVTec3DDataset
from lsfa.model import (
    BUILTIN_PRETRAINED_RGB,
    FeatureExtractor,
    LSFAAdaptors,
    UnsupervisedFeatureFusion,
    create_model,
    create_point_encoder,
    create_rgb_backbone,
    load_state_dict_strict,
)
from lsfa.preprocess import check_preprocessed
from lsfa.scoring import SplitFeatures
from lsfa.synthetic import SYNTHETIC_CLASSES, ensure_synthetic_mvtec3d
from lsfa.uff import load_uff_checkpoint, save_uff_checkpoint, train_uff, uff_token_pairs
from shared.logger import RunLogger

__all__ = ["build_adaptors", "build_extractor", "build_uff", "check_uff_source", "load_adaptors", "resolve_root"]

_NO_UFF = (
    "method m3dm_triple needs UFF weights: set backbone.uff_checkpoint (M3DM's uff_pretrained.pth) or pass "
    "--uff.train to pre-train one on the training images of all classes"
)


def resolve_root(cfg: TrainConfig) -> Path:
    """The dataset root: the cached synthetic tree (written if absent) or ``data.root``."""
    if cfg.data.dataset == "synthetic":
        s = cfg.synthetic
        return ensure_synthetic_mvtec3d(
            None,
            preprocess=True,
            classes=list(cfg.data.classes or SYNTHETIC_CLASSES),
            num_train=s.num_train,
            num_test_good=s.num_test_good,
            num_test_per_defect=s.num_test_per_defect,
            size=s.size,
            seed=s.seed,
        )
    if cfg.data.dataset not in ("mvtec3d", "eyecandies"):
        raise ValueError(f"data.dataset must be synthetic, mvtec3d or eyecandies, got {cfg.data.dataset!r}")
    if not cfg.data.root:
        raise FileNotFoundError(
            f"data.root is not set: pass --data.root DIR, the preprocessed {cfg.data.dataset} "
            f"tree (python -m lsfa.preprocess; python -m shared.datasets info {cfg.data.dataset})"
        )
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root {root} does not exist (python -m shared.datasets info {cfg.data.dataset})")
    if cfg.data.require_preprocessed:
        check_preprocessed(root, cfg.data.dataset)
    return root


def build_extractor(
    cfg: TrainConfig, backbones: dict | None = None, logger: RunLogger | None = None
) -> FeatureExtractor:
    """Frozen backbones: from ``backbones`` (state dicts saved with a random-init run), the checkpoint files, or
    random initialisation when ``backbone.allow_random_init`` (never silently)."""
    b = cfg.backbone
    rgb = create_rgb_backbone(b.rgb_variant, None if backbones else b.rgb_checkpoint)
    point = create_point_encoder(b.point_variant, None if backbones else b.point_checkpoint)
    if backbones:
        load_state_dict_strict(rgb, backbones["rgb"], "checkpoint['backbones']['rgb']")
        load_state_dict_strict(point, backbones["point"], "checkpoint['backbones']['point']")
    else:
        missing = [
            name
            for name, path in (
                (
                    "backbone.rgb_checkpoint (DINO ViT-B/8: dino_vitbase8_pretrain.pth)",
                    b.rgb_checkpoint or b.rgb_variant in BUILTIN_PRETRAINED_RGB,
                ),
                ("backbone.point_checkpoint (Point-MAE: pointmae_pretrain.pth)", b.point_checkpoint),
            )
            if not path
        ]
        if missing and not b.allow_random_init:
            raise FileNotFoundError(
                f"no pretrained weights given for {', '.join(missing)}; M3DM / LSFA need them "
                f"(see README Recipes for where they are published). Only the embedded default "
                f"runs with --backbone.allow_random_init."
            )
        if missing and logger is not None:
            logger.info(
                f"RANDOM INITIALISATION of {', '.join(m.split(' ')[0] for m in missing)} "
                f"({b.rgb_variant}, {b.point_variant}): embedded default, no pretrained weights offline"
            )
    return FeatureExtractor(
        rgb, point, grid=b.grid, point_scale=b.point_scale, point_centre=b.point_centre, masked_pool=b.masked_pool
    )


def build_adaptors(cfg: TrainConfig, extractor: FeatureExtractor) -> LSFAAdaptors:
    """Freshly initialised adaptors for the extractor's feature widths (``adaptor.*`` keys)."""
    return create_model(
        "lsfa_adaptors",
        xyz_dim=extractor.xyz_dim,
        rgb_dim=extractor.rgb_dim,
        num_heads=cfg.adaptor.num_heads,
        proj_dim=cfg.adaptor.proj_dim,
        init=cfg.adaptor.init,
    )


def load_adaptors(cfg: TrainConfig, extractor: FeatureExtractor, state: dict, source: str) -> LSFAAdaptors:
    """Adaptors from a state dict, strictly: a missing key is an error, never random adaptors."""
    adaptors = build_adaptors(cfg, extractor)
    load_state_dict_strict(adaptors, state, f"{source} ['adaptors']")
    return adaptors


def _uff_token_source(
    cfg: TrainConfig,
    extractor: FeatureExtractor,
    root: Path,
    classes: list[str],
    device: torch.device,
    train_cache: dict[str, SplitFeatures] | None,
) -> tuple[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], int]:
    """The UFF's training tokens: image indices -> paired (xyz, rgb) tokens, from the cached frozen features of the
    training images of all classes, or extracted batch by batch; and the number of images."""
    pairing = cfg.uff.rgb_pairing
    if train_cache:
        xyz_maps = torch.cat([train_cache[c].xyz for c in classes])
        rgb_maps = torch.cat([train_cache[c].rgb for c in classes])

        def cached(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return uff_token_pairs(xyz_maps[idx], rgb_maps[idx], pairing)

        return cached, xyz_maps.shape[0]
    images = ConcatDataset(
        [
            MVTec3DDataset(
                root,
                c,
                "train",
                image_size=cfg.data.image_size,
                max_samples=cfg.data.max_train_samples,
                rgb_resize=cfg.data.rgb_resize,
            )
            for c in classes
        ]
    )

    def extracted(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        items = [images[int(i)] for i in idx]
        xyz_f, _ = extractor.xyz_features(torch.stack([it["xyz"] for it in items]).to(device))
        rgb_f = extractor.rgb_features(torch.stack([it["rgb"] for it in items]).to(device))
        return uff_token_pairs(xyz_f, rgb_f, pairing)

    return extracted, len(images)


def check_uff_source(cfg: TrainConfig, saved: dict | None = None) -> None:
    """Before any training: method ``m3dm_triple`` has UFF weights to score with after the last epoch, i.e. an
    existing ``backbone.uff_checkpoint``, a UFF saved in the checkpoint resumed (``saved``) or ``uff.train``
    (:func:`build_uff` would otherwise stop only after the adaptor training). ``FileNotFoundError`` naming the key."""
    if "m3dm_triple" not in cfg.eval.methods:
        return
    path = cfg.backbone.uff_checkpoint
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"backbone.uff_checkpoint {path} does not exist (method m3dm_triple loads M3DM's fusion checkpoint "
                "from it); fix the path, or pass --backbone.uff_checkpoint null --uff.train to pre-train a UFF"
            )
    elif saved is None and not cfg.uff.train:
        raise FileNotFoundError(_NO_UFF)


def build_uff(
    cfg: TrainConfig,
    extractor: FeatureExtractor,
    root: Path,
    classes: list[str],
    device: torch.device,
    logger: RunLogger | None = None,
    saved: dict | None = None,
    out_dir: Path | None = None,
    train_cache: dict[str, SplitFeatures] | None = None,
) -> UnsupervisedFeatureFusion:
    """The UFF of method ``m3dm_triple``: ``backbone.uff_checkpoint`` (strict), else the one saved in a run
    checkpoint (``saved``), else pre-trained (``uff.train``) on the frozen features of the training images of all
    classes (``train_cache``: class -> SplitFeatures, or extracted batch by batch) and written to
    ``out_dir/uff_pretrained.pth`` in M3DM's layout. Never random weights."""
    say = logger.info if logger is not None else print
    u = cfg.uff
    module = create_model(
        "m3dm_uff", xyz_dim=extractor.xyz_dim, rgb_dim=extractor.rgb_dim, mlp_ratio=u.mlp_ratio, head_dim=u.head_dim
    )
    if cfg.backbone.uff_checkpoint:
        load_uff_checkpoint(module, cfg.backbone.uff_checkpoint)
        say(f"UFF loaded from {cfg.backbone.uff_checkpoint}")
        return module.to(device).eval()
    if saved is not None:
        load_state_dict_strict(module, saved, "checkpoint['uff']")
        return module.to(device).eval()
    if not u.train:
        raise FileNotFoundError(_NO_UFF)
    source, num_images = _uff_token_source(cfg, extractor, root, classes, device, train_cache)
    t0 = time.perf_counter()
    say(
        f"pre-training the UFF on {num_images} training images ({u.epochs} epochs, batch {u.batch_size} x "
        f"accumulation {u.accum_iter}, lr {u.lr})"
    )
    module, optimizer = train_uff(
        source, num_images, extractor.xyz_dim, extractor.rgb_dim, settings=u, device=device, amp=cfg.amp, log=say
    )
    if out_dir is not None:
        path = save_uff_checkpoint(
            module, Path(out_dir) / "uff_pretrained.pth", epoch=u.epochs - 1, optimizer=optimizer, settings=u
        )
        say(f"UFF trained in {time.perf_counter() - t0:.0f} s, wrote {path}")
    return module
