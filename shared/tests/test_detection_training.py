"""shared.detection_training: the epoch's loss bookkeeping against hand values, the log.csv column order, the
frozen-stages backbone through train(), the refusal without a backbone before anything is written, and the
evaluation-script config, parser and main."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from shared.config import RunConfig, parse_config
from shared.detection_training import (
    DetectionTraining,
    FrozenStagesBackbone,
    checkpoint_eval_config,
    eval_script_parser,
    open_finetune_run,
    run_checkpoint_eval,
    train_one_epoch,
)
from shared.distributed import DistContext
from shared.logger import RunLogger

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class _TwoLosses(nn.Module):
    """Losses a * mean(images) and b * mean(images) (a, b trainable), as a torchvision detector's loss dict."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.0))
        self.b = nn.Parameter(torch.tensor(2.0))

    def forward(self, images, targets):
        x = torch.stack([image.mean() for image in images]).mean()
        return {"first": self.a * x, "second": self.b * x, "unused": torch.tensor(100.0)}


def _training(batches):
    model = _TwoLosses()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the losses stay the hand values below
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loader = [(images, [{} for _ in images]) for images in batches]
    return model, DetectionTraining(
        train_set=None,
        val_set=None,
        model=model,
        sampler=None,
        train_loader=loader,
        eval_loader=None,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cpu", enabled=False),
    )


@pytest.mark.parametrize("total_first", [False, True])
def test_train_one_epoch_averages_the_named_losses_over_images(tmp_path, total_first):
    # batch 1: two images of mean 1 and 3 (batch mean 2); batch 2: one image of mean 4
    batches = [[torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 3.0)], [torch.full((1, 2, 2), 4.0)]]
    model, t = _training(batches)
    cfg = SimpleNamespace(amp="off", clip_grad=None, log_interval=1)
    logger = RunLogger(tmp_path, tensorboard=False)
    names = {"first": "loss_a", "second": "loss_b"}
    row, step = train_one_epoch(model, t, CPU, 0, 5, cfg, logger, names, total_first=total_first)
    logger.close()
    assert step == 7
    # per-image weighting: (2 * 2 + 1 * 4) / 3 for a = 1, twice that for b = 2; "unused" is not summed
    assert row["loss_a"] == pytest.approx(8 / 3) and row["loss_b"] == pytest.approx(16 / 3)
    assert row["loss"] == pytest.approx(8.0)
    terms = ["loss_a", "loss_b"]
    columns = ["loss", *terms] if total_first else [*terms, "loss"]
    assert list(row) == [*columns, "lr", "train_img_s", "epoch_time_s"]


class _Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.stage0 = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
        self.stage1 = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))


def _freeze_first(body: _Body, frozen_stages: int, norm_eval: bool) -> None:
    for i in range(frozen_stages + 1):
        stage = getattr(body, f"stage{i}")
        stage.eval()
        for p in stage.parameters():
            p.requires_grad = False
    if norm_eval:
        for m in body.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()


class _Backbone(FrozenStagesBackbone):
    freeze = staticmethod(_freeze_first)

    def __init__(self, frozen_stages: int, norm_eval: bool):
        super().__init__()
        self.body = _Body()
        self.set_frozen_stages(frozen_stages, norm_eval)


def test_frozen_stages_hold_through_train_and_norm_eval_only_in_training():
    backbone = _Backbone(frozen_stages=0, norm_eval=True)
    assert not any(p.requires_grad for p in backbone.body.stage0.parameters())
    assert all(p.requires_grad for p in backbone.body.stage1.parameters())
    backbone.train()
    assert backbone.training and not backbone.body.stage0.training  # frozen stage stays in eval mode
    assert not backbone.body.stage1[1].training and backbone.body.stage1[0].training  # norm_eval: BN only
    assert _Backbone(frozen_stages=-1, norm_eval=False).train().body.stage1[1].training
    backbone.eval()
    assert not any(m.training for m in backbone.modules())


