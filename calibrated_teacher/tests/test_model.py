"""The MobileNetV2-FPN RetinaNet of the evidence: feature levels, anchor sizes, and an lr at which it learns
(README, Evidence: "Why the first evidence run did not engage")."""

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from calibrated_teacher.model import create_model

TINY = {"width_mult": 0.25, "fpn_channels": 32, "min_size": 96, "max_size": 128}


def test_p2_levels_give_six_feature_maps_from_stride_4_to_128():
    model = create_model(
        "retinanet_tiny", 3, mobilenet_levels=(3, 6, 13, 17), anchor_sizes=(8, 16, 32, 64, 128, 256), **TINY
    )
    features = model.backbone(torch.zeros(1, 3, 128, 128))
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    model.eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 96, 128)])
    assert out["boxes"].shape[1] == 4


def test_anchor_sizes_must_match_the_feature_levels():
    with pytest.raises(ValueError, match="anchor_sizes"):
        create_model("retinanet_tiny", 3, mobilenet_levels=(3, 6, 13, 17), **TINY)  # 5 sizes for 6 levels


@pytest.mark.parametrize("levels", [(13, 6, 17), (6, 6, 17), (6, 13, 19), ()])
def test_bad_mobilenet_levels_are_refused(levels):
    with pytest.raises(ValueError, match="mobilenet_levels"):
        create_model("retinanet_tiny", 3, mobilenet_levels=levels, anchor_sizes=(16,) * (len(levels) + 2), **TINY)


@pytest.mark.slow
def test_default_detector_fits_one_batch_at_the_default_lr(tmp_path):
    """The defect behind the first evidence run: the embedded default used lr 0.01 at 2 images (8x the paper's
    0.01 for 16 images); at that lr this same check stalls (classification loss still 0.4 of its start after 40 steps),
    at the default (0.0025) it falls below a quarter."""
    from calibrated_teacher.train import _loader, build_run, parse_args
    from shared.distributed import init_distributed
    from shared.logger import RunLogger

    cfg = parse_args(["--method", "supervised", "--data.sparse_drop_rate", "0.0", "--tensorboard", "false"])
    run = build_run(cfg, init_distributed("cpu"), RunLogger(tmp_path, tensorboard=False))
    batch = next(iter(_loader(run)))
    student = run.method.student.train()
    for group in run.optimizer.param_groups:  # past the warm-up: the schedule's factor is 1
        group["lr"] = group["initial_lr"]
    losses = []
    for _ in range(40):
        loss = student(batch["strong"], batch["strong_target"])
        run.optimizer.zero_grad()
        sum(loss.values()).backward()
        run.optimizer.step()  # the package's optimizer at the default lr (biases x2), no warm-up
        losses.append(loss["classification"].item())
    assert losses[-1] < 0.25 * losses[0], losses


def test_loss_normalization_is_mmdets_in_the_recipes_and_torchvisions_in_the_small_detectors():
    from calibrated_teacher.config import DetectorConfig, TrainConfig
    from calibrated_teacher.train import parse_args
    from shared.config import config_to_dict

    assert DetectorConfig().loss_normalization == "batch"  # the released mmdetection RetinaNet
    assert parse_args(["-c", "calibrated_teacher/configs/miss50p.yaml"]).detector.loss_normalization == "batch"
    assert parse_args([]).detector.loss_normalization == "image"  # the embedded default and the evidence
    for name in ("retinanet_mnv2_fpn", "retinanet_tiny"):
        assert create_model(name, 3).loss_normalization == "image"
    assert create_model("retinanet_tiny", 3, loss_normalization="batch").loss_normalization == "batch"
    # a checkpoint written before the key existed normalised per image: a resume reads its config so
    stored = config_to_dict(parse_args(["-c", "calibrated_teacher/configs/miss50p.yaml"]))
    del stored["detector"]["loss_normalization"]
    assert TrainConfig.upgrade_stored(stored)["detector"]["loss_normalization"] == "image"


def test_fiou_weights_under_batch_normalization():
    """The FIoU-weighted focal loss normalised per batch is the per-image sums over the summed positives."""
    from calibrated_teacher.losses import FIoUParams, fiou_anchor_weights, retinanet_fiou_losses
    from shared.detection import retinanet_class_loss_sums

    gen = torch.Generator().manual_seed(0)
    anchors = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40], [5, 5, 15, 15]])] * 2
    outputs = {
        "cls_logits": torch.randn(2, 3, 2, generator=gen),
        "bbox_regression": torch.randn(2, 3, 4, generator=gen),
    }
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}] * 2
    matched = [torch.tensor([0, -1, -2]), torch.tensor([0, 0, -1])]
    coder = BoxCoder((1.0,) * 4)
    weights = fiou_anchor_weights(targets, outputs, anchors, matched, coder, FIoUParams())
    sums, counts = retinanet_class_loss_sums(targets, outputs["cls_logits"], matched, weights)
    assert counts == [1, 2]
    batch = retinanet_fiou_losses(targets, outputs, anchors, matched, coder, FIoUParams(), normalization="batch")
    torch.testing.assert_close(batch, (sums[0] + sums[1]) / 3)
    image = retinanet_fiou_losses(targets, outputs, anchors, matched, coder, FIoUParams())
    torch.testing.assert_close(image, (sums[0] / 1 + sums[1] / 2) / 2)
