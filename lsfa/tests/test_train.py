"""End to end: train.py on a tiny synthetic tree, eval.py re-scores the checkpoint; the embedded default (slow)."""

import json

import pytest
import torch

from lsfa import eval as lsfa_eval
from lsfa import train as lsfa_train
from lsfa.config import DEFAULT_CONFIG, TrainConfig
from shared.config import config_from_dict, config_to_dict
from shared.testing import run_torchrun

#: One synthetic class on the CPU: the part of every test run's flags that any recipe takes.
SYNTHETIC_COOKIE = ["--device", "cpu", "--data.dataset", "synthetic", "--data.classes", "cookie"]
TINY = [
    *SYNTHETIC_COOKIE,
    "--data.batch_size",
    "2",
    "--synthetic.num_train",
    "4",
    "--synthetic.num_test_good",
    "2",
    "--synthetic.num_test_per_defect",
    "1",
    "--synthetic.size",
    "120",
    "--backbone.rgb_variant",
    "vit_test8",
    "--backbone.point_variant",
    "point_mae_test",
    "--backbone.grid",
    "14",
    "--adaptor.num_heads",
    "2",
    "--adaptor.proj_dim",
    "8",
    "--adaptor.patch_queue",
    "300",
    "--adaptor.global_queue",
    "4",
    "--loss.compactness_start_iteration",
    "1",
    "--loss.compactness_min_fill",
    "100",
    "--optim.epochs",
    "2",
    "--optim.accum_iter",
    "1",
    "--eval.vis_images",
    "1",
]


@pytest.fixture()
def synthetic_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHETIC_DATA_ROOT", str(tmp_path / "synthetic"))
    return tmp_path


def test_train_then_eval_reproduces_the_metrics(synthetic_root):
    out = synthetic_root / "run"
    metrics = lsfa_train.main(lsfa_train.parse_args([*TINY, "--output_dir", str(out)]))
    for key in ("lsfa_i_auroc_mean", "lsfa_aupro_mean", "m3dm_p_auroc_mean", "lsfa/cookie/aupro"):
        assert 0.0 <= metrics[key] <= 1.0
    for name in ("config.yaml", "log.csv", "metrics.json", "last.pt", "roc_lsfa.png", "overlays/lsfa_cookie.png"):
        assert (out / name).is_file(), name
    assert (synthetic_root / "synthetic" / "lsfa_mvtec3d_preprocessed" / "cookie" / "test").is_dir()
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and "xyz_block.attn.qkv.weight" in state["adaptors"] and state["backbones"]
    again = lsfa_eval.main(
        lsfa_eval.parse_args(["--checkpoint", str(out / "last.pt"), "--output_dir", str(out / "eval")])
    )
    written = json.loads((out / "eval" / "metrics.json").read_text())
    for key in ("lsfa_i_auroc_mean", "lsfa_aupro_mean", "m3dm_i_auroc_mean", "lsfa/cookie/p_auroc"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6) and written[key] == pytest.approx(again[key])


def test_checkpoint_without_adaptor_keys_is_an_error(synthetic_root):
    out = synthetic_root / "run"
    lsfa_train.main(
        lsfa_train.parse_args([*TINY, "--optim.epochs", "1", "--output_dir", str(out), "--eval.methods", "m3dm"])
    )
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    state["adaptors"].pop("rgb_head.weight")
    torch.save(state, out / "broken.pt")
    with pytest.raises(KeyError, match="rgb_head.weight"):
        lsfa_eval.main(
            lsfa_eval.parse_args(["--checkpoint", str(out / "broken.pt"), "--output_dir", str(out / "eval")])
        )


def test_paper_recipe_refuses_random_backbones(synthetic_root):
    with pytest.raises(FileNotFoundError, match="pointmae_pretrain.pth"):
        lsfa_train.main(
            lsfa_train.parse_args(
                [
                    "-c",
                    str(DEFAULT_CONFIG.parent / "mvtec3d_lsfa.yaml"),
                    *SYNTHETIC_COOKIE,
                    "--backbone.point_checkpoint",
                    "null",
                    "--backbone.rgb_checkpoint",
                    "null",
                    "--output_dir",
                    str(synthetic_root / "r"),
                ]
            )
        )


