"""Builders shared by train.py, eval.py, bench.py and evidence.py: the two networks and the trainer of a config."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from anm.config import PACKAGE, Config
from anm.data import NoisyTask
from anm.model import create_model, load_c2d_checkpoint
from anm.sanm import SANM, CEBaseline
from shared.config import config_to_dict
from shared.logger import RunLogger

__all__ = ["build_engine", "build_models"]


class _StampedSANM(SANM):
    """SANM whose checkpoints carry the package name and the whole run config (what eval.py reads)."""

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **getattr(self, "stamp", {})}


class _StampedCE(CEBaseline, _StampedSANM):
    """The CE arm with stamped checkpoints."""


def build_models(cfg: Config, num_classes: int, logger: RunLogger | None = None) -> list[nn.Module]:
    """The two networks of ``cfg.model`` (C2D SSL weights when ``model.pretrained``; else random, said in the log)."""
    overrides: dict[str, Any] = {}
    if cfg.model.width is not None:
        overrides["width"] = cfg.model.width
    if cfg.model.double_softmax:
        overrides["double_softmax"] = True
    nets = [create_model(cfg.model.name, num_classes, **overrides) for _ in range(2)]
    if cfg.model.pretrained:
        for net in nets:
            load_c2d_checkpoint(net, cfg.model.pretrained)
        if logger is not None:
            logger.info(f"both networks initialised from {cfg.model.pretrained} (C2D encoder, fresh fc + decoder)")
    elif logger is not None:
        logger.info(f"{cfg.model.name}: random initialisation (no model.pretrained given)")
    return nets


def build_engine(cfg: Config, task: NoisyTask, nets: list[nn.Module], device: torch.device, logger: RunLogger) -> SANM:
    """The trainer of ``cfg.sanm.method``: SANM, DivideMix (SANM with masking off) or the CE arm."""
    s = cfg.sanm
    engine_cls = _StampedCE if s.method == "ce" else _StampedSANM
    masking = s.method == "sanm" and s.masking
    engine = engine_cls.for_task(
        task,
        [net.to(device) for net in nets],
        cfg.dividemix,
        device,
        logger,
        seed=cfg.seed,
        views=task.views,
        masker=s.masker,
        masking=masking,
        modulation=s.modulation,
        reconstruction=s.reconstruction,
        recon_weight=s.recon_weight,
        warmup_clip_norm=s.warmup_clip_norm,
    )
    engine.stamp = {"package": PACKAGE, "config": config_to_dict(cfg), "dividemix_config": asdict(cfg.dividemix)}
    return engine
