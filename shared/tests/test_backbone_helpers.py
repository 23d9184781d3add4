"""shared.weights, shared.export, shared.entrypoints and the detection loop pieces of shared.detection."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from shared.checkpoint import save_checkpoint
from shared.detection import (
    CocoDataConfig,
    FrozenBN,
    check_checkpoint_categories,
    freeze_modules,
    init_fpn_mmdet,
    synthetic_coco_root,
    targets_to_device,
)
from shared.distributed import DistContext
from shared.entrypoints import (
    end_epoch,
    finish_run,
    load_strict,
    load_trained_checkpoint,
    open_eval_logger,
    run_distributed,
    wrap_ddp,
)
from shared.logger import RunLogger
from shared.testing import single_torch_thread  # noqa: F401  (autouse fixture)
from shared.weights import check_state_dict_fits, pick_wrapped_state_dict, strip_wrapper_prefixes

LAYOUTS = (("state_dict_ema", "state_dict"), ("model_ema", "model"), ("ema", "model"))
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_strip_wrapper_prefixes_nested():
    assert strip_wrapper_prefixes("module._orig_mod.module.conv.weight") == "conv.weight"
    assert strip_wrapper_prefixes("conv.module.weight") == "conv.module.weight"


def test_pick_wrapped_state_dict_prefers_ema_and_falls_back():
    raw, ema = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert pick_wrapped_state_dict({"model": raw, "ema": ema}, LAYOUTS) == (ema, ("ema", "model"))
    assert pick_wrapped_state_dict({"model": raw, "ema": ema}, LAYOUTS, use_ema=False)[0] is raw
    assert pick_wrapped_state_dict({"model": raw, "ema": None}, LAYOUTS)[0] is raw
    assert pick_wrapped_state_dict(raw, LAYOUTS) == (raw, None)
    assert pick_wrapped_state_dict({"state_dict_ema": None}, LAYOUTS) == (None, ("state_dict_ema", "state_dict"))
    with pytest.raises(TypeError, match="expected a dict checkpoint, got list"):
        pick_wrapped_state_dict([raw], LAYOUTS)


def test_check_state_dict_fits_names_every_problem():
    model = nn.Linear(3, 2)
    check_state_dict_fits(model, model.state_dict(), "ok.pth")
    bad = {"weight": torch.zeros(2, 4), "extra": torch.zeros(1)}
    with pytest.raises(RuntimeError, match=r"f.pth does not fit Linear: missing \['bias'\] \(1\)") as err:
        check_state_dict_fits(model, bad, "f.pth")
    assert "unexpected ['extra'] (1)" in str(err.value)
    assert "weight: file (2, 4) vs model (2, 3)" in str(err.value)


def test_export_matches_onnxruntime(tmp_path):
    from shared.export import export_classifier_onnx, onnxruntime_and_torch_outputs

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    out = export_classifier_onnx(model, tmp_path / "sub" / "m.onnx", img_size=16, batch_size=2)
    assert out.is_file()
    actual, expected = onnxruntime_and_torch_outputs(model, out, img_size=16, batch_size=2)
    assert actual.shape == expected.shape == (2, 5)
    assert abs(actual - expected).max() < 1e-4


def test_run_distributed_sets_threads_and_returns(monkeypatch):
    seen = {}
    result = run_distributed(SimpleNamespace(threads=1, device="cpu"), lambda ctx: seen.setdefault("ctx", ctx))
    assert result is seen["ctx"] and not result.distributed and torch.get_num_threads() == 1
    with pytest.raises(ZeroDivisionError):
        run_distributed(SimpleNamespace(threads=0, device="cpu"), lambda ctx: 1 / 0)
    assert wrap_ddp(nn.Linear(1, 1), CPU).__class__ is nn.Linear
    assert wrap_ddp(nn.Linear(1, 1), CPU, find_unused_parameters=True).__class__ is nn.Linear


def test_trained_checkpoint_and_strict_load_refusals(tmp_path):
    model = nn.Linear(3, 2)
    good = save_checkpoint({"package": "pkg", "model": model.state_dict()}, tmp_path / "good.pt")
    assert set(load_trained_checkpoint(good, "pkg", "train_x.py")["model"]) == {"weight", "bias"}
    flat = save_checkpoint({"package": "pkg", "model": torch.zeros(1)}, tmp_path / "flat.pt")
    with pytest.raises(ValueError, match="flat.pt is not a train_x.py checkpoint"):
        load_trained_checkpoint(flat, "pkg", "train_x.py")
    load_strict(model, model.state_dict(), good, "linear")
    with pytest.raises(ValueError, match="good.pt does not fit linear-2: "):
        load_strict(nn.Linear(4, 2), model.state_dict(), good, "linear-2")


def test_eval_logger_finish_and_end_epoch(tmp_path):
    cfg = SimpleNamespace(output_dir="", checkpoint=str(tmp_path / "run" / "last.pt"), checkpoint_interval=2)
    out_dir, logger = open_eval_logger(cfg, CPU)
    assert out_dir == tmp_path / "run" / "eval"
    assert finish_run(logger, {"AP": 0.5}, "line one", metrics_dir=out_dir) == {"AP": 0.5}
    assert json.loads((out_dir / "metrics.json").read_text())["AP"] == 0.5
    log = (out_dir / "eval.log").read_text()
    assert "line one" in log and f"metrics written to {out_dir / 'metrics.json'}" in log

    run_dir = tmp_path / "train"
    logger = RunLogger(run_dir, is_main=True, tensorboard=False)
    calls, hooked = [], []
    state = lambda: calls.append(1) or {"package": "pkg", "model": {}}  # noqa: E731
    end_epoch(cfg, CPU, logger, run_dir, 0, {"loss": 1.0}, False, False, state, lambda e, r: hooked.append(e))
    assert not calls and not (run_dir / "last.pt").exists()  # epoch 1 of interval 2: no checkpoint
    end_epoch(cfg, CPU, logger, run_dir, 1, {"loss": 0.5}, False, False, state, None)
    end_epoch(cfg, CPU, logger, run_dir, 2, {"loss": 0.4}, False, True, state, lambda e, r: hooked.append(e))
    assert len(calls) == 2 and (run_dir / "last.pt").is_file() and (run_dir / "best.pt").is_file()
    assert hooked == [0, 2]
    logger.close()


def test_detection_loop_pieces():
    images, targets = targets_to_device(
        [torch.zeros(3, 4, 4)], [{"boxes": torch.zeros(1, 4), "image_id": 7}], torch.device("cpu")
    )
    assert images[0].shape == (3, 4, 4) and targets[0]["image_id"] == 7 and targets[0]["boxes"].shape == (1, 4)

    fpn = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 3))
    nn.init.ones_(fpn[0].bias)
    init_fpn_mmdet(fpn)
    assert all(m.bias.abs().sum() == 0 for m in fpn)
    bound = (6 / (2 * 9 + 2 * 9)) ** 0.5  # xavier-uniform bound of the 3x3 conv
    assert fpn[1].weight.abs().max() <= bound

    body = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1), nn.BatchNorm2d(1))
    body.train()
    freeze_modules([body[0]], norm_eval_in=body)
    assert not body[0].weight.requires_grad and body[1].weight.requires_grad
    assert not body[1].training and not body[2].training
    body.train()
    freeze_modules([], None)
    assert body[1].training

    val_set = SimpleNamespace(cat_ids=[1, 3], annotation_file=Path("val.json"))
    check_checkpoint_categories({"categories": {"ids": [1, 3]}}, "c.pt", val_set)
    check_checkpoint_categories({}, "c.pt", val_set)
    with pytest.raises(ValueError, match=r"c.pt was trained on category ids \[1, 2\], but val.json has \[1, 3\]"):
        check_checkpoint_categories({"categories": {"ids": [1, 2]}}, "c.pt", val_set)
    assert CocoDataConfig().batch_size == 4
    assert CocoDataConfig(root="data/coco").coco_root() == Path("data/coco")


def test_parse_checkpoint_config_needs_a_checkpoint(capsys):
    from shared.entrypoints import parse_checkpoint_config

    with pytest.raises(SystemExit) as err:
        parse_checkpoint_config(CocoDataConfig, [], Path("unused.yaml"), "eval", "pkg")
    assert err.value.code == 2 and "--checkpoint PATH is required" in capsys.readouterr().err


def test_synthetic_coco_root_is_named_after_the_package_and_sizes(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHETIC_DATA_ROOT", str(tmp_path))

    @dataclass
    class Data:
        synthetic_train: int = 2
        synthetic_val: int = 1
        synthetic_image_size: int = 192
        synthetic_categories: int = 5

    assert synthetic_coco_root("pkg", Data(), is_main=False) == tmp_path / "pkg_coco_n2_v1_s192_c5"
    assert not (tmp_path / "pkg_coco_n2_v1_s192_c5").exists()  # only the main process writes
    root = synthetic_coco_root("pkg", Data(), num_unlabeled=1)
    assert root == tmp_path / "pkg_coco_n2_v1_u1_s192_c5"
    train = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    assert len(train["images"]) == 2 and len(train["categories"]) == 5
    assert len(list((root / "unlabeled2017").iterdir())) == 1
    # CocoDataConfig's embedded set: the same writer, no package prefix
    assert CocoDataConfig(synthetic=True, synthetic_train=2, synthetic_val=1, synthetic_categories=5).coco_root() == (
        tmp_path / "coco_n2_v1_s192_c5"
    )


def test_frozen_bn_scales_in_place_and_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    ours, plain = FrozenBN(8), FrozenBatchNorm2d(8)
    for buf in ("weight", "bias", "running_mean"):
        getattr(ours, buf).copy_(torch.randn(8, generator=g))
    ours.running_var.copy_(torch.rand(8, generator=g) + 0.5)
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 5, 7, generator=g)
    expected = plain(x)
    with torch.no_grad():
        y = x.clone()
        out = ours(y)
    assert out.data_ptr() == y.data_ptr() and torch.equal(out, expected)  # no new activation-sized tensor
    conv = nn.Conv2d(3, 8, 3)  # with autograd, after a convolution: the same output and gradients
    inp = torch.randn(2, 3, 7, 9, generator=g)
    grads = []
    for bn in (ours, plain):
        conv.zero_grad()
        bn(conv(inp)).square().sum().backward()
        grads.append(conv.weight.grad.clone())
    assert torch.equal(grads[0], grads[1])
    with torch.no_grad():  # a lower-precision input (autocast) is promoted as torchvision's is, not written over
        half = x.bfloat16()
        out = ours(half)
    assert out.dtype == plain(half).dtype == torch.float32 and torch.equal(half, x.bfloat16())
