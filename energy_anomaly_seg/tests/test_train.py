"""End to end on a tiny synthetic set: train.py (both phases) -> files, eval.py, exact resume; the embedded default
(slow) beats the energy baseline."""

import json
import shutil

import pytest
import torch

from energy_anomaly_seg import eval as eval_module
from energy_anomaly_seg import train as train_module
from energy_anomaly_seg import train_segmentor
from shared.testing import assert_resume_refused, assert_same_tensors

TINY = [
    "--model.variant",
    "deeplabv3_r18_d8_test",
    "--device",
    "cpu",
    "--log_interval",
    "2",
    "--checkpoint_interval",
    "2",
    "--synthetic.height",
    "32",
    "--synthetic.width",
    "64",
    "--synthetic.n_train",
    "6",
    "--synthetic.n_val",
    "2",
    "--synthetic.n_anomaly",
    "2",
    "--data.img_scale",
    "64",
    "32",
    "--data.crop_size",
    "32",
    "64",
    "--data.batch_size",
    "2",
    "--segmentor.train.iters",
    "3",
    "--optim.iters",
    "4",
    "--objective.refine_warmup_iters",
    "2",
    "--eval.img_scale",
    "64",
    "32",
    "--eval.scales",
    "1.0",
    "--no-eval.flip",
    "--eval.vis_images",
    "1",
]


def train(argv):
    return train_module.main(train_module.parse_args(argv))


def train_segmentor_run(argv):
    return train_segmentor.main(train_segmentor.parse_args(argv))


def evaluate(argv):
    return eval_module.main(eval_module.parse_args(argv))


@pytest.fixture
def tiny_args(tmp_path):
    return [*TINY, "--synthetic.root", str(tmp_path / "synthetic")]


@pytest.fixture
def keep_every_checkpoint(monkeypatch):
    """Also keep a copy of last.pt per (phase, iteration), to resume from the middle of a run."""
    original = train_module.save_checkpoint

    def save(state, path):
        out = original(state, path)
        if path.name == "last.pt":
            shutil.copy(path, path.with_name(f"{state['phase']}_{state['iteration']}.pt"))
        return out

    monkeypatch.setattr(train_module, "save_checkpoint", save)


def test_train_writes_run_folder_and_eval_reproduces_metrics(tmp_path, tiny_args):
    out = tmp_path / "run"
    metrics = train([*tiny_args, "--output_dir", str(out)])
    for name in ("config.yaml", "log.csv", "metrics.json", "last.pt", "train.log", "curves_synthetic_fs_static.png"):
        assert (out / name).is_file(), name
    assert list((out / "vis" / "synthetic_fs_static").glob("*.png"))
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["phase"] == "ood_head" and state["iteration"] == 4
    saved = json.loads((out / "metrics.json").read_text())
    for method in ("msp", "energy", "sleeg"):
        for metric in ("AP", "AUROC", "FPR95"):
            assert 0 <= saved[f"{method}_{metric}"] <= 100
    assert "segmentor_mIoU" in saved
    evaluated = evaluate(["--checkpoint", str(out / "last.pt"), "--output_dir", str(tmp_path / "eval")])
    assert evaluated["sleeg_AP"] == pytest.approx(metrics["sleeg_AP"])
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["energy_FPR95"] == pytest.approx(
        metrics["energy_FPR95"]
    )


