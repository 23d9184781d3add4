"""The paper recipes resolve and hold the released values (README, Recipes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from anm.train import parse_args

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_recipe_resolves(name: str) -> None:
    cfg = parse_args(["-c", str(CONFIGS / name)])
    assert cfg.sanm.method == "sanm"


def test_cifar_recipes_are_the_released_script() -> None:
    c10 = parse_args(["-c", str(CONFIGS / "cifar10_sym90.yaml")])
    d = c10.dividemix
    assert (d.epochs, d.warmup_epochs, d.lr, d.lr_decay_epoch, d.batch_size, d.warmup_batch_size) == (
        361, 10, 0.02, 150, 64, 128,
    )  # fmt: skip
    assert (d.alpha, d.lambda_u, d.rampup_length, d.temperature, d.p_threshold, d.loss_history) == (
        4,
        25,
        16,
        0.5,
        0.5,
        5,
    )
    m = c10.sanm.masker
    assert (m.ratio_low, m.ratio_high, m.quality_coef, m.area_scale, m.independent_min_box) == (
        0.02,
        0.07,
        0.03,
        0.5,
        False,
    )
    assert c10.sanm.recon_weight == 0.02 and c10.sanm.warmup_clip_norm == 1.0 and c10.data.views == "released"
    assert c10.model.name == "supce_resnet18" and not c10.model.double_softmax
    c100 = parse_args(["-c", str(CONFIGS / "cifar100_asym40.yaml")])
    assert c100.model.pretrained.endswith("ckpt_cifar100_resnet18.pth")  # not the released CIFAR-10 file
    assert c100.dividemix.warmup_epochs == 20 and c100.dividemix.asym_penalty and c100.data.noise_type == "asym"


def test_clothing1m_recipe() -> None:
    cfg = parse_args(["-c", str(CONFIGS / "clothing1m.yaml")])
    d, m = cfg.dividemix, cfg.sanm.masker
    assert (d.lr, d.batch_size, d.weight_decay, d.lr_decay_epoch, d.alpha, d.lambda_u, d.warmup_epochs) == (
        0.0009, 8, 0.001, 40, 0.5, 0.0, 1,
    )  # fmt: skip
    assert d.mix_forward == "labeled" and d.epoch_samples == 125_000 and d.warmup_samples == 250_000
    assert (m.ratio_low, m.ratio_high, m.area_scale, m.independent_min_box) == (0.06, 0.13, 1.0, True)
    assert cfg.sanm.recon_weight == 0.3 and cfg.model.name == "supce_resnet50"


def test_recipes_set_the_loader_workers_the_engine_reads() -> None:
    for name in ("cifar10_sym50.yaml", "clothing1m.yaml"):
        assert parse_args(["-c", str(CONFIGS / name)]).dividemix.num_workers == 5


def test_a_stored_config_with_data_num_workers_is_upgraded() -> None:
    from anm.config import Config

    stored = {"data": {"dataset": "cifar10", "num_workers": 5}, "dividemix": {"epochs": 3}, "seed": 1}
    assert Config.upgrade_stored(stored) == {
        "data": {"dataset": "cifar10"},
        "dividemix": {"num_workers": 5, "epochs": 3},
        "seed": 1,
    }
    assert stored["data"]["num_workers"] == 5  # the checkpoint's own dict is left as it was
    assert Config.upgrade_stored({"data": {}, "seed": 1}) == {"data": {}, "seed": 1}
    # a real checkpoint also holds dividemix.num_workers (0: what its loaders used), which stays
    real = {"data": {"num_workers": 5}, "dividemix": {"num_workers": 0, "epochs": 3}}
    assert Config.upgrade_stored(real) == {"data": {}, "dividemix": {"num_workers": 0, "epochs": 3}}
