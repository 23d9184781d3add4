"""Which loss term trains FRIH's stage 1: gradient norms at the stage-1 parameters, per term, at initialisation.

    python -m frih.diagnose_gradients                    # embedded default (configs/default.yaml), 4 batches
    python -m frih.diagnose_gradients --data.synthetic_kind photos --diag_batches 8

For each of the first `--diag_batches` training batches (the loader and seed of `python -m frih.train` with the same
flags), the gradient that reaches stage 1 from its own term (coarse FN-MSE, weight `loss.coarse_weight`) and from
the rest (final + module terms, which reach stage 1 only through stage 2) is computed separately; printed: their L2
norms, the ratio rest / coarse and the cosine between them, then the means. A ratio far above 1 means stage 1 is
trained as a feature extractor of stage 2 rather than as a harmonizer; `loss.coarse_weight` x ratio balances the two
at initialisation, `model.stop_gradient true` removes the second gradient altogether (README, "Fidelity notes").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

from frih.config import DEFAULT_CONFIG, Config
from frih.loaders import build_train_loader, resolve_data_root
from frih.losses import FRIHLoss
from frih.model import build_model, normalize_image
from shared.config import script_parser
from shared.distributed import DistContext, seed_everything
from shared.training import resolve_device

__all__ = ["DiagnoseConfig", "gradient_split", "main", "parse_args"]


@dataclass
class DiagnoseConfig(Config):
    """train.py's config plus the number of batches to measure."""

    diag_batches: int = field(default=4, metadata={"help": "training batches to measure"})


def _flat_grad(params: list[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def gradient_split(
    model: torch.nn.Module, criterion: FRIHLoss, comp: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """Stage-1 gradient norms of the weighted coarse term and of the weighted other terms, their ratio and cosine."""
    params = [p for p in model.stage1.parameters() if p.requires_grad]
    outputs = model(comp, mask)
    _, parts = criterion(outputs, target, mask)
    coarse_only = FRIHLoss(criterion.min_area, final_weight=0.0, coarse_weight=criterion.coarse_weight)
    rest = FRIHLoss(
        criterion.min_area, criterion.final_weight, coarse_weight=0.0, module_weight=criterion.module_weight
    )
    g_coarse = _flat_grad(params, coarse_only(outputs, target, mask)[0])
    g_rest = _flat_grad(params, rest(outputs, target, mask)[0])
    n_coarse, n_rest = float(g_coarse.norm()), float(g_rest.norm())
    cosine = float(torch.nn.functional.cosine_similarity(g_coarse, g_rest, dim=0)) if n_coarse and n_rest else 0.0
    return {
        "coarse_grad_norm": n_coarse,
        "rest_grad_norm": n_rest,
        "ratio_rest_over_coarse": n_rest / max(n_coarse, 1e-30),
        "cosine": cosine,
        **{f"loss_{k}": v for k, v in parts.items()},
    }


parse_args = script_parser(DiagnoseConfig, __doc__.splitlines()[0], DEFAULT_CONFIG)


def main(cfg: DiagnoseConfig) -> dict[str, Any]:
    """Measure; prints one line per batch and the mean, returns {"batches": [...], "mean": {...}}."""
    if cfg.model.arch != "frih":
        raise ValueError("diagnose_gradients needs a two-stage model (model.arch frih)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed, 0)
    root = resolve_data_root(cfg.data)
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=device)
    loader, generator = build_train_loader(cfg.data, root, cfg.optim.batch_size, cfg.seed, ctx)
    generator.manual_seed(cfg.seed * 100003)
    model = build_model(cfg.model).to(device).train()
    criterion = FRIHLoss(cfg.loss.min_area, cfg.loss.final_weight, cfg.loss.coarse_weight, cfg.loss.module_weight)
    rows = []
    for i, batch in enumerate(loader):
        if i >= cfg.diag_batches:
            break
        comp, target = (normalize_image(batch[k].to(device)) for k in ("composite", "target"))
        row = gradient_split(model, criterion, comp, target, batch["mask"].to(device))
        rows.append(row)
        print(f"batch {i}: " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()))
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    print("mean: " + "  ".join(f"{k} {v:.4g}" for k, v in mean.items()))
    print(
        f"stage 1 receives {mean['ratio_rest_over_coarse']:.1f}x more gradient from the final/module terms than "
        f"from its own coarse term; loss.coarse_weight {cfg.loss.coarse_weight * mean['ratio_rest_over_coarse']:.3g}"
        " would balance them at initialisation (or model.stop_gradient true)"
    )
    result = {"batches": rows, "mean": mean}
    if cfg.output_dir:
        from pathlib import Path

        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output_dir) / "gradients.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(parse_args())