def test_resumed_runs_end_where_an_uninterrupted_run_does(tmp_path, tiny_args, keep_every_checkpoint):
    full = tmp_path / "full"
    train([*tiny_args, "--output_dir", str(full), "--eval.datasets"])
    final = torch.load(full / "last.pt", weights_only=True)
    assert isinstance(final["pool"], list) and len(final["pool"]) == 1  # one crop pool per process
    # an ood_head checkpoint written before the per-rank pools (one pool state, not a list) resumes the same way
    middle = torch.load(full / "ood_head_2.pt", weights_only=True)
    torch.save({**middle, "pool": middle["pool"][0]}, full / "ood_head_2_old_layout.pt")
    for checkpoint in ("ood_head_2.pt", "segmentor_2.pt", "ood_head_2_old_layout.pt"):
        resumed = tmp_path / checkpoint
        train([*tiny_args, "--output_dir", str(resumed), "--eval.datasets", "--resume", str(full / checkpoint)])
        again = torch.load(resumed / "last.pt", weights_only=True)
        assert_same_tensors(final["model"], again["model"], checkpoint)
        assert_same_tensors(final["pool"], again["pool"], checkpoint)
    # a resume with another objective is refused before the run folder is touched
    other = [*tiny_args, "--eval.datasets", "--resume", str(full / "ood_head_2.pt"), "--objective.margin", "3"]
    assert_resume_refused(lambda: train(other), full, "objective.margin")
    # ... but not from the segmentor phase, where no OoD head has been trained yet (the evidence rows branch there)
    other[other.index("--resume") + 1] = str(full / "segmentor_2.pt")
    train([*other, "--output_dir", str(tmp_path / "branch")])
    assert (tmp_path / "branch" / "last.pt").is_file()


def test_pools_are_saved_per_process_and_each_restores_its_own():
    from shared.distributed import DistContext, gather_rank_states, own_rank_entry

    pool = train_module.make_pool(train_module.parse_args([]).anomalies)
    one = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    gathered = gather_rank_states(pool.state_dict(), one)
    assert isinstance(gathered, list) and len(gathered) == 1 and gathered[0]["count"] == 0
    pools = [{"count": r} for r in range(3)]
    assert [own_rank_entry(pools, r)["count"] for r in range(3)] == [0, 1, 2]
    assert own_rank_entry(pools[:1], 2)["count"] == 0  # written by fewer processes: rank 0's
    old = {"count": 5}  # the layout before per-rank pools: rank 0's pool, restored by every rank
    assert own_rank_entry(old, 1) is old


@pytest.mark.slow
@pytest.mark.ddp
def test_torchrun_processes_keep_and_resume_their_own_crop_pools(tmp_path):
    """Two gloo processes (the segmentor phase too: its DDP wrapper must not wait for the OoD head's gradients):
    last.pt holds both processes' crop pools, and after a resume each process continues from its own (the crops
    saved stay in their FIFO slots; the next iteration fills the slots after them)."""
    from shared.testing import run_torchrun

    args = [*TINY, "--synthetic.root", str(tmp_path / "synthetic"), "--data.batch_size", "4", "--eval.datasets"]
    args += ["--threads", "1"]
    run_torchrun("energy_anomaly_seg.train", [*args, "--optim.iters", "2", "--output_dir", str(tmp_path / "a")])
    first = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["pool"]
    assert len(first) == 2 and [p["count"] for p in first] == [8, 8]  # 2 iterations x 2 images x 2 crops
    assert not torch.equal(first[0]["patches"], first[1]["patches"])
    resume = ["--resume", str(tmp_path / "a" / "last.pt")]
    run_torchrun(
        "energy_anomaly_seg.train", [*args, "--optim.iters", "3", *resume, "--output_dir", str(tmp_path / "b")]
    )
    again = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["pool"]
    assert [p["count"] for p in again] == [12, 12]
    for rank in range(2):
        assert torch.equal(again[rank]["patches"][:8], first[rank]["patches"][:8]), rank


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--eval.score_formula", "released"),
        ("--anomalies.polygon", "convex"),
        ("--objective.ce_average", "mean"),
        ("--segmentor.train.ce_average", "none"),
    ],
)
def test_option_values_are_checked_when_the_config_is_parsed(flag, value, capsys):
    with pytest.raises(SystemExit):
        train_module.parse_args([*TINY, flag, value])
    assert flag.removeprefix("--") in capsys.readouterr().err