@dataclass
class _FinetuneConfig(RunConfig):
    model: str = "tiny"
    pretrained_backbone: str | None = None
    allow_random_backbone: bool = False
    lr: float = field(default=0.1, metadata={"help": "learning rate"})


def test_no_backbone_is_refused_before_the_run_folder_exists(tmp_path):
    cfg = _FinetuneConfig(output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"the Tiny recipe .* --pretrained_backbone PATH \(a tiny.pth\)"):
        open_finetune_run(cfg, CPU, "pkg", ("model",), "tiny_default", "Tiny", "a tiny.pth")
    assert not (tmp_path / "run").exists()
    allowed = dataclasses.replace(cfg, allow_random_backbone=True)
    resume, out_dir, logger = open_finetune_run(allowed, CPU, "pkg", ("model",), "tiny_default", "Tiny", "a tiny.pth")
    logger.close()
    assert resume is None and out_dir == tmp_path / "run" and (out_dir / "config.yaml").is_file()


def test_eval_config_adds_the_checkpoint_to_the_training_config():
    schema = checkpoint_eval_config(_FinetuneConfig, "train_x.py", "XEvalConfig", __name__)
    assert schema.__name__ == "XEvalConfig" and schema.__module__ == __name__
    assert issubclass(schema, _FinetuneConfig)
    names = [f.name for f in dataclasses.fields(schema)]
    assert names[-1] == "checkpoint" and names[:-1] == [f.name for f in dataclasses.fields(_FinetuneConfig)]
    help_text = dataclasses.fields(schema)[-1].metadata["help"]
    assert help_text == "train_x.py checkpoint (last.pt / best.pt)"
    cfg = parse_config(schema, ["--checkpoint", "last.pt", "--lr", "0.5"])
    assert (cfg.checkpoint, cfg.lr) == ("last.pt", 0.5)


def test_eval_script_parser_and_main():
    calls = []

    def parse_checkpoint_config(schema, argv, default_config, description):
        calls.append((schema, argv, default_config, description))
        return "cfg"

    parse_args = eval_script_parser(parse_checkpoint_config, _FinetuneConfig, Path("configs/x.yaml"), "Evaluate X.")
    assert parse_args() == "cfg" and parse_args(["--lr", "1"]) == "cfg"
    assert calls == [
        (_FinetuneConfig, None, Path("configs/x.yaml"), "Evaluate X."),
        (_FinetuneConfig, ["--lr", "1"], Path("configs/x.yaml"), "Evaluate X."),
    ]
    assert "x.yaml" in parse_args.__doc__
    with pytest.raises(ValueError, match="--checkpoint PATH is required"):
        run_checkpoint_eval(SimpleNamespace(checkpoint=""), lambda cfg, ctx: None)
    cfg = SimpleNamespace(checkpoint="last.pt", threads=None, device="cpu")
    assert run_checkpoint_eval(cfg, lambda c, ctx: (c.checkpoint, ctx.world_size)) == ("last.pt", 1)


