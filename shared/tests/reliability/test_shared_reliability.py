"""Reliability and security cases of the shared toolkit, each replayed as it was found (issue: "no code execution
from data, no silent random weights, no lost runs, caches that know their config").

Every test here failed before its fix: the evil CIFAR pickle ran its payload, a foreign or text file given as a
checkpoint gave a bare error or was never read, a wrong pretrained file trained from random weights, two runs started
in the same second shared a folder, NaN weights were saved, a NaN box scored AP 1.0, and an archive deleted a folder.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from shared.checkpoint import CheckpointError, NonFiniteStateError, load_checkpoint, save_checkpoint
from shared.classification import ClassificationConfig, DataConfig, build_classification_model, run_classification
from shared.config import ConfigError, load_yaml, parse_config
from shared.datasets import ChecksumError, UnsafeArchiveError, check_content, safe_extract, verify_dataset
from shared.logger import RunDirError, claim_run_dir, make_run_dir
from shared.metrics import coco_evaluate
from shared.noisy.data import load_cifar, noisy_labels_for
from shared.synthetic import write_cifar
from shared.testing import write_tiny_imagefolder
from shared.training import NonFiniteLossError, check_finite_parameters, make_grad_scaler, optimizer_step


# ------------------------------------------------------------------------------------------------ data files
class _Payload:
    """Unpickling this calls os.system (the classic pickle exploit)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar"), 10, train_size=10, test_size=5, seed=0)


def test_an_evil_cifar_batch_is_refused_without_running_its_payload(cifar_root, tmp_path):
    root = tmp_path / "evil"
    shutil.copytree(cifar_root, root)
    marker = tmp_path / "pwned"
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": _Payload(marker), "labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match=r"(?s)data_batch_1.*(posix|os)\.system.* is not allowed"):
        load_cifar(root, 10, train=True)
    assert not marker.exists(), "the payload ran"


def test_the_restricted_unpickler_still_reads_numpy_batches(cifar_root):
    split = load_cifar(cifar_root, 10, train=True)
    assert split.images.shape == (10, 3, 32, 32) and split.images.dtype == torch.uint8


def test_unpacked_cifar_batches_are_checked_against_the_published_md5(cifar_root, tmp_path):
    # A tree without the synthetic marker claims to be the real release: its batches must match the published md5.
    root = tmp_path / "claims_real"
    shutil.copytree(cifar_root, root)
    (root / "cifar-10-batches-py" / "_SYNTHETIC.json").unlink()
    with pytest.raises(ChecksumError, match="data_batch_1"):
        check_content("cifar10", root)
    with pytest.raises(ChecksumError, match="data_batch_1"):
        load_cifar(root, 10, train=True)
    report = verify_dataset("cifar10", root)
    assert not report.ok and any("data_batch_1" in f for f in report.checksum_failures)


def test_verify_counts_imagenet_classes_not_only_folders(tmp_path):
    for split in ("train", "val"):
        for c in range(3):
            (tmp_path / split / f"n{c:08d}").mkdir(parents=True)
    report = verify_dataset("imagenet1k", tmp_path)
    assert not report.ok and any("train: 3 sub-folders, expected 1000" in f for f in report.structure_failures)


def test_a_corrupt_image_in_an_imagefolder_is_named(tmp_path):
    for split in ("train", "val"):
        for c in range(2):
            folder = tmp_path / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(8):
                Image.fromarray(np.full((16, 16, 3), 40 * c + i, np.uint8)).save(folder / f"{i}.png")
    bad = tmp_path / "data" / "train" / "class1" / "3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cfg = _tiny_cfg(tmp_path / "data", tmp_path / "run", epochs=1)
    with pytest.raises(OSError, match="3.png"):
        run_classification(cfg, package="shared_test")


def test_an_archive_cannot_replace_a_folder_of_the_dataset_root(tmp_path):
    dest = tmp_path / "root"
    (dest / "images").mkdir(parents=True)
    (dest / "images" / "keep.jpg").write_bytes(b"precious")
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        data = b"a file called images"
        info = tarfile.TarInfo("images")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        other = tarfile.TarInfo("other.txt")
        other.size = 1
        tar.addfile(other, io.BytesIO(b"x"))
    with pytest.raises(UnsafeArchiveError, match="images"):
        safe_extract(archive, dest)
    assert (dest / "images" / "keep.jpg").read_bytes() == b"precious"
    assert not (dest / "other.txt").exists(), "nothing is moved when one entry conflicts"


