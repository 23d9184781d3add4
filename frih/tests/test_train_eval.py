"""train.py / eval.py end to end on a micro configuration, resume equality, and (slow) the embedded default's claim."""

import json

import pytest

from frih import eval as frih_eval
from frih import train as frih_train
from frih.config import DEFAULT_CONFIG, Config
from shared.checkpoint import load_checkpoint, save_checkpoint
from shared.config import config_to_dict
from shared.testing import assert_same_tensors


def _train(argv):
    return frih_train.main(frih_train.parse_args(argv))


def _argv(out, data_root, epochs=2, extra=()):
    return [
        "--output_dir",
        str(out),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--model.stage1_ch",
        "4",
        "--model.module_ch",
        "4",
        "--model.fpm_ch",
        "8",
        "--data.crop_size",
        "32",
        "--data.eval_size",
        "32",
        "--data.num_workers",
        "0",
        "--data.synthetic_size",
        "48",
        "--data.synthetic_num_real",
        "4",
        "--data.synthetic_root",
        str(data_root),
        "--optim.batch_size",
        "4",
        "--optim.epochs",
        str(epochs),
        "--optim.milestones",
        "1",
        "--eval_batch_size",
        "8",
        "--num_grid_images",
        "2",
        *extra,
    ]


def test_train_writes_the_run_folder_and_eval_reproduces_its_metrics(tmp_path):
    out = tmp_path / "run"
    metrics = _train(_argv(out, tmp_path / "data"))
    for name in (
        "config.yaml",
        "log.csv",
        "train.log",
        "metrics.json",
        "last.pt",
        "best.pt",
        "per_image.csv",
        "before_after.png",
        "results.md",
    ):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in ("mse", "fmse", "psnr", "psnr_255", "fpsnr", "composite_mse", "stage1_mse", "frih_mse"):
        assert key in on_disk
    assert on_disk["mse"] == pytest.approx(metrics["frih_mse"])
    assert set(on_disk["summary"]["frih"]) >= {"HCOCO", "HAdobe5k", "HFlickr", "Hday2night", "All", "fg0-5"}
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 1 and state["scheduler"]["last_epoch"] == 2
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)  # x0.1 after the milestone
    ev = frih_eval.main(
        frih_eval.parse_args(
            [
                "--checkpoint",
                str(out / "last.pt"),
                "--output_dir",
                str(tmp_path / "ev"),
                "--threads",
                "1",
                "--data.num_workers",
                "0",
            ]
        )
    )
    for key in ("mse", "fmse", "psnr", "composite_mse", "stage1_mse"):
        assert ev[key] == pytest.approx(on_disk[key], rel=1e-5), key
    assert (tmp_path / "ev" / "metrics.json").is_file()


def test_resumed_run_ends_where_the_uninterrupted_one_does(tmp_path):
    data = tmp_path / "data"
    _train(_argv(tmp_path / "full", data, epochs=2))
    _train(_argv(tmp_path / "part", data, epochs=1))
    _train(_argv(tmp_path / "part", data, epochs=2, extra=("--resume", str(tmp_path / "part" / "last.pt"))))
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "last.pt")
    assert (
        a.keys()
        == b.keys()
        >= {"package", "config", "model", "optimizer", "scheduler", "scaler", "epoch", "step", "best_mse", "rng"}
    )
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "step"):
        assert_same_tensors(a[key], b[key], key)


def test_resume_with_another_model_config_is_refused_before_anything_is_written(tmp_path):
    """Resuming an iSSAM run with a FRIH model config names the differing key and leaves config.yaml / RUN.json
    untouched (it used to overwrite both, then die in load_state_dict)."""
    from shared.logger import RunDirError

    out = tmp_path / "run"
    _train(_argv(out, tmp_path / "data", epochs=1, extra=("--model.arch", "issam")))
    before = {name: (out / name).read_bytes() for name in ("config.yaml", "RUN.json")}
    with pytest.raises(RunDirError, match=r"model\.arch"):
        _train(_argv(out, tmp_path / "data", epochs=2, extra=("--resume", str(out / "last.pt"))))
    assert {name: (out / name).read_bytes() for name in before} == before
    with pytest.raises(RunDirError, match=r"loss\.module_weight"):  # the loss is part of what is trained, too
        _train(
            _argv(
                out,
                tmp_path / "data",
                epochs=2,
                extra=("--model.arch", "issam", "--loss.module_weight", "0", "--resume", str(out / "last.pt")),
            )
        )
    assert {name: (out / name).read_bytes() for name in before} == before