def test_checkpoint_interval_counts_epochs(synthetic_root, monkeypatch):
    saved = []
    monkeypatch.setattr(lsfa_train, "save_checkpoint", lambda state, path: saved.append(state["epoch"]))
    lsfa_train.main(
        lsfa_train.parse_args(
            [
                *TINY,
                "--optim.epochs",
                "3",
                "--checkpoint_interval",
                "2",
                "--eval.methods",
                "--output_dir",
                str(synthetic_root / "r"),
            ]
        )
    )
    assert saved == [2, 3]  # every 2 epochs and after the last one
    saved.clear()
    lsfa_train.main(
        lsfa_train.parse_args(
            [
                *TINY,
                "--optim.epochs",
                "2",
                "--checkpoint_interval",
                "0",
                "--eval.methods",
                "--output_dir",
                str(synthetic_root / "r0"),
            ]
        )
    )
    assert saved == [2]  # 0: only at the end


def test_unsupported_run_settings_are_refused():
    with pytest.raises(ValueError, match="eval_interval"):
        lsfa_train.main(lsfa_train.parse_args([*TINY, "--eval_interval", "1"]))


def test_configs_stored_by_older_checkpoints_take_todays_names():
    old = {"num_threads": 0, "amp": "none", "seed": 3}
    assert TrainConfig.upgrade_stored(old) == {"threads": None, "amp": "off", "seed": 3}
    assert TrainConfig.upgrade_stored({"num_threads": 2, "amp": "bf16"}) == {"threads": 2, "amp": "bf16"}
    # a config stored before data.mask_resize existed loads (the option types included) and keeps the gt-mask rule
    # its run was scored with; a current one keeps its own
    stored = config_to_dict(lsfa_train.parse_args([*TINY, "--eval.methods", "m3dm", "--eval.aupro", "m3dm"]))
    assert stored["data"].pop("mask_resize") == "pil"
    cfg = config_from_dict(TrainConfig, TrainConfig.upgrade_stored(stored))
    assert cfg.data.mask_resize == "torch" and cfg.eval.methods == ["m3dm"] and cfg.eval.aupro == "m3dm"
    stored["data"]["mask_resize"] = "pil"
    assert config_from_dict(TrainConfig, TrainConfig.upgrade_stored(stored)).data.mask_resize == "pil"


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--eval.aupro", "m3dm_util"),
        ("--scoring.blur", "gauss"),
        ("--eval.methods", "m3dm_double"),
        ("--data.mask_resize", "nearest"),
    ],
)
def test_option_values_are_checked_when_the_config_is_parsed(flag, value, capsys):
    with pytest.raises(SystemExit):
        lsfa_train.parse_args([*TINY, flag, value])
    assert flag.removeprefix("--") in capsys.readouterr().err


def test_fusion_bank_without_uff_weights_stops_before_training(synthetic_root):
    out = synthetic_root / "run"
    triple = [*TINY, "--eval.methods", "m3dm_triple", "--output_dir", str(out)]
    missing = synthetic_root / "nope" / "uff_pretrained.pth"
    with pytest.raises(FileNotFoundError, match=f"backbone.uff_checkpoint {missing} does not exist"):
        lsfa_train.main(lsfa_train.parse_args([*triple, "--backbone.uff_checkpoint", str(missing)]))
    with pytest.raises(FileNotFoundError, match="needs UFF weights"):
        lsfa_train.main(lsfa_train.parse_args(triple))
    assert not out.exists()  # checked before the run folder is claimed, long before any training


@pytest.fixture(scope="module")
def embedded_default_metrics(tmp_path_factory):
    return lsfa_train.main(lsfa_train.parse_args(["--output_dir", str(tmp_path_factory.mktemp("lsfa") / "run")]))


@pytest.mark.slow
def test_embedded_default_localises_the_synthetic_defects(embedded_default_metrics):
    assert embedded_default_metrics["lsfa_aupro_mean"] >= 0.6


@pytest.mark.slow
def test_pipeline_detects_the_synthetic_defects_end_to_end(embedded_default_metrics):
    """A pipeline check (tree -> preprocessing -> loader -> features -> banks -> late fusion -> metrics), not a test
    of the method: with random backbones M3DM's frozen features score as well as LSFA's adapted ones (README,
    Evidence; the method's claim is tested by ``test_evidence.py``)."""
    assert embedded_default_metrics["lsfa_i_auroc_mean"] >= 0.8
    assert embedded_default_metrics["m3dm_i_auroc_mean"] >= 0.8


@pytest.mark.slow
@pytest.mark.ddp
def test_torchrun_two_processes_train_with_synced_adaptors(synthetic_root):
    """The loss bypasses a DDP forward, so train.py broadcasts rank 0's weights and averages the gradients itself
    (shared.distributed); two gloo processes must run end to end."""
    out = synthetic_root / "ddp"
    run_torchrun("lsfa.train", [*TINY, "--output_dir", str(out), "--threads", "1"])
    assert "2 process(es)" in (out / "train.log").read_text()
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and all(torch.isfinite(v).all() for v in state["adaptors"].values())