# ------------------------------------------------------------------------------------------------ checkpoints
def test_a_text_file_or_a_foreign_checkpoint_is_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("epoch 3 looked good\n")
    with pytest.raises(CheckpointError, match=r"not a emo checkpoint: .*notes.txt is not a file written by torch.save"):
        load_checkpoint(text, package="emo")
    with pytest.raises(CheckpointError, match="not a emo checkpoint: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt", package="emo")
    foreign = tmp_path / "last.pt"
    torch.save({"package": "dmlp", "model": {}}, foreign)
    with pytest.raises(CheckpointError, match="written by package 'dmlp'"):
        load_checkpoint(foreign, package="emo")
    untagged = tmp_path / "untagged.pt"
    torch.save({"adaptors": {}}, untagged)
    with pytest.raises(CheckpointError, match="lacks the key\\(s\\) 'model'"):
        load_checkpoint(untagged, package="emo", required=("model",))
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Payload(tmp_path / "pwned")}, evil)
    with pytest.raises(CheckpointError, match="safe unpickler refuses .*posix.system"):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return write_tiny_imagefolder(tmp_path_factory.mktemp("imagefolder"), train_per_class=8, size=16)


def _tiny_cfg(root: Path, out: Path, **kw) -> ClassificationConfig:
    data = DataConfig(root=str(root), img_size=16, crop_pct=1.0, batch_size=8, eval_batch_size=8, workers=0)
    base = ClassificationConfig(
        model="resnet10t",
        data=data,
        epochs=1,
        warmup_epochs=0,
        lr=0.01,
        lr_base_batch=8,
        output_dir=str(out),
        tensorboard=False,
        device="cpu",
    )
    return dataclasses.replace(base, **kw)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_from_another_packages_run_is_refused_before_anything_is_written(tiny_folder, tmp_path):
    other = tmp_path / "dmlp_run"
    other.mkdir()
    torch.save({"package": "dmlp", "models": {}, "metrics": {}}, other / "last.pt")
    (other / "config.yaml").write_text("name: default\n")
    before = _snapshot(other)
    cfg = _tiny_cfg(tiny_folder, tmp_path / "unused", output_dir=None, resume=str(other / "last.pt"))
    with pytest.raises(CheckpointError, match="not a shared_test checkpoint"):
        run_classification(cfg, package="shared_test")
    assert _snapshot(other) == before
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a file written by torch.save"):
        run_classification(dataclasses.replace(cfg, resume=str(text)), package="shared_test")


def test_a_run_folder_of_another_package_or_config_is_refused(tmp_path):
    run = tmp_path / "run"
    claim_run_dir(run, "emo", {"epochs": 3, "lr": 0.2, "threads": 2})
    (run / "config.yaml").write_text("lr: 0.2\n")
    claim_run_dir(run, "emo", {"epochs": 3, "lr": 0.1, "threads": 2})  # nothing produced yet: a corrected rerun
    (run / "last.pt").write_bytes(b"results")
    with pytest.raises(RunDirError, match="already holds this emo run's results; a new run would write over"):
        claim_run_dir(run, "emo", {"epochs": 3, "lr": 0.1, "threads": 1})  # the same run again, run-level keys aside
    claim_run_dir(run, "emo", {"epochs": 3, "lr": 0.1, "threads": 1}, reuse_results=True)  # dmlp's stage reuse
    claim_run_dir(run, "emo", {"epochs": 3, "lr": 0.1, "threads": 1}, is_main=False)  # rank 0 decides (and writes)
    claim_run_dir(run, "emo", {"epochs": 3, "lr": 0.1, "threads": 1}, resume=True)  # run-level keys may change
    assert (run / "last.pt").read_bytes() == b"results"
    with pytest.raises(RunDirError, match="package 'emo', not dmlp"):
        claim_run_dir(run, "dmlp", {"epochs": 3, "lr": 0.1, "threads": 2})
    with pytest.raises(RunDirError, match="different config \\(lr\\)"):
        claim_run_dir(run, "emo", {"epochs": 3, "lr": 0.2, "threads": 2})
    claim_run_dir(run, "emo", {"epochs": 5, "lr": 0.1, "threads": 2}, resume=True)  # a resumed run may extend
    with pytest.raises(RunDirError, match="keys differ"):
        claim_run_dir(run, "emo", {"epochs": 5, "momentum": 0.9, "threads": 2}, resume=True)