def test_train_segmentor_checkpoint_feeds_sleeg(tmp_path):
    seg_args = [
        *TINY[: TINY.index("--segmentor.train.iters")],
        "--synthetic.root",
        str(tmp_path / "s"),
        "--data.dataset",
        "synthetic",
        "--data.num_workers",
        "0",
    ]
    seg_out = tmp_path / "segmentor"
    metrics = train_segmentor_run(
        [*seg_args, "--output_dir", str(seg_out), "--optim.iters", "2", "--allow_random_init", "--optim.lr", "0.05"]
    )
    assert 0 <= metrics["mIoU"] <= 100 and (seg_out / "last.pt").is_file()
    with pytest.raises(ValueError, match="backbone_pretrained"):  # the Cityscapes recipe never starts from random
        train_segmentor_run([*seg_args, "--output_dir", str(tmp_path / "x"), "--optim.iters", "1"])
    run = tmp_path / "sleeg"
    train(
        [
            *seg_args,
            "--output_dir",
            str(run),
            "--segmentor.checkpoint",
            str(seg_out / "last.pt"),
            "--optim.iters",
            "2",
            "--eval.datasets",
        ]
    )
    segmentor = torch.load(seg_out / "last.pt", weights_only=True)["model"]
    sleeg = torch.load(run / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(segmentor[k], sleeg[k]) for k in segmentor)  # frozen: unchanged by head training
    assert any(k.startswith("patch_head.") for k in sleeg) and not any(k.startswith("patch_head.") for k in segmentor)


@pytest.mark.parametrize(
    "spec, error",
    [("fs_static:{tmp}/missing", FileNotFoundError), ("fishy:{tmp}", ValueError), ("fs_laf_val={tmp}", ValueError)],
)
def test_bad_eval_dataset_stops_the_run_before_training(tmp_path, tiny_args, spec, error):
    out = tmp_path / "run"
    with pytest.raises(error, match="layout|not found"):
        train([*tiny_args, "--output_dir", str(out), "--eval.datasets", spec.format(tmp=tmp_path)])
    assert not (out / "last.pt").exists() and not (out / "log.csv").exists()  # nothing was trained


def test_missing_segmentor_is_an_error(tmp_path, tiny_args):
    with pytest.raises(ValueError, match="never runs on a random segmentor"):
        train([*tiny_args, "--output_dir", str(tmp_path / "x"), "--segmentor.train.iters", "0"])


@pytest.mark.slow
def test_embedded_default_sleeg_beats_energy(tmp_path):
    metrics = train(["--output_dir", str(tmp_path / "default")])
    assert metrics["sleeg_AP"] > metrics["energy_AP"]
    assert metrics["sleeg_AP"] > metrics["msp_AP"]


def test_every_recipe_yaml_is_a_valid_config():
    from pathlib import Path

    configs = Path(train_module.__file__).parent / "configs"
    parsed = {
        p.stem: (train_segmentor if p.stem.startswith("segmentor") else train_module).parse_args(["-c", str(p)])
        for p in configs.glob("*.yaml")
    }
    assert set(parsed) == {"default", "cityscapes_r101", "cityscapes_r101_released_code", "segmentor_r101_40k"}
    paper, code = parsed["cityscapes_r101"], parsed["cityscapes_r101_released_code"]
    assert (paper.objective.margin, paper.optim.iters, paper.objective.refine_warmup_iters) == (15.0, 40000, 6000)
    assert (code.objective.margin, code.optim.iters) == (20.0, 80000)
    # released training forward: the parent class's energy-only score for refinement and for the TORE guide
    assert (paper.objective.refine_score, paper.objective.refine_lambda, paper.objective.tore_guide) == (
        "paper",
        0.5,
        "energy",
    )
    assert (code.objective.refine_score, code.objective.tore_guide) == ("released", "energy")
    assert (parsed["default"].objective.refine_score, parsed["default"].objective.tore_guide) == ("paper", "energy")
    assert (paper.eval.score_formula, paper.eval.score_weight) == ("paper", 0.5)
    assert (code.eval.score_formula, code.eval.score_weight) == ("code", 0.3)


def test_sleeg_settings_take_every_objective_key_by_name():
    from dataclasses import fields

    cfg = train_module.parse_args(
        ["--objective.margin", "20", "--objective.refine_score", "released", "--anomalies.pastes_per_image", "3"]
    )
    settings = train_module.sleeg_settings(cfg)
    for f in fields(cfg.objective):
        assert getattr(settings, f.name) == getattr(cfg.objective, f.name), f.name
    assert (settings.margin, settings.refine_score, settings.pastes_per_image) == (20.0, "released", 3)
    assert settings.noise_ratio == cfg.anomalies.noise_ratio
