"""Reliability of MixTeacher's training and tools: zero boxes through every head, the non-finite guard (student and
EMA teacher, last good checkpoint kept byte for byte), checkpoints and run folders checked before anything is
written, and partial splits that follow their recipe (seed offset, changed or truncated source annotations)."""

import json
from pathlib import Path

import pytest
import torch

from mixteacher.config import DataConfig
from mixteacher.data import build_datasets, partial_split_files
from mixteacher.mix_teacher import MixTeacher, MixTeacherSettings
from mixteacher.model import MixedScaleFasterRCNN
from mixteacher.teacher import box_jitter_uncertainty
from mixteacher.tests.helpers import mining_settings
from mixteacher.tests.test_train import TINY, eval_run, train_run, visualize_run
from shared.checkpoint import CheckpointError, find_nonfinite, load_checkpoint
from shared.datasets.coco_partial import RECIPE_KEY, labeled_image_indices
from shared.logger import RunDirError
from shared.training import NonFiniteLossError

NUM_CLASSES = 3
EMPTY = torch.zeros(0, 4)


def _images(g: torch.Generator) -> list[torch.Tensor]:
    return [torch.rand(3, 96, 128, generator=g), torch.rand(3, 128, 96, generator=g)]


def _without_proposals(model: MixedScaleFasterRCNN, images_without: tuple[int, ...]) -> None:
    """Make the RPN of ``model`` return no proposal for the images ``images_without`` (as a diverged RPN does)."""
    forward = model.rpn.forward

    def rpn_forward(images, features, targets=None):
        proposals, losses = forward(images, features, targets)
        return [p[:0] if i in images_without else p for i, p in enumerate(proposals)], losses

    model.rpn.forward = rpn_forward


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------- 1. zero boxes


def test_roi_predict_gives_empty_outputs_for_zero_boxes(tiny_detector_cfg):
    torch.manual_seed(0)
    model = MixedScaleFasterRCNN(NUM_CLASSES, tiny_detector_cfg).eval()
    images, _ = model.preprocess(_images(torch.Generator().manual_seed(0)))
    features = model.extract_features(images, ["mixed"])["mixed"][1]
    probs, boxes = model.roi_predict(features, [EMPTY, EMPTY], images.image_sizes)  # the whole batch
    assert probs.shape == (0, NUM_CLASSES + 1) and boxes.shape == (0, NUM_CLASSES + 1, 4)
    one = torch.tensor([[8.0, 8.0, 40.0, 50.0]])
    probs, boxes = model.roi_predict(features, [EMPTY, one], images.image_sizes)  # one image
    assert probs.shape == (1, NUM_CLASSES + 1) and boxes.shape == (1, NUM_CLASSES + 1, 4)
    torch.testing.assert_close(probs.sum(1), torch.ones(1))
    # jitter uncertainty through roi_predict: no pseudo box -> no uncertainty, no head call on an empty batch

    def regress(flat: torch.Tensor) -> torch.Tensor:
        return model.roi_predict(features, [flat, EMPTY], images.image_sizes)[1]

    assert box_jitter_uncertainty(EMPTY, torch.zeros(0, dtype=torch.long), regress).shape == (0,)
    assert box_jitter_uncertainty(one, torch.tensor([2]), regress).shape == (1,)


def test_teacher_inference_without_proposals_gives_empty_detections(tiny_detector_cfg):
    torch.manual_seed(0)
    model = MixedScaleFasterRCNN(NUM_CLASSES, tiny_detector_cfg).eval()
    _without_proposals(model, (0, 1))
    for scale in ("regular", "mixed"):
        for det in model.predict(_images(torch.Generator().manual_seed(1)), scale):
            assert det["boxes"].shape == (0, 4) and det["scores"].shape == (0,) and det["labels"].shape == (0,)
    method = MixTeacher(model, MixTeacherSettings())
    _without_proposals(method.teacher, (0, 1))
    pseudo, _, _ = method.pseudo_label(_images(torch.Generator().manual_seed(2)))
    assert [(p.boxes.shape, p.labels.shape, p.scores.shape, p.uncertainty.shape) for p in pseudo] == [
        ((0, 4), (0,), (0,), (0,))
    ] * 2