def test_two_runs_started_in_the_same_second_get_two_folders(tmp_path):
    folders: list[Path] = []
    threads = [threading.Thread(target=lambda: folders.append(make_run_dir("pkg", "cfg", tmp_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(folders)) == 8 and all(f.is_dir() and not any(f.iterdir()) for f in folders)


# ------------------------------------------------------------------------------------------------ weights
def test_a_wrong_pretrained_file_is_an_error_not_random_weights(tiny_folder, tmp_path):
    # A detector's backbone file: the same network under "backbone." keys. timm's loader turns non-strict when the
    # class count differs from the file's (2 vs 1000) and used to load nothing, silently.
    wrong = tmp_path / "detector.pth"
    state = timm.create_model("resnet10t", num_classes=1000).state_dict()
    torch.save({f"backbone.{k}": v for k, v in state.items()}, wrong)
    cfg = _tiny_cfg(tiny_folder, tmp_path / "run", pretrained=str(wrong))
    with pytest.raises(ValueError, match="does not fit the model .*keys missing from the file: conv1.0.weight"):
        build_classification_model(cfg, num_classes=2)
    shapes = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=1000).state_dict(), shapes)
    with pytest.raises((ValueError, RuntimeError), match="size mismatch|another shape"):
        build_classification_model(dataclasses.replace(cfg, pretrained=str(shapes)), num_classes=2)
    right = tmp_path / "resnet10t.pth"
    torch.save({"model": timm.create_model("resnet10t", num_classes=1000).state_dict()}, right)
    lines: list[str] = []
    model = build_classification_model(dataclasses.replace(cfg, pretrained=str(right)), 2, lines.append)
    source = torch.load(right, weights_only=True)["model"]
    assert torch.equal(model.conv1[0].weight, source["conv1.0.weight"])
    assert model.fc.weight.shape == (2, 512)
    assert "classifier left at its initialisation: fc.weight, fc.bias" in lines[0]


def test_a_trainer_checkpoint_initialises_from_its_ema_and_keeps_a_same_size_head(tiny_folder, tmp_path):
    """``--pretrained`` with this repository's own checkpoint (``model`` and ``ema``): the EMA weights, as every
    loader here prefers them; a file whose classifier has the run's class count (10, not ImageNet's 1000) keeps it."""
    raw, ema = (timm.create_model("resnet10t", num_classes=10).state_dict() for _ in range(2))
    path = tmp_path / "last.pt"
    torch.save({"model": raw, "ema": ema, "epoch": 3}, path)
    cfg = _tiny_cfg(tiny_folder, tmp_path / "run", pretrained=str(path))
    lines: list[str] = []
    model = build_classification_model(cfg, 10, lines.append)
    assert torch.equal(model.conv1[0].weight, ema["conv1.0.weight"])
    assert not torch.equal(model.conv1[0].weight, raw["conv1.0.weight"])
    assert torch.equal(model.fc.weight, ema["fc.weight"]) and "initialisation: none" in lines[0]
    assert "state_dict" not in model.pretrained_cfg  # no second copy of the weights rides along with the model
    model = build_classification_model(cfg, 3)  # another class count: the head is replaced, the rest loaded
    assert model.fc.weight.shape == (3, 512) and torch.equal(model.conv1[0].weight, ema["conv1.0.weight"])


def test_a_timm_training_checkpoint_initialises_a_run(tiny_folder, tmp_path):
    """timm's train.py saves {'state_dict', 'state_dict_ema', 'args': Namespace}; torch.compile adds _orig_mod."""
    import argparse

    ema = timm.create_model("resnet10t", num_classes=10).state_dict()
    path = tmp_path / "model_best.pth.tar"
    torch.save(
        {
            "state_dict": timm.create_model("resnet10t", num_classes=10).state_dict(),
            "state_dict_ema": {f"_orig_mod.{k}": v for k, v in ema.items()},
            "args": argparse.Namespace(model="resnet10t", lr=0.1),
        },
        path,
    )
    model = build_classification_model(_tiny_cfg(tiny_folder, tmp_path / "run", pretrained=str(path)), 10)
    assert torch.equal(model.conv1[0].weight, ema["conv1.0.weight"]) and torch.equal(model.fc.weight, ema["fc.weight"])


# ------------------------------------------------------------------------------------------------ non-finite
def test_nan_weights_are_never_written_over_the_last_good_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "best": float("-inf")}, path)
    good = path.read_bytes()
    with pytest.raises(NonFiniteStateError, match="model.w"):
        save_checkpoint({"model": {"w": torch.tensor([1.0, float("nan"), 0.0])}}, path)
    assert path.read_bytes() == good


