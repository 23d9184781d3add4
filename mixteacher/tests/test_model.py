"""Mixed-scale pyramid: gate shapes and softmax weights, the 0.5x image list, crop/alignment of the down levels."""

import itertools
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from mixteacher.model import (
    MixedScaleFasterRCNN,
    ResNetBody,
    ScaleGate,
    create_model,
    crop_to,
    downscale_image_list,
    mix_pyramids,
)


def test_gate_shapes_and_softmax_weights_per_image():
    gate = ScaleGate(channels=256)
    assert gate.fc1.weight.shape == (32, 512) and gate.fc2.weight.shape == (2, 32)  # 512 -> 32 -> 2, no bias
    assert gate.fc1.bias is None and gate.fc2.bias is None
    regular, down = torch.randn(3, 256, 10, 12), torch.randn(3, 256, 10, 12)
    w = gate(regular, down)
    assert w.shape == (3, 2)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    assert (w > 0).all()
    # per image: one image's weights do not depend on the others
    torch.testing.assert_close(gate(regular[1:2], down[1:2]), w[1:2])


def test_mix_pyramids_uses_one_gate_per_level_and_image():
    torch.manual_seed(0)
    names = ["0", "1", "2", "3", "pool"]
    sizes = [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]
    regular = OrderedDict((n, torch.randn(2, 8, *s)) for n, s in zip(names, sizes))
    down_sizes = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]  # 0.5x image re-padded: larger than needed
    down = OrderedDict((n, torch.randn(2, 8, *s)) for n, s in zip(names, down_sizes))
    gate = ScaleGate(8, reduction=4)
    calls = []
    gate.register_forward_hook(lambda m, i, o: calls.append(o))
    mixed = mix_pyramids(regular, down, gate)
    assert list(mixed) == names
    assert mixed["0"] is regular["0"]  # P2x = P2+
    assert len(calls) == 4 and all(c.shape == (2, 2) for c in calls)
    for level, (finer, name) in enumerate(itertools.pairwise(names)):
        w = calls[level]
        assert mixed[name].shape == regular[name].shape
        expected = w[:, 0, None, None, None] * regular[name] + w[:, 1, None, None, None] * crop_to(
            down[finer], regular[name]
        )
        torch.testing.assert_close(mixed[name], expected)


def test_mix_pyramids_gate_extremes_select_regular_or_cropped_down():
    regular = OrderedDict([("0", torch.randn(1, 4, 8, 8)), ("1", torch.randn(1, 4, 4, 4))])
    down = OrderedDict([("0", torch.randn(1, 4, 6, 5)), ("1", torch.randn(1, 4, 3, 3))])

    class Fixed(torch.nn.Module):
        def __init__(self, w):
            super().__init__()
            self.w = torch.tensor([w])

        def forward(self, a, b):
            return self.w

    torch.testing.assert_close(mix_pyramids(regular, down, Fixed([1.0, 0.0]))["1"], regular["1"])
    torch.testing.assert_close(mix_pyramids(regular, down, Fixed([0.0, 1.0]))["1"], down["0"][..., :4, :4])


def test_crop_is_top_left_and_checks_size():
    x = torch.arange(30.0).reshape(1, 1, 5, 6)
    torch.testing.assert_close(crop_to(x, torch.zeros(1, 1, 3, 4)), x[..., :3, :4])
    with pytest.raises(ValueError, match="cannot crop"):
        crop_to(x, torch.zeros(1, 1, 6, 6))


def test_downscale_image_list_nearest_repadded_and_sizes_rounded():
    tensors = torch.randn(2, 3, 224, 288)
    images = ImageList(tensors, [(201, 287), (224, 250)])
    small = downscale_image_list(images)
    assert small.tensors.shape == (2, 3, 128, 160)  # 112 x 144 padded to /32
    assert small.image_sizes == [(101, 144), (112, 125)]  # round half up
    # nearest 0.5x keeps pixel (2i, 2j): position y in the small image is position 2y in the regular one
    torch.testing.assert_close(small.tensors[..., :112, :144], tensors[..., ::2, ::2])
    assert (small.tensors[..., 112:, :] == 0).all() and (small.tensors[..., :, 144:] == 0).all()


@pytest.mark.parametrize("size", [(96, 128), (100, 150), (130, 97)])
def test_down_levels_cover_and_align_with_the_next_regular_level(tiny_detector_cfg, size):
    """Down level i-1 has at least the size of regular level i (both at stride 2^(i+2) of the regular image)."""
    torch.manual_seed(0)
    model = MixedScaleFasterRCNN(3, tiny_detector_cfg).eval()
    images, _ = model.preprocess([torch.rand(3, *size)])
    feats = model.extract_features(images, ("regular", "down", "mixed"))
    regular, down, mixed = feats["regular"][1], feats["down"][1], feats["mixed"][1]
    names = list(regular)
    for finer, name in itertools.pairwise(names):
        assert down[finer].shape[-2] >= regular[name].shape[-2] and down[finer].shape[-1] >= regular[name].shape[-1]
        assert mixed[name].shape == regular[name].shape
    assert feats["down"][0].image_sizes[0] == (
        int(images.image_sizes[0][0] * 0.5 + 0.5),
        int(images.image_sizes[0][1] * 0.5 + 0.5),
    )