def _detections_for(images_with: tuple[int, ...]):
    """Teacher detections (one confident, two low-confidence boxes) for the images ``images_with`` only."""
    boxes = torch.tensor([[10.0, 10.0, 60.0, 50.0], [30.0, 40.0, 80.0, 90.0], [5.0, 50.0, 40.0, 90.0]])

    def detect(images, features, proposal_mode="training"):
        n = [3 if i in images_with else 0 for i in range(len(images.image_sizes))]
        return [
            {
                "boxes": boxes[:k].clone(),
                "scores": torch.tensor([0.95, 0.7, 0.6])[:k],
                "labels": torch.tensor([1, 2, 3])[:k],
            }
            for k in n
        ]

    return detect


@pytest.mark.parametrize("mining_features", ["student", "teacher"])
@pytest.mark.parametrize("empty", [(0,), (0, 1)], ids=["one_image", "whole_batch"])
def test_student_losses_and_mining_with_zero_proposals_and_pseudo_boxes(
    tiny_detector_cfg, monkeypatch, empty, mining_features
):
    """Student proposals and teacher pseudo boxes missing for one image or all: teacher inference, the jitter
    uncertainty, mining, the teacher's background weighting and the student's losses still run, with finite
    losses and gradients."""
    torch.manual_seed(0)
    settings = mining_settings(mining_features)
    method = MixTeacher(MixedScaleFasterRCNN(NUM_CLASSES, tiny_detector_cfg), settings).train()
    _without_proposals(method.student, empty)
    monkeypatch.setattr(method.teacher, "detect", _detections_for(tuple(i for i in (0, 1) if i not in empty)))
    g = torch.Generator().manual_seed(0)
    batch = {
        "labeled_images": [torch.rand(3, 96, 128, generator=g)],
        "labeled_targets": [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([2])}],
        "weak_images": _images(g),
        "strong_images": _images(g),
        "weak_to_strong": torch.eye(3, dtype=torch.float64).repeat(2, 1, 1),
    }
    loss, logs = method(batch, step=10)
    assert torch.isfinite(loss)
    assert logs["pseudo_boxes"] == (2 - len(empty)) / 2  # the confident box of each image that has one
    if len(empty) == 1:
        assert logs["mined"] > 0  # mining ran on the image with proposals and low-confidence boxes
    else:
        assert logs["mined"] == 0 and logs["unsup_rcnn_cls"] == 0 and logs["unsup_rcnn_box"] == 0
    loss.backward()
    grads = [p.grad for p in method.student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------------------- 2. non-finite guard


def _record_saves(monkeypatch) -> list[tuple[Path, bytes]]:
    """Keep the bytes of every checkpoint the trainer writes, to compare with what is on disk after a failure."""
    import shared.checkpoint

    saves: list[tuple[Path, bytes]] = []
    save = shared.checkpoint.save_checkpoint

    def recording(state, path, *args, **kwargs):
        path = save(state, path, *args, **kwargs)
        if path.name == "last.pt":
            saves.append((path, path.read_bytes()))
        return path

    monkeypatch.setattr(shared.checkpoint, "save_checkpoint", recording)  # what save_last_and_best calls
    return saves


def test_diverging_lr_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """lr 1e6 once crashed in roi_predict (the diverged RPN leaves no proposal); now it stops at the first
    non-finite step with an error naming it, and last.pt is the last good one, byte for byte."""
    saves = _record_saves(monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"at step \d+|after step \d+") as err:
        train_run(
            [
                "--output_dir",
                str(out),
                "--max_iters",
                "6",
                "--checkpoint_interval",
                "1",
                "--eval_interval",
                "100",
                "--no-compare_supervised",
                "--lr",
                "1e6",
                "--warmup_iters",
                "0",
                *TINY,
            ]
        )
    assert saves, "the first step at lr 1e6 is finite and is checkpointed"
    path, written = saves[-1]
    assert path == out / "last.pt" and path.read_bytes() == written
    state = load_checkpoint(path)
    assert not find_nonfinite(state)
    assert f"step {state['step']}" in str(err.value)  # the failing step is the one after the last checkpoint


def test_nan_in_the_ema_teacher_stops_the_run_before_it_is_checkpointed(tmp_path, monkeypatch):
    saves = _record_saves(monkeypatch)
    update = MixTeacher.update_teacher

    def poisoned(self, step):
        momentum = update(self, step)
        if step == 2:
            next(self.teacher.parameters()).data.view(-1)[0] = float("nan")
        return momentum

    monkeypatch.setattr(MixTeacher, "update_teacher", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="EMA teacher .* after step 2"):
        train_run(
            [
                "--output_dir",
                str(out),
                "--max_iters",
                "4",
                "--checkpoint_interval",
                "1",
                "--eval_interval",
                "100",
                "--no-compare_supervised",
                *TINY,
            ]
        )
    assert [load_checkpoint(p)["step"] for p, _ in saves[-1:]] == [2]
    assert (out / "last.pt").read_bytes() == saves[-1][1]
    assert not find_nonfinite(load_checkpoint(out / "last.pt")["teacher"])


# ------------------------------------------------------------------------- 3. checkpoints and run folders


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A one-iteration run of the embedded default's code path, with its supervised comparison."""
    out = tmp_path_factory.mktemp("mixteacher_reliability") / "run"
    train_run(
        ["--output_dir", str(out), "--max_iters", "1", "--checkpoint_interval", "1", "--eval_interval", "1", *TINY]
    )
    return out


def _bad_checkpoints(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    text, emo, foreign = folder / "notes.pt", folder / "emo.pt", folder / "foreign.pt"
    text.write_text("not a checkpoint\n")
    torch.save({"package": "emo", "model": {}}, emo)
    torch.save({"model": {"weight": torch.zeros(2)}, "epoch": 3}, foreign)  # no package key, no MixTeacher keys
    return {"missing": folder / "missing.pt", "text": text, "other_package": emo, "foreign": foreign}


@pytest.mark.parametrize("kind", ["missing", "text", "other_package", "foreign"])
def test_resume_from_a_file_that_is_not_a_mixteacher_checkpoint_is_refused_before_writing(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)  # a new runs/ folder would appear here
    path = _bad_checkpoints(tmp_path / "old")[kind]
    before = _snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="not a mixteacher checkpoint"):
        train_run(["--resume", str(path), "--max_iters", "1", *TINY])  # run folder: the file's folder
    with pytest.raises(CheckpointError, match="not a mixteacher checkpoint"):
        train_run(["--resume", str(path), "--output_dir", str(tmp_path / "new"), "--max_iters", "1", *TINY])
    assert _snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_checkpoints_record_the_package_and_tools_refuse_foreign_files(finished_run, tmp_path):
    state = load_checkpoint(finished_run / "last.pt")
    assert state["package"] == "mixteacher"
    assert load_checkpoint(finished_run / "supervised" / "last.pt")["package"] == "mixteacher"
    for folder in (finished_run, finished_run / "supervised"):
        record = json.loads((folder / "RUN.json").read_text())
        assert record["package"] == "mixteacher" and record["config"]["max_iters"] == 1
    assert json.loads((finished_run / "supervised" / "RUN.json").read_text())["config"]["method"] == "supervised"
    bad = _bad_checkpoints(tmp_path / "bad")
    before = _snapshot(tmp_path)
    for path in bad.values():
        with pytest.raises(CheckpointError, match="not a mixteacher checkpoint"):
            eval_run(["--checkpoint", str(path)])
        with pytest.raises(CheckpointError, match="not a mixteacher checkpoint"):
            visualize_run(["--checkpoint", str(path)])
    assert _snapshot(tmp_path) == before  # no eval/ or visualize/ folder


def test_a_run_folder_of_another_package_or_config_is_refused_before_writing(finished_run, tmp_path):
    before = _snapshot(finished_run)
    with pytest.raises(RunDirError, match="different config"):  # a fresh run with other values into the folder
        train_run(["--output_dir", str(finished_run), "--max_iters", "2", *TINY])
    assert _snapshot(finished_run) == before
    other = tmp_path / "emo_run"
    other.mkdir()
    (other / "RUN.json").write_text(json.dumps({"package": "emo", "config": {"epochs": 1}}))
    before = _snapshot(other)
    with pytest.raises(RunDirError, match="package 'emo'"):
        train_run(["--output_dir", str(other), "--max_iters", "1", *TINY])
    assert _snapshot(other) == before


# ------------------------------------------------------------------------------------------- 4. partial splits


@pytest.fixture
def coco_root(tmp_path) -> Path:
    from shared.synthetic import write_coco_detection

    return write_coco_detection(tmp_path / "coco", num_train=20, num_val=1, image_size=192, num_categories=5)


def _image_ids(path: Path) -> list[int]:
    return sorted(image["id"] for image in json.loads(path.read_text())["images"])


def test_another_seed_offset_in_an_existing_split_folder_gives_its_own_split(coco_root):
    train = coco_root / "annotations" / "instances_train2017.json"
    split_dir = coco_root / "annotations" / "semi_supervised"
    ids = [image["id"] for image in json.loads(train.read_text())["images"]]
    labeled0, _ = partial_split_files(train, 20, 1, 0, split_dir)
    first = labeled0.read_bytes()
    labeled7, unlabeled7 = partial_split_files(train, 20, 1, 7, split_dir)
    assert labeled7 != labeled0 and labeled0.read_bytes() == first  # the offset-0 split is kept as it was
    for offset, path in ((0, labeled0), (7, labeled7)):
        assert _image_ids(path) == sorted(ids[i] for i in labeled_image_indices(len(ids), 20, 1, offset))
        assert json.loads(path.read_text())[RECIPE_KEY]["seed_offset"] == offset
    assert _image_ids(labeled7) != _image_ids(labeled0)
    assert sorted(_image_ids(labeled7) + _image_ids(unlabeled7)) == sorted(ids)
    # the train script's path: data.seed_offset reaches the split
    data = DataConfig(root=str(coco_root), percent=20, fold=1, seed_offset=7, workers=0)
    train_set, _ = build_datasets(data)
    assert train_set.labeled.annotation_file == labeled7
    assert sorted(train_set.labeled.coco.getImgIds()) == _image_ids(labeled7)


def test_changed_or_truncated_train_annotations_are_read_again(coco_root):
    train = coco_root / "annotations" / "instances_train2017.json"
    split_dir = coco_root / "annotations" / "semi_supervised"
    labeled, unlabeled = partial_split_files(train, 20, 1, 0, split_dir)
    coco = json.loads(train.read_text())
    kept = coco["images"][:15]  # a changed source: five images fewer
    coco["images"] = kept
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in {im["id"] for im in kept}]
    train.write_text(json.dumps(coco))
    assert partial_split_files(train, 20, 1, 0, split_dir) == (labeled, unlabeled)
    ids = [image["id"] for image in kept]
    assert sorted(_image_ids(labeled) + _image_ids(unlabeled)) == sorted(ids)
    assert _image_ids(labeled) == sorted(ids[i] for i in labeled_image_indices(len(ids), 20, 1, 0))
    content = train.read_bytes()
    train.write_bytes(content[: len(content) // 2])  # truncated: a clear error naming the file, no stale split
    with pytest.raises(ValueError, match="instances_train2017.json"):
        partial_split_files(train, 20, 1, 0, split_dir)


def test_embedded_synthetic_set_gets_its_split_with_a_recipe():
    data = DataConfig(synthetic=True, synthetic_train=20, synthetic_val=4, percent=20, fold=1, workers=0)
    train_set, _ = build_datasets(data)
    from shared.datasets.download import file_digest

    recipe = json.loads(train_set.labeled.annotation_file.read_text())[RECIPE_KEY]
    train = Path(train_set.labeled.annotation_file).parents[1] / "instances_train2017.json"
    assert train_set.labeled.annotation_file.name == "instances_train2017.1@20.json"
    assert recipe == {
        "percent": 20.0,
        "fold": 1,
        "seed_offset": 0,
        "sampling": "softteacher",
        "source": train.name,
        "source_size": train.stat().st_size,
        "source_sha256": file_digest(train, "sha256"),
    }
    assert len(train_set.labeled) + train_set.num_unlabeled == 20


# --------------------------------------------------------------------------------- 5. resume config, scales, eval


def test_resume_with_another_detector_or_without_its_recipe_is_refused_before_writing(finished_run, tmp_path):
    """``--resume`` compares the command line's config with the checkpoint's (TrainConfig.RESUME_SECTIONS): another
    detector, or a resume that forgot its ``-c`` recipe, is refused naming the key, and the run folder is untouched."""
    last = finished_run / "last.pt"
    before = _snapshot(finished_run)
    with pytest.raises(RunDirError, match=r"detector\.fpn_channels"):
        train_run(["--resume", str(last), "--max_iters", "2", *TINY, "--detector.fpn_channels", "8"])
    with pytest.raises(RunDirError, match=r"detector\.base_width"):  # no TINY: the embedded default's detector
        train_run(["--resume", str(last), "--max_iters", "2", "--no-tensorboard"])
    with pytest.raises(RunDirError, match=r"data\.fold"):  # another labeled split
        train_run(["--resume", str(last), "--max_iters", "2", *TINY, "--data.fold", "2"])
    assert _snapshot(finished_run) == before


def test_resume_check_allows_run_level_and_path_changes():
    from dataclasses import replace

    from mixteacher import train
    from shared.config import config_to_dict

    cfg = train.parse_args(TINY)
    stored = {"config": config_to_dict(cfg)}
    moved = replace(cfg, resume="last.pt", max_iters=9, threads=2, data=replace(cfg.data, root="/elsewhere", workers=3))
    train.check_resume(moved, stored)  # more iterations, threads, another data root: allowed
    with pytest.raises(RunDirError, match=r"mixteacher\.mining"):
        train.check_resume(replace(moved, mixteacher=replace(cfg.mixteacher, mining=False)), stored)
    with pytest.raises(RunDirError, match=r"^--resume last.pt .*\bmethod\b"):
        train.check_resume(replace(moved, method="supervised"), stored)
    # a checkpoint from before data.batch_counts was trained with the inner-binomial rule
    old = {
        "config": {
            **stored["config"],
            "data": {k: v for k, v in stored["config"]["data"].items() if k != "batch_counts"},
        }
    }
    with pytest.raises(RunDirError, match=r"data\.batch_counts"):
        train.check_resume(moved, old)
    train.check_resume(replace(moved, data=replace(moved.data, batch_counts="inner_binomial")), old)


@pytest.mark.parametrize(
    "flags,key",
    [
        (["--mixteacher.teacher_scale", "mix"], "mixteacher.teacher_scale"),
        (["--mixteacher.train_scales", "regular", "half"], "mixteacher.train_scales"),
        (["--test_scales", "regular", "mixd"], "test_scales"),
        (["--test_scales", "[]"], "test_scales"),
        (["--report_scale", "mixd"], "report_scale"),
        (["--test_scales", "[regular]", "--report_scale", "mixed"], "report_scale"),
    ],
)
def test_bad_scales_are_refused_when_the_config_is_read(flags, key, capsys):
    from mixteacher import train
    from mixteacher.config import MixTeacherSettings
    from shared.config import ConfigError

    with pytest.raises(SystemExit):
        train.parse_args([*TINY, *flags])
    assert f"'{key}'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="teacher_scale"):
        MixTeacherSettings(teacher_scale="mix")
    cfg = train.parse_args([*TINY, "--test_scales", "[mixed, down]", "--report_scale", "down"])  # valid: accepted
    assert cfg.test_scales == ["mixed", "down"] and cfg.report_scale == "down"


def _val_only_root(finished_run: Path, tmp_path: Path, categories_offset: int = 0) -> Path:
    """A dataset root holding only the val split of the run's synthetic set (no train json, splits or images)."""
    import shutil

    from mixteacher.config import PACKAGE
    from mixteacher.engine import config_from_checkpoint
    from shared.detection import synthetic_coco_root

    data = config_from_checkpoint(load_checkpoint(finished_run / "last.pt")).data
    source = synthetic_coco_root(PACKAGE, data, num_unlabeled=data.synthetic_unlabeled)
    root = tmp_path / "val_only"
    shutil.copytree(source / "val2017", root / "val2017")
    coco = json.loads((source / "annotations" / "instances_val2017.json").read_text())
    if categories_offset:
        for item in coco["categories"]:
            item["id"] += categories_offset
        for ann in coco["annotations"]:
            ann["category_id"] += categories_offset
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))
    return root


