"""SANM on the shared DivideMix engine: adversarial noisy masking + label modulation + reconstruction as a plug-in.

SANM adds to every DivideMix step (README, "Method"):

1. the trained network's last feature maps of the guessing view ``x`` of the labeled and unlabeled batch (kept by
   the engine's ``prepare_batch``, no gradient);
2. :func:`anm.masking.mask_images` on ``[x; u]`` with the clean probabilities ``[w_x; w_u]`` -> ``x_max``, ``x_min``;
3. targets of the erased copies modulated by their ratio (Eq. 7);
4. the MixMatch batch extended by the erased copies: labeled ``[xp, xp2, xs1, xs2, x_max, x_min]`` with targets
   ``[t, t, t, t, t~, t~]``, unlabeled ``[up, up2, us1, us2, u_max, u_min]`` with ``[q, q, q, q, q~, q~]`` (12
   groups with the released views; 8 with two views);
5. ``+ recon_weight * L_rec`` (Eq. 10) on the erased copies.

:func:`sanm_groups` does 2-4 for any engine that supplies feature maps, targets and clean probabilities;
:class:`SANM` wires it into :class:`shared.noisy.dividemix.DivideMix` through the ``augment_batch`` and
``extra_loss`` hooks. The masks draw from the run's own ``torch.Generator`` (saved in checkpoints).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from anm.losses import reconstruction_loss
from anm.masking import MaskedBatch, MaskerConfig, mask_images, modulate_labels
from shared.noisy.dividemix import DivideMix, MixBatch

__all__ = ["SANM", "CEBaseline", "sanm_groups"]


def sanm_groups(
    images: torch.Tensor,
    fmap: torch.Tensor,
    clean_prob: torch.Tensor,
    targets: torch.Tensor,
    cfg: MaskerConfig,
    generator: torch.Generator | None = None,
    modulation: bool = True,
) -> tuple[MaskedBatch, torch.Tensor, torch.Tensor]:
    """Erased copies of ``images`` and their (modulated) targets: ``(masked, targets_max, targets_min)``.

    Args:
        images: the guessing view of the labeled and unlabeled items, stacked (``B x C x H x W``).
        fmap: the trained network's feature maps of ``images``.
        clean_prob: the items' clean probabilities w.
        targets: their DivideMix targets (co-refined for labeled, co-guessed for unlabeled items).
        cfg: masking hyper-parameters.
        generator: the run's masking generator.
        modulation: apply Eq. 7 (off: the erased copies keep the unmodulated targets; ablation).
    """
    masked = mask_images(images, fmap, clean_prob, cfg, generator)
    if not modulation:
        return masked, targets, targets
    return masked, modulate_labels(targets, masked.ratio_max), modulate_labels(targets, masked.ratio_min)


class SANM(DivideMix):
    """DivideMix + SANM (``augment_batch``: masked groups; ``extra_loss``: reconstruction).

    Args:
        *args, **kwargs: :class:`~shared.noisy.dividemix.DivideMix`'s arguments.
        views: per-item view transforms of each loader role (:func:`anm.data.sanm_views`); with six views the
            released split applies (mixed 0-3, guessing 4-5), with two views both are mixed and guessing.
        masker: masking hyper-parameters.
        masking, modulation, reconstruction: SANM's components (ablations switch them off).
        recon_weight: weight of L_rec.
        warmup_clip_norm: gradient-norm clipping during warm-up (released CIFAR: 1.0), None for none.
    """

    need_feature_maps = True

    def __init__(
        self,
        *args: Any,
        views: dict[str, list[Callable]] | None = None,
        masker: MaskerConfig | None = None,
        masking: bool = True,
        modulation: bool = True,
        reconstruction: bool = True,
        recon_weight: float = 0.02,
        warmup_clip_norm: float | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.views = views
        if views is not None and len(views["labeled"]) == 6:
            self.mix_views, self.guess_views = (0, 1, 2, 3), (4, 5)
        self.masker = masker or MaskerConfig()
        self.masking, self.modulation = masking, modulation
        self.reconstruction = reconstruction and masking
        self.need_feature_maps = masking
        self.recon_weight = recon_weight
        self.warmup_clip_norm = warmup_clip_norm
        self.mask_generator = torch.Generator().manual_seed(self.seed + 1)
        #: model selection on a clean validation split (Clothing1M; ``train.py``): best accuracy, the test accuracy
        #: at that epoch and the epoch; None without one. Saved with the engine, so a resumed run keeps its best.
        self.model_selection: dict[str, float] | None = None

    # -- state: the masking generator (and the model-selection record) travel with the engine's
    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "mask_generator": self.mask_generator.get_state()}
        if self.model_selection is not None:
            state["model_selection"] = dict(self.model_selection)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.mask_generator.set_state(state["mask_generator"])
        if "model_selection" in state:
            self.model_selection = dict(state["model_selection"])

    # -- hooks
    def view_transforms(self, role: str) -> list[Callable]:
        if self.views is None:
            return super().view_transforms(role)
        return list(self.views[role])

    def augment_batch(self, k: int, batch: MixBatch) -> MixBatch:
        """Append x_max / x_min of the labeled and the unlabeled items with their modulated targets."""
        if not self.masking:
            return batch
        x = batch.views_x[self.guess_views[0]]
        parts = [(x, batch.feature_maps_x, batch.w_x, batch.targets_x)]
        if batch.targets_u is not None:
            parts.append((batch.views_u[self.guess_views[0]], batch.feature_maps_u, batch.w_u, batch.targets_u))
        images, fmaps, w, targets = (torch.cat(column) for column in zip(*parts))
        masked, t_max, t_min = sanm_groups(images, fmaps, w, targets, self.masker, self.mask_generator, self.modulation)
        n = x.shape[0]
        batch.labeled += [masked.x_max[:n], masked.x_min[:n]]
        batch.labeled_targets += [t_max[:n], t_min[:n]]
        if batch.targets_u is not None:
            batch.unlabeled += [masked.x_max[n:], masked.x_min[n:]]
            batch.unlabeled_targets += [t_max[n:], t_min[n:]]
        batch.extras.update(
            recon_input=(masked.x_max, masked.x_min, images),
            mask_ratio=float(masked.ratio_max.mean()),
            mask_pixels=float((masked.box_max[2] * masked.box_max[3]).float().mean()),
        )
        return batch

    def extra_loss(
        self, k: int, batch: MixBatch, logits: torch.Tensor, mixed_target: torch.Tensor
    ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """``recon_weight * L_rec`` (Eq. 10) and the masking statistics of the step."""
        if "recon_input" not in batch.extras:
            return None, {}
        stats = {"mask_ratio": batch.extras["mask_ratio"], "mask_pixels": batch.extras["mask_pixels"]}
        if not self.reconstruction:
            # a zero term (the loss value and gradients are unchanged) so that the engine logs the mask statistics
            return logits.new_zeros(()), stats
        x_max, x_min, target = batch.extras["recon_input"]
        loss = reconstruction_loss(self.nets[k], x_max, x_min, target)
        stats["l_rec"] = loss.item()
        return self.recon_weight * loss, stats

    def optimizer_step(self, k: int, loss: torch.Tensor, warmup: bool = False) -> None:
        if not (warmup and self.warmup_clip_norm):
            super().optimizer_step(k, loss, warmup)
            return
        opt = self.optimizers[k]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.nets[k].parameters(), self.warmup_clip_norm)
        opt.step()
        self.step += 1


class CEBaseline(SANM):
    """The CE arm: both networks trained with CE on the noisy labels for every epoch (the engine's warm-up
    pass, with the same views, optimiser and schedule), tested as the same two-network ensemble."""

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        return {f"ce_loss{k + 1}": self.warmup_epoch(k, self.warmup_indices(epoch, k)) for k in range(2)}
