"""SLEEG's training objective and test-time anomaly scores.

* :func:`otsu_threshold` / :func:`refine_anomaly_labels`: **likelihood-guided mask refinement** (paper eq. 10-11,
  released ``otsu_thresholding`` / ``_refine_ood_gt``): per image, an Otsu threshold with 25 bins over the current
  anomaly score of the pasted pixels; pasted pixels at or below it become ignored (255).
* :class:`SLEEGSettings` + :func:`sleeg_losses`: one training step of the OoD head: pool + paste self-generated
  anomalies, frozen segmentor forward, refinement (:func:`refinement_score`), TAE cross-entropy + 0.05 x TORE hinge
  with its stop-gradient guide (:func:`tore_guide`).
* :func:`anomaly_score`: the test-time score, the paper's eq. 9 A = log p_a(o=1|z) + lambda log p_t(o=1|z)
  = log_softmax(h)[1] + lambda (h[1] + JEM) (lambda = 0.5), or the released code's w h[1] + 1 - logsumexp(g)
  (w = 0.3 in the test config, 0.0 in the LAF config).
* :func:`predict_anomaly_maps`: multi-scale (0.75, 1.0, 1.25, 1.5 of the 2048x1024 test scale) + flip inference,
  averaging the 8 passes at the original resolution as mmseg's ``aug_test`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from energy_anomaly_seg.data import keep_ratio_size, normalize_image
from energy_anomaly_seg.losses import jem_energy, task_agnostic_loss, task_oriented_residual_loss
from energy_anomaly_seg.model import SLEEG
from energy_anomaly_seg.self_generated_anomalies import AnomalyPatchPool, PasteResult

__all__ = [
    "REFINE_SCORES",
    "SCORE_METHODS",
    "TORE_GUIDES",
    "SLEEGSettings",
    "anomaly_score",
    "input_gradient_nudge",
    "otsu_threshold",
    "predict_anomaly_maps",
    "refine_anomaly_labels",
    "refinement_score",
    "sleeg_losses",
    "tore_guide",
]

SCORE_METHODS = ("msp", "energy", "sleeg")
REFINE_SCORES = ("paper", "released", "head_plus_energy")
TORE_GUIDES = ("energy", "head_plus_energy")


def otsu_threshold(values: torch.Tensor, weight: torch.Tensor | None = None, nbins: int = 25) -> torch.Tensor:
    """Per-row Otsu threshold over the weighted entries of `values` (N, D) -> (N, 1).

    Candidate thresholds are the ``nbins`` lattice points tmin + k (tmax - tmin) / nbins, k = 0..nbins-1, over the
    weighted entries' range; the one maximising the between-class variance (equivalently minimising the
    within-class variance, the paper's wording) wins, a value counting as "low" when it is <= the threshold.
    Same definition as the released ``otsu_thresholding``, computed from a histogram (O(D) memory instead of
    O(D x nbins)). A row without weight gets -inf (nothing to refine).
    """
    v = values.double()
    w = torch.ones_like(v) if weight is None else weight.to(v.dtype)
    has = w > 0
    tmin = torch.where(has, v, torch.full_like(v, torch.inf)).amin(dim=1, keepdim=True)
    tmax = torch.where(has, v, torch.full_like(v, -torch.inf)).amax(dim=1, keepdim=True)
    empty = ~has.any(dim=1, keepdim=True)
    tmin, tmax = torch.where(empty, 0.0, tmin), torch.where(empty, 0.0, tmax)
    lattice = tmin + (tmax - tmin) / nbins * torch.arange(nbins, device=v.device, dtype=v.dtype)
    bucket = torch.searchsorted(lattice.contiguous(), v.contiguous(), right=False)  # v <= lattice[k] iff k >= bucket
    counts = torch.zeros(v.shape[0], nbins + 1, dtype=v.dtype, device=v.device).scatter_add_(1, bucket, w)
    sums = torch.zeros_like(counts).scatter_add_(1, bucket, w * v)
    n_low, s_low = counts.cumsum(1)[:, :nbins], sums.cumsum(1)[:, :nbins]
    n_all, s_all = w.sum(1, keepdim=True), (w * v).sum(1, keepdim=True)
    mu = s_all / (n_all + 1e-4)
    mean_low, mean_high = s_low / (n_low + 1e-4), (s_all - s_low) / (n_all - n_low + 1e-4)
    between = n_low * (mean_low - mu) ** 2 + (n_all - n_low) * (mean_high - mu) ** 2
    threshold = lattice.gather(1, between.argmax(dim=1, keepdim=True))
    return torch.where(empty, -torch.inf, threshold).to(values.dtype)


def refine_anomaly_labels(
    score: torch.Tensor, ood_labels: torch.Tensor, nbins: int = 25, ignore_index: int = 255
) -> torch.Tensor:
    """Likelihood-guided refinement: pasted pixels (label 1) whose score is <= their image's Otsu threshold
    (computed over the pasted pixels only) become `ignore_index`; other labels are unchanged. (B, H, W) in and out."""
    b = score.shape[0]
    pasted = (ood_labels == 1).reshape(b, -1)
    flat = score.reshape(b, -1)
    threshold = otsu_threshold(flat, pasted, nbins)
    refined = ood_labels.clone().reshape(b, -1)
    refined[pasted & (flat <= threshold)] = ignore_index
    return refined.view_as(ood_labels)


def anomaly_score(
    seg_logits: torch.Tensor,
    ood_logits: torch.Tensor | None,
    method: str = "sleeg",
    formula: str = "paper",
    weight: float = 0.5,
) -> torch.Tensor:
    """Per-pixel anomaly score (higher = more anomalous) from logits (B, C, h, w) -> (B, h, w).

    Methods: ``msp`` 1 - max softmax probability; ``energy`` JEM = -logsumexp(g); ``sleeg`` the combined estimator:
    formula ``paper`` (eq. 9) log_softmax(h)[1] + weight * (h[1] + JEM), ``code`` weight * h[1] + 1 + JEM.
    """
    if method == "msp":
        return 1.0 - seg_logits.softmax(dim=1).amax(dim=1)
    energy = jem_energy(seg_logits)
    if method == "energy":
        return energy
    if method != "sleeg":
        raise ValueError(f"unknown anomaly score method {method!r}; expected one of {SCORE_METHODS}")
    if ood_logits is None:
        raise ValueError("the sleeg score needs the OoD-head logits")
    if ood_logits.shape[-2:] != seg_logits.shape[-2:]:
        ood_logits = F.interpolate(ood_logits, size=seg_logits.shape[-2:], mode="bilinear", align_corners=False)
    h1 = ood_logits[:, 1]
    if formula == "paper":
        return ood_logits.log_softmax(dim=1)[:, 1] + weight * (h1 + energy)
    if formula == "code":
        return weight * h1 + 1.0 + energy
    raise ValueError(f"unknown score formula {formula!r}; expected 'paper' or 'code'")


@dataclass
class SLEEGSettings:
    """Hyper-parameters of one SLEEG training step (paper values by default; released-code values in comments).

    ``refine_score`` (the score whose per-image Otsu split refines the pasted labels, computed under no_grad):

    * ``paper`` (eq. 10): JEM alone for the first ``refine_warmup_iters`` iterations, then the estimated anomaly
      likelihood A(x) of eq. 9, log_softmax(h)[1] + ``refine_lambda`` (h[1] + JEM);
    * ``released``: JEM alone for the whole run. The released training forward calls the *parent* class's
      ``_get_ood_segmentation_score`` (the energy estimator, 1 - logsumexp g; the constant does not move the Otsu
      split), so the head never enters refinement; ``refine_warmup_iters`` is not used;
    * ``head_plus_energy``: JEM during the warm-up, then JEM + ``head_plus_energy_weight`` h[1] (the release's
      *test-time* estimator merge_weight h[1] + E with the train config's merge_weight 0.5, used for refinement).

    ``tore_guide`` (the stop-gradient score S added to h[1] in the TORE hinge): ``energy`` = JEM (paper eq. 8 and the
    released training forward, which passes the same energy-only score) or ``head_plus_energy`` = JEM +
    ``head_plus_energy_weight`` h[1].
    """

    pastes_per_image: int = 10
    noise_ratio: float = 0.1
    refine: bool = True
    otsu_bins: int = 25
    refine_score: str = "paper"  # paper: JEM warm-up then A(x) (eq. 9-10); released: JEM throughout
    refine_warmup_iters: int = 6000  # paper: JEM alone for refinement during the first 6k iterations
    refine_lambda: float = 0.5  # lambda of A(x) (eq. 9; 0.5 in the paper)
    tore_guide: str = "energy"  # paper eq. 8 and the released training forward: JEM
    head_plus_energy_weight: float = 0.5  # w of JEM + w h[1] in the head_plus_energy options (merge_weight 0.5)
    margin: float = 15.0  # gamma (paper 15; code 20)
    tae_weight: float = 1.0
    tore_weight: float = 0.05
    ce_average: str = "all"  # mmseg 0.27 CrossEntropyLoss: mean over all pixels ("valid": non-ignored only)
    input_grad_nudge: bool = False  # code only: nudge the input along sign(dL_TORE/dx) before the real pass

    def __post_init__(self) -> None:
        if self.refine_score not in REFINE_SCORES:
            raise ValueError(f"unknown refine_score {self.refine_score!r}; expected one of {REFINE_SCORES}")
        if self.tore_guide not in TORE_GUIDES:
            raise ValueError(f"unknown tore_guide {self.tore_guide!r}; expected one of {TORE_GUIDES}")


def _maps_at(
    size: Sequence[int], seg_logits: torch.Tensor, ood_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """JEM of the segmentation logits and the two OoD-head logits, both upsampled to `size` (label resolution) as
    the released training forward does before refinement and the hinge."""
    seg_up = F.interpolate(seg_logits.float(), size=size, mode="bilinear", align_corners=False)
    ood_up = F.interpolate(ood_logits.float(), size=size, mode="bilinear", align_corners=False)
    return jem_energy(seg_up), ood_up  # float32 under AMP too: the hinge compares means of large maps


def refinement_score(
    settings: SLEEGSettings, iteration: int, energy: torch.Tensor, ood_logits: torch.Tensor
) -> torch.Tensor:
    """The score (B, H, W) whose Otsu split refines the pasted labels at `iteration` (see :class:`SLEEGSettings`).

    ``energy`` is JEM (B, H, W) and ``ood_logits`` the head's logits (B, 2, H, W), both at label resolution; the
    result carries no gradient."""
    ood_logits = ood_logits.detach()
    if settings.refine_score == "released" or iteration < settings.refine_warmup_iters:
        return energy
    h1 = ood_logits[:, 1]
    if settings.refine_score == "paper":
        return ood_logits.log_softmax(dim=1)[:, 1] + settings.refine_lambda * (h1 + energy)
    return energy + settings.head_plus_energy_weight * h1


def tore_guide(settings: SLEEGSettings, energy: torch.Tensor, ood_logits: torch.Tensor) -> torch.Tensor:
    """The stop-gradient guide S (B, H, W) of the TORE hinge
    max(0, mean_normal(h1 + S) - mean_pasted(h1 + S) + gamma) (see :class:`SLEEGSettings`)."""
    if settings.tore_guide == "energy":
        return energy
    return energy + settings.head_plus_energy_weight * ood_logits[:, 1].detach()


def _refine(
    settings: SLEEGSettings, iteration: int, energy: torch.Tensor, ood_logits: torch.Tensor, ood_labels: torch.Tensor
) -> torch.Tensor:
    if not settings.refine:
        return ood_labels
    with torch.no_grad():
        return refine_anomaly_labels(
            refinement_score(settings, iteration, energy, ood_logits), ood_labels, settings.otsu_bins
        )


def input_gradient_nudge(
    model: SLEEG,
    images: torch.Tensor,
    ood_labels: torch.Tensor,
    paste: PasteResult,
    settings: SLEEGSettings,
    iteration: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Released-code step not in the paper: one forward/backward of the TORE loss w.r.t. the input image, then
    x += sign(grad) * (5e-6 per paste everywhere + 6e-5 per paste covering the pixel) (normalised units).

    Returns the nudged images and this pass's refined labels: the released forward overwrites its ``ood_seg`` with
    them, so the real pass refines the labels a second time (its Otsu split runs over the pixels still kept)."""
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        feats = model.forward_features(x)
        ood_logits = model.forward_ood(feats)
        with torch.no_grad():
            seg_logits = model.forward_head(feats)
        energy, ood_up = _maps_at(ood_labels.shape[-2:], seg_logits, ood_logits)
        refined = _refine(settings, iteration, energy, ood_up, ood_labels)
        loss = task_oriented_residual_loss(ood_up[:, 1], tore_guide(settings, energy, ood_up), refined, settings.margin)
        (grad,) = torch.autograd.grad(loss, x)
    step = settings.pastes_per_image * 5e-6 + 6e-5 * paste.coverage[:, None].to(x.dtype)
    return (images + grad.sign() * step).detach(), refined


def sleeg_losses(
    model: SLEEG,
    images: torch.Tensor,
    seg_labels: torch.Tensor,
    pool: AnomalyPatchPool,
    generator: torch.Generator,
    settings: SLEEGSettings,
    iteration: int,
    ood_head: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One SLEEG step on a batch of normalised crops (B, 3, H, W) with Cityscapes labels (B, H, W).

    ``ood_head`` is the module to call for the OoD logits (the DDP wrapper of ``model.patch_head`` under torchrun).
    Returns the total loss (TAE + 0.05 TORE; gradient only into the OoD head) and logging values.
    """
    pool.add(images, generator)
    images, _, ood_labels, paste = pool.paste(
        images, seg_labels, generator, settings.pastes_per_image, settings.noise_ratio
    )
    labels_in = ood_labels
    if settings.input_grad_nudge:
        images, labels_in = input_gradient_nudge(model, images, ood_labels, paste, settings, iteration)
    with torch.no_grad():
        feats = model.forward_features(images)
        seg_logits = model.forward_head(feats)
    ood_logits = (ood_head or model.patch_head)(feats[model.patch_head.in_index].detach())
    energy, ood_up = _maps_at(ood_labels.shape[-2:], seg_logits, ood_logits)
    refined = _refine(settings, iteration, energy, ood_up, labels_in)
    loss_tae = task_agnostic_loss(ood_logits, refined, average=settings.ce_average)
    loss_tore = task_oriented_residual_loss(
        ood_up[:, 1], tore_guide(settings, energy, ood_up), refined, settings.margin
    )
    loss = settings.tae_weight * loss_tae + settings.tore_weight * loss_tore
    pasted = (ood_labels == 1).sum().clamp(min=1)
    logs = {
        "loss": loss.item(),
        "loss_tae": loss_tae.item(),
        "loss_tore": loss_tore.item(),
        "pasted_frac": float((ood_labels == 1).float().mean()),
        "kept_after_refine": float((refined == 1).sum() / pasted),
    }
    return loss, logs


@torch.no_grad()
def predict_anomaly_maps(
    model: SLEEG,
    image: torch.Tensor,
    img_scale: tuple[int, int] = (2048, 1024),
    scales: Sequence[float] = (0.75, 1.0, 1.25, 1.5),
    flip: bool = True,
    formula: str = "paper",
    weight: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Multi-scale + flip anomaly maps of one uint8 image (3, H, W) at its original resolution.

    Each pass rescales the image (keep ratio) to fit ``img_scale`` x ratio (mmseg ``MultiScaleFlipAug``), runs the
    model, resizes the softmax probabilities and the score maps (computed at 1/8 resolution, as the released code)
    to the input then to the original size, flips them back, and the passes are averaged.

    Returns ``{"msp", "energy", "sleeg"}`` (H, W) float32 maps and ``"pred"`` (H, W) the segmentation.
    """
    device = next(model.parameters()).device
    height, width = image.shape[-2:]
    x0 = normalize_image(image.to(device))[None]
    probs = torch.zeros(1, model.num_classes, height, width, device=device)
    maps = {"energy": torch.zeros(height, width, device=device), "sleeg": torch.zeros(height, width, device=device)}
    passes = 0
    for ratio in scales:
        size = keep_ratio_size(height, width, (int(img_scale[0] * ratio), int(img_scale[1] * ratio)))
        x = F.interpolate(x0, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            out = model(x.flip(-1) if flipped else x)
            seg, ood = out["seg_logits"], out["ood_logits"]

            def to_original(t: torch.Tensor, flipped: bool = flipped, size: tuple[int, int] = size) -> torch.Tensor:
                t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
                t = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)
                return t.flip(-1) if flipped else t

            probs += to_original(seg).softmax(dim=1)
            maps["energy"] += to_original(anomaly_score(seg, None, "energy")[:, None])[0, 0]
            maps["sleeg"] += to_original(anomaly_score(seg, ood, "sleeg", formula, weight)[:, None])[0, 0]
            passes += 1
    probs /= passes
    result = {k: (v / passes).float() for k, v in maps.items()}
    result["msp"] = 1.0 - probs.amax(dim=1)[0]
    result["pred"] = probs.argmax(dim=1)[0]
    return result