def test_eval_needs_only_the_val_split(finished_run, tmp_path):
    root = _val_only_root(finished_run, tmp_path)
    flags = ["--no-data.synthetic", "--data.root", str(root)]
    metrics = eval_run(["--checkpoint", str(finished_run / "last.pt"), "--output_dir", str(tmp_path / "eval"), *flags])
    trained = json.loads((finished_run / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(trained["AP"], abs=1e-9, nan_ok=True)  # the same val set as in training
    assert sorted(p.name for p in root.iterdir()) == ["annotations", "val2017"]  # no split file written
    assert sorted(p.name for p in (root / "annotations").iterdir()) == ["instances_val2017.json"]
    other = _val_only_root(finished_run, tmp_path / "other", categories_offset=100)
    with pytest.raises(ValueError, match="category ids"):  # another dataset's classes: refused, not mislabeled
        eval_run(["--checkpoint", str(finished_run / "last.pt"), "--no-data.synthetic", "--data.root", str(other)])


def test_visualize_takes_overrides_of_the_stored_config(finished_run, tmp_path):
    out = tmp_path / "vis"
    with pytest.raises(FileNotFoundError, match="nowhere"):  # --data.root reaches the data
        visualize_run(
            ["--checkpoint", str(finished_run / "last.pt"), "--output_dir", str(out), "--no-data.synthetic",
             "--data.root", str(tmp_path / "nowhere")]
        )  # fmt: skip
    with pytest.raises(SystemExit):  # a mistyped key is an error, not ignored
        visualize_run(["--checkpoint", str(finished_run / "last.pt"), "--output_dir", str(out), "--data.rot", "x"])
    assert not out.exists()
    drawn = visualize_run(
        ["--checkpoint", str(finished_run / "last.pt"), "--output_dir", str(out), "--num_images", "1",
         "--score_thr", "0", "--mixteacher.cls_score_thr", "-0.5"]
    )  # fmt: skip
    assert [p.name for p in drawn] == ["predictions_0.png", "pseudo_labels_0.png"]


def test_an_old_stac_run_resumes_only_on_the_split_it_read():
    """Before data.batch_counts existed, --data.sampling stac did not reach the split files: such a run read the
    SoftTeacher split, and its resume must keep it."""
    from dataclasses import replace

    from mixteacher import train
    from shared.config import config_to_dict

    cfg = train.parse_args([*TINY, "--data.sampling", "stac"])
    data = {k: v for k, v in config_to_dict(cfg)["data"].items() if k != "batch_counts"}
    old = {"config": {**config_to_dict(cfg), "data": data}}
    resume = replace(cfg, resume="last.pt", data=replace(cfg.data, batch_counts="inner_binomial"))
    with pytest.raises(RunDirError, match=r"data\.sampling"):
        train.check_resume(resume, old)
    train.check_resume(replace(resume, data=replace(resume.data, sampling="softteacher")), old)