def test_eval_reads_a_checkpoint_written_before_the_run_config_names(tmp_path):
    """Checkpoints store their config; one written with eval_every / log_every / amp "none" / device null still
    evaluates, with the evaluation's own output_dir, device and amp."""
    old = config_to_dict(Config())
    for new_name, old_name in (("eval_interval", "eval_every"), ("log_interval", "log_every")):
        old[old_name] = old.pop(new_name)
    old.update(name="default", amp="none", device=None, output_dir="runs/elsewhere")
    for key in ("checkpoint_interval", "tensorboard"):
        del old[key]
    save_checkpoint({"package": "frih", "model": {}, "config": old}, tmp_path / "old.pt")
    ev = frih_eval.parse_args(["--checkpoint", str(tmp_path / "old.pt"), "--data.eval_size", "64"])
    cfg = ev.config
    assert (ev.checkpoint, ev.output_dir, cfg.output_dir, cfg.device, cfg.amp, cfg.data.eval_size) == (
        tmp_path / "old.pt",
        tmp_path / "eval",
        None,
        "auto",
        "off",
        64,
    )
    assert cfg.model == Config().model and cfg.log_interval == 20


def test_unknown_config_key_is_an_error(tmp_path):
    with pytest.raises(SystemExit):
        frih_train.parse_args(["--output_dir", str(tmp_path), "--model.clusters", "3"])


@pytest.mark.slow
def test_embedded_default_stage1_and_frih_beat_the_composite(tmp_path):
    """The README claims of `python train.py` (configs/default.yaml): stage 1's own output is better than the
    composite in MSE and fMSE, and FRIH's final output lowers both by more than 10 % and improves on its stage 1."""
    m = _train(["--output_dir", str(tmp_path / "default")])
    assert m["stage1_mse"] < m["composite_mse"]
    assert m["stage1_fmse"] < m["composite_fmse"]
    assert m["frih_mse"] < 0.9 * m["composite_mse"]
    assert m["frih_fmse"] < 0.9 * m["composite_fmse"]
    assert m["frih_mse"] < m["stage1_mse"] and m["frih_fmse"] < m["stage1_fmse"]


@pytest.mark.parametrize("name", ["issam_iharmony4", "idih_iharmony4", "frih_iharmony4"])
def test_paper_recipes_hold_the_reference_schedule(name):
    from frih.model import build_model, count_parameters

    cfg = frih_train.parse_args(["-c", str(DEFAULT_CONFIG.parent / f"{name}.yaml")])
    assert (cfg.optim.lr, tuple(cfg.optim.betas), cfg.optim.eps, cfg.optim.weight_decay) == (
        1e-3,
        (0.9, 0.999),
        1e-8,
        0.0,
    )
    assert (cfg.optim.batch_size, cfg.optim.epochs, list(cfg.optim.milestones), cfg.optim.gamma) == (
        16,
        120,
        [105, 115],
        0.1,
    )
    assert (cfg.data.crop_size, tuple(cfg.data.crop_scale), cfg.data.flip_p, cfg.data.eval_size) == (
        256,
        (0.5, 1.0),
        0.5,
        256,
    )
    assert cfg.data.keep_background_prob == 0.05 and cfg.data.root is not None  # never silently synthetic
    expected = {"issam_iharmony4": 2_185_340, "idih_iharmony4": 8_301_284, "frih_iharmony4": 12_004_951}[name]
    assert count_parameters(build_model(cfg.model)) == expected
    assert cfg.loss.min_area == (1000.0 if name.startswith("issam") else 100.0)


def test_recipe_without_the_dataset_names_the_missing_path(tmp_path):
    recipe = DEFAULT_CONFIG.parent / "frih_iharmony4.yaml"
    with pytest.raises(FileNotFoundError, match="python -m shared.datasets info iharmony4") as err:
        _train(
            [
                "-c",
                str(recipe),
                "--data.root",
                str(tmp_path / "iHarmony4"),
                "--output_dir",
                str(tmp_path / "run"),
                "--device",
                "cpu",
            ]
        )
    assert str(tmp_path / "iHarmony4") in str(err.value)
