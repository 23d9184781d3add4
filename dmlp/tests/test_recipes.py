"""The resolved paper recipes: DivideMix on Clothing1M equals Train_clothing1M.py; the CIFAR protocol defaults."""

from dataclasses import asdict
from pathlib import Path

import pytest

import dmlp.train as dmlp_train
from dmlp.config import Config, check_run_settings
from shared.config import config_from_dict, config_to_dict
from shared.noisy.dividemix import DivideMixConfig, clothing1m_defaults

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_clothing1m_dividemix_recipe_equals_the_official_script():
    cfg = dmlp_train.parse_args(["-c", str(CONFIGS / "clothing1m_dividemix.yaml")])
    assert cfg.retrain.mode == "dividemix"
    resolved = asdict(cfg.retrain.dividemix)
    official = asdict(clothing1m_defaults())
    for machine_only in ("num_workers", "eval_batch_size"):
        resolved.pop(machine_only), official.pop(machine_only)
    assert resolved == official
    # Train_clothing1M.py: confidence penalty in warm-up, batch 64 warm-up, 32k divided / 64k warm-up samples,
    # only the 2B labeled mixed rows forwarded (lambda_u = 0)
    dm = cfg.retrain.dividemix
    assert dm.asym_penalty and dm.warmup_batch_size == 64 and dm.batch_size == 32
    assert (dm.epoch_samples, dm.warmup_samples, dm.mix_forward, dm.lambda_u) == (32000, 64000, "labeled", 0.0)


def test_clothing1m_naive_has_a_per_epoch_sample_budget():
    cfg = dmlp_train.parse_args(["-c", str(CONFIGS / "clothing1m.yaml")])
    sup = cfg.retrain.supervised
    assert sup.epoch_samples == 64000 and sup.epochs == 80 and sup.batch_size == 32
    assert sup.epoch_samples * sup.epochs < 1_000_000 * 80 / 10  # not 80 passes over the 1M noisy images


@pytest.mark.parametrize("name", ["cifar10_sym50.yaml", "cifar100_sym80.yaml", "default.yaml"])
def test_protocol_defaults_meta_two_percent_and_no_feedback(name):
    cfg = dmlp_train.parse_args(["-c", str(CONFIGS / name)])
    assert cfg.data.meta_fraction == 0.02 and cfg.data.meta_seed == 0
    assert cfg.purifier.eac_feedback is False


def test_mix_forward_labeled_needs_lambda_u_zero():
    with pytest.raises(ValueError, match="lambda_u must be 0"):
        DivideMixConfig(mix_forward="labeled", lambda_u=25.0)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_recipe_passes_the_config_check(name):
    """clothing1m_dividemix.yaml inherits include_meta false: allowed there (the meta set is the validation split,
    never in the training set); on CIFAR, DivideMix retraining with include_meta false is refused (it would train on
    the whole set regardless)."""
    cfg = dmlp_train.parse_args(["-c", str(CONFIGS / name)])
    check_run_settings(cfg)
    if cfg.data.dataset != "clothing1m" and cfg.retrain.mode == "dividemix":
        cfg.retrain.include_meta = False
        with pytest.raises(ValueError, match="include_meta false is not supported with retrain.mode dividemix"):
            check_run_settings(cfg)


def test_a_config_stored_with_a_meta_count_reads_as_a_fraction():
    stored = config_to_dict(dmlp_train.parse_args([]))
    data = stored["data"]
    data["meta_size"] = data.pop("meta_fraction") * data["synthetic_train_size"] // 2
    stored["device"], stored["amp"] = None, "none"  # the run-level values of that time
    cfg = config_from_dict(Config, Config.upgrade_stored(stored))
    assert cfg.data.meta_fraction == pytest.approx(data["meta_size"] / data["synthetic_train_size"])
    assert (cfg.device, cfg.amp) == ("auto", "off") and "meta_size" in stored["data"]  # the stored dict as it was
    clothing = {"data": {"dataset": "clothing1m", "root": "c1m", "meta_size": 14313}}
    assert Config.upgrade_stored(clothing) == {"data": {"dataset": "clothing1m", "root": "c1m"}}