def test_a_non_finite_gradient_or_parameter_stops_before_damage():
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler = make_grad_scaler(torch.device("cpu"))
    weights = layer.weight.detach().clone()
    loss = torch.sqrt(layer.weight.sum() * 0) + 1.0  # the value is 1.0, its gradient 0 * inf = nan
    with pytest.raises(NonFiniteLossError, match="non-finite gradient of loss in parameter 0 at step 4"):
        optimizer_step(loss, optimizer, scaler, step=4)
    assert torch.equal(layer.weight, weights), "the optimizer step must not run"
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="weight after step 7"):
        check_finite_parameters(layer, 7)


def test_a_nan_box_is_an_error_not_ap_1(tmp_path):
    gt = {
        "images": [{"id": 1, "width": 10, "height": 10}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0}],
    }
    with pytest.raises(ValueError, match="non-finite score or box"):
        coco_evaluate(gt, [{"image_id": 1, "category_id": 1, "bbox": [float("nan"), 1, 4, 4], "score": 0.9}])


# ------------------------------------------------------------------------------------------------ caches, config
def test_a_changed_noise_rate_does_not_reuse_the_cached_labels(tmp_path):
    clean = np.arange(100) % 10
    path = tmp_path / "noisy_labels.json"
    noisy_labels_for(clean, "sym", 0.8, 10, seed=0, path=path)
    with pytest.raises(ValueError, match="rate 0.8 .* rate 0.2"):
        noisy_labels_for(clean, "sym", 0.2, 10, seed=0, path=path)
    with pytest.raises(ValueError, match="seed 0.*seed 1"):
        noisy_labels_for(clean, "sym", 0.8, 10, seed=1, path=path)


def test_duplicate_yaml_keys_are_an_error(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("lr: 0.1\nepochs: 3\nlr: 0.2\n")
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        load_yaml(path)


@dataclasses.dataclass
class _Flags:
    tensorboard: bool = True
    epochs: int = 1


def test_boolean_flags_accept_true_and_false():
    assert parse_config(_Flags, ["--tensorboard", "false"]).tensorboard is False
    assert parse_config(_Flags, ["--tensorboard", "yes", "--epochs", "2"]).tensorboard is True
    assert parse_config(_Flags, ["--no-tensorboard"]).tensorboard is False
    assert parse_config(_Flags, ["--tensorboard"]).tensorboard is True
    with pytest.raises(SystemExit):
        parse_config(_Flags, ["--tensorboard", "maybe"])


def test_the_recipe_of_a_split_file_is_checked(tmp_path):
    from shared.datasets.coco_partial import RECIPE_KEY, ensure_partial_split

    ann = tmp_path / "instances_train2017.json"
    coco = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 8, "height": 8} for i in range(20)],
        "annotations": [],
        "categories": [{"id": 1, "name": "a"}],
    }
    ann.write_text(json.dumps(coco))
    first, _ = ensure_partial_split(ann, 10, 1, seed_offset=0)
    offset, _ = ensure_partial_split(ann, 10, 1, seed_offset=7)
    assert first != offset and json.loads(offset.read_text())[RECIPE_KEY]["seed_offset"] == 7
    coco["images"] = coco["images"][:10]  # the source changes: the split is drawn again from the new file
    ann.write_text(json.dumps(coco))
    again, _ = ensure_partial_split(ann, 10, 1, seed_offset=0)
    assert len(json.loads(again.read_text())["images"]) == 1
    ann.write_text(ann.read_text()[:-20])  # truncated
    with pytest.raises(ValueError, match="instances_train2017.json is not valid JSON"):
        ensure_partial_split(ann, 10, 1, seed_offset=0)


def test_plain_http_without_a_checksum_is_refused(tmp_path):
    from shared.datasets import DatasetDownloadError, download_file

    with pytest.raises(DatasetDownloadError, match="plain http and no published checksum"):
        download_file("http://example.invalid/data.zip", tmp_path / "data.zip")
    assert not (tmp_path / "data.zip.part").exists()