def test_caffe_style_moves_the_stride_to_the_1x1_conv():
    caffe, pytorch = ResNetBody(50, 8, caffe_style=True), ResNetBody(50, 8, caffe_style=False)
    assert caffe.layer2[0].conv1.stride == (2, 2) and caffe.layer2[0].conv2.stride == (1, 1)
    assert pytorch.layer2[0].conv1.stride == (1, 1) and pytorch.layer2[0].conv2.stride == (2, 2)
    x = torch.randn(1, 3, 64, 64)
    assert caffe(x).shape == pytorch(x).shape == (1, 256, 2, 2)
    frozen = [n for n, p in caffe.named_parameters() if not p.requires_grad]
    assert any(n.startswith("layer1") for n in frozen) and not any(n.startswith("layer2") for n in frozen)


def test_resnet50_fpn_parameter_count_matches_torchvision():
    """The paper's detector: torchvision's fasterrcnn_resnet50_fpn layout (+ the 2-layer gate)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    ours = create_model("r50_fpn", num_classes=80)
    reference = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81)
    n_ours = sum(p.numel() for p in ours.parameters())
    # without downloaded weights torchvision uses trainable BatchNorm; ours is frozen (buffers, as the paper)
    bn = sum(p.numel() for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters())
    n_ref = sum(p.numel() for p in reference.parameters()) - bn
    assert n_ours - n_ref == 512 * 32 + 32 * 2


def test_predict_regular_and_mixed_in_original_coordinates(tiny_detector_cfg):
    model = MixedScaleFasterRCNN(3, tiny_detector_cfg).eval()
    images = [torch.rand(3, 150, 200), torch.rand(3, 120, 90)]
    for scale in ("regular", "mixed"):
        out = model.predict(images, scale)
        assert len(out) == 2
        for o, im in zip(out, images):
            assert o["boxes"].shape[1] == 4 and len(o["scores"]) == len(o["labels"]) <= 100
            if len(o["boxes"]):
                assert o["boxes"][:, 2].max() <= im.shape[2] + 1e-3 and o["boxes"][:, 3].max() <= im.shape[1] + 1e-3
                assert o["labels"].min() >= 1
    with pytest.raises(ValueError, match="test scale"):
        model.predict(images, "huge")


def test_torchvision_resnet_checkpoint_loads_key_for_key(tmp_path):
    """A torchvision ResNet state dict (with fc and BN counters) loads strictly and computes the same features."""
    from torchvision.models import resnet18

    from mixteacher.model import load_backbone_weights

    torch.manual_seed(0)
    reference = resnet18().eval()
    for m in reference.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "r18.pth")
    model = create_model("r50_fpn", num_classes=3, depth=18, caffe_style=False, fpn_channels=16, representation_size=16)
    load_backbone_weights(model.backbone.body, tmp_path / "r18.pth")
    x = torch.randn(1, 3, 64, 64)
    expected = reference.layer4(
        reference.layer3(
            reference.layer2(reference.layer1(reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))
        )
    )
    torch.testing.assert_close(model.backbone.body(x)["3"], expected, rtol=1e-4, atol=1e-4)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not match"):
        load_backbone_weights(model.backbone.body, tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="resnet50_caffe"):
        load_backbone_weights(model.backbone.body, tmp_path / "missing.pth")


def test_variants_are_the_detectors_of_the_recipes_and_the_embedded_default():
    from mixteacher.model import VARIANTS
    from mixteacher.train import parse_args

    assert parse_args([]).detector == VARIANTS["mnv2_fpn"]  # configs/default.yaml
    recipe = Path(__file__).parents[1] / "configs" / "coco_partial_10.yaml"
    assert parse_args(["-c", str(recipe)]).detector == VARIANTS["r50_fpn"]
    model = create_model("tiny", num_classes=3, min_size=64)
    assert model.num_classes == 3 and model.cfg.min_size == 64 and model.cfg.fpn_channels == 16
    with pytest.raises(ValueError, match="unknown MixTeacher detector"):
        create_model("r200")
    with pytest.raises(ValueError, match="unknown DetectorConfig field"):
        create_model("tiny", widht=3)


def test_an_unreadable_backbone_file_is_named(tmp_path):
    path = tmp_path / "resnet50_msra.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="resnet50_msra.pth: not a readable backbone checkpoint"):
        create_model("tiny", num_classes=3, pretrained_backbone=str(path))


def test_roi_align_is_mmdets_aligned_one_in_the_paper_detector_only():
    from mixteacher.config import DetectorConfig, TrainConfig
    from mixteacher.train import parse_args
    from shared.config import config_to_dict
    from shared.detection import PyramidRoIAlign

    assert DetectorConfig().roi_aligned  # the paper's Faster R-CNN (mmdetection's RoIAlign is aligned)
    pool = create_model("tiny", 3).roi_heads.box_roi_pool
    assert isinstance(pool, PyramidRoIAlign) and not pool.aligned  # the small torchvision-native detectors
    assert not parse_args([]).detector.roi_aligned  # the embedded default (and the evidence) keep torchvision's
    recipe = parse_args(["-c", "mixteacher/configs/coco_partial_10.yaml"])
    assert recipe.detector.roi_aligned
    # a checkpoint written before the key existed was pooled unaligned: its evaluation and resume read it so
    old = config_to_dict(recipe)
    del old["detector"]["roi_aligned"]
    assert TrainConfig.upgrade_stored(old)["detector"]["roi_aligned"] is False
    assert TrainConfig.upgrade_stored(config_to_dict(recipe))["detector"]["roi_aligned"] is True