def test_pyramid_roi_align_is_torchvision_unaligned_and_mmcv_aligned():
    """aligned=False is torchvision's MultiScaleRoIAlign; aligned=True samples every box half a feature pixel up
    and left of it (mmcv's RoIAlign), which torchvision's unaligned pooling of the shifted box reproduces, each box on
    its pyramid level (the sizes below go to P2, P3, P4 and P5)."""
    from torchvision.ops import MultiScaleRoIAlign

    from shared.detection import PyramidRoIAlign

    gen = torch.Generator().manual_seed(0)
    image_shapes = [(512, 640), (480, 600)]
    x = {str(i): torch.randn(2, 3, 512 // 2 ** (i + 2), 640 // 2 ** (i + 2), generator=gen) for i in range(4)}
    sides = torch.tensor([20.0, 150.0, 300.0, 450.0])
    corners = torch.rand(2, 4, 2, generator=gen) * 20 + 4
    boxes = [torch.cat([c, c + sides[:, None]], 1) for c in corners]
    names = ["0", "1", "2", "3"]
    for ratio in (0, 2):
        reference = MultiScaleRoIAlign(names, 7, ratio)
        assert torch.equal(PyramidRoIAlign(names, 7, ratio, aligned=False)(x, boxes, image_shapes),
                           reference(x, boxes, image_shapes))  # fmt: skip
        aligned = PyramidRoIAlign(names, 7, ratio)(x, boxes, image_shapes)
        shift = 0.5 * torch.tensor([4.0, 8.0, 16.0, 32.0])[:, None]  # half a pixel of each box's level, in pixels
        shifted = reference(x, [b - shift for b in boxes], image_shapes)
        torch.testing.assert_close(aligned, shifted, rtol=0, atol=1e-6)
        assert not torch.allclose(aligned, reference(x, boxes, image_shapes))  # the shift matters


def _retinanet_batch(seed: int = 0):
    """A tiny RetinaNet's head outputs, anchors and targets for two images (one without boxes)."""
    from torchvision.models.detection.retinanet import RetinaNetHead

    gen = torch.Generator().manual_seed(seed)
    head = RetinaNetHead(8, 9, 3)
    anchors = [torch.rand(40, 2, generator=gen) * 60 for _ in range(2)]
    anchors = [torch.cat([a, a + 10 + torch.rand(40, 2, generator=gen) * 30], 1) for a in anchors]
    outputs = {
        "cls_logits": torch.randn(2, 40, 3, generator=gen),
        "bbox_regression": torch.randn(2, 40, 4, generator=gen),
    }
    boxes = anchors[0][[3, 7, 11]] + torch.rand(3, 4, generator=gen) * 4
    targets = [
        {"boxes": boxes, "labels": torch.tensor([0, 2, 1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return head, outputs, anchors, targets


def test_retinanet_losses_are_torchvisions_per_image_and_mmdets_per_batch():
    from torchvision.models.detection import RetinaNet
    from torchvision.ops import box_iou

    from shared.detection import RetinaNetLossNorm, normalize_loss

    head, outputs, anchors, targets = _retinanet_batch()
    backbone = torch.nn.Conv2d(3, 8, 1)
    backbone.out_channels = 8
    torchvision_model = RetinaNet(backbone, 3, head=head)
    ours = {norm: RetinaNetLossNorm(backbone, 3, head=head, loss_normalization=norm) for norm in ("image", "batch")}
    reference = torchvision_model.compute_loss(targets, outputs, anchors)
    image = ours["image"].compute_loss(targets, outputs, anchors)
    assert all(torch.equal(image[k], reference[k]) for k in reference)  # bitwise torchvision's
    # per batch: the images' summed losses over their summed positives (an image without boxes counts one); each
    # image's sum is torchvision's loss of that image alone times its positives
    positives = [int((torchvision_model.proposal_matcher(box_iou(targets[0]["boxes"], anchors[0])) >= 0).sum()), 0]
    assert positives[0] > 1
    alone = [
        torchvision_model.compute_loss([targets[i]], {k: v[i : i + 1] for k, v in outputs.items()}, [anchors[i]])
        for i in range(2)
    ]
    batch = ours["batch"].compute_loss(targets, outputs, anchors)
    for key in reference:
        sums = [alone[i][key] * max(1, positives[i]) for i in range(2)]
        torch.testing.assert_close(batch[key], (sums[0] + sums[1]) / (positives[0] + 1))
        assert not torch.allclose(batch[key], reference[key])
    with pytest.raises(ValueError, match="loss normalization must be 'image' or 'batch'"):
        normalize_loss([torch.ones(())], [1], "level")
    with pytest.raises(ValueError, match="loss_normalization must be"):
        RetinaNetLossNorm(backbone, 3, head=head, loss_normalization="level")
    head.regression_head._loss_type = "giou"
    with pytest.raises(ValueError, match="L1 box loss; the regression head asks for 'giou'"):
        RetinaNetLossNorm(backbone, 3, head=head)
