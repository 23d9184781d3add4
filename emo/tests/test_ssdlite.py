"""SSDLite-EMO: parameter counts against the paper, feature strides, anchors, the loss on a constructed example, the
SSD augmentation, and a short train_ssdlite.py run re-evaluated by eval_ssdlite.py."""

import json
import math

import pytest
import torch
from torchvision.ops import box_iou

import emo  # noqa: F401  (registers the models)
from emo import eval_ssdlite, train_ssdlite
from emo.config import DEFAULT_SSDLITE_CONFIG
from emo.data import build_ssdlite_datasets
from emo.ssdlite import SSDLITE_MIN_SIZES, SSDLITE_STRIDES, build_ssdlite, ssdlite_anchor_generator
from shared.checkpoint import load_checkpoint

# official README: SSDLite parameters in millions (80 COCO classes)
PAPER_PARAMS = {'emo_1m': 2.3, 'emo_2m': 3.3, 'emo_5m': 6.0}


@pytest.mark.parametrize('variant', sorted(PAPER_PARAMS))
def test_parameter_count_within_3_percent_of_the_paper(variant):
    model = build_ssdlite(variant, num_classes=80)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params / PAPER_PARAMS[variant] - 1) < 0.03, params


def test_six_levels_at_the_official_strides_and_channels():
    model = build_ssdlite('emo_test', num_classes=3).eval()
    feats = list(model.backbone(torch.rand(1, 3, 320, 320)).values())
    assert [f.shape[-1] for f in feats] == [20, 10, 5, 3, 2, 1]  # strides 16, 32, 64, 107, 160, 320
    assert [f.shape[1] for f in feats] == [32, 48, 512, 256, 256, 128]  # emo_test stages 3-4 + the neck
    assert model.backbone.body.stage4[-1].window_size == 7  # the 1M/2M value for models without an official one
    cls = model.head.classification_head(feats)
    assert cls.shape == (1, 6 * sum(s * s for s in (20, 10, 5, 3, 2, 1)), 4)  # 6 boxes per location, 3 + bg
    assert build_ssdlite('emo_test', 3, window_size=10).backbone.body.stage4[-1].window_size == 10


def test_default_boxes_are_mmdets_ssd_anchors():
    generator = ssdlite_anchor_generator(320)
    wh = generator._wh_pairs[0] * 320  # level 0: min 48, max 100, ratios 2 and 3
    expected = [(48, 48), (math.sqrt(48 * 100),) * 2]
    for r in (2, 3):
        expected += [(48 * math.sqrt(r), 48 / math.sqrt(r)), (48 / math.sqrt(r), 48 * math.sqrt(r))]
    torch.testing.assert_close(wh, torch.tensor(expected, dtype=wh.dtype), rtol=1e-5, atol=1e-4)
    assert generator.steps == list(SSDLITE_STRIDES) and generator.clip is False
    assert SSDLITE_MIN_SIZES[0] == 48


def test_loss_on_a_constructed_example():
    """Zero prediction convs: every anchor scores log(K + 1) in cross entropy and predicts zero deltas, so the
    classification loss is (positives + 3 x positives hardest negatives) x log(K + 1) / positives = 4 log(K + 1) and
    the box loss is the smooth-L1 of the matched anchors' encoded targets divided by the positives."""
    torch.manual_seed(0)
    model = build_ssdlite('emo_test', num_classes=3)
    for module in (model.head.classification_head, model.head.regression_head):
        for block in module.module_list:
            torch.nn.init.zeros_(block[1].weight)
            torch.nn.init.zeros_(block[1].bias)
    model.train()
    box = torch.tensor([[60.0, 40.0, 200.0, 220.0]])
    targets = [{'boxes': box, 'labels': torch.tensor([2])}] * 2
    losses = model([torch.rand(3, 320, 320), torch.rand(3, 320, 320)], targets)
    assert losses['classification'].item() == pytest.approx(4 * math.log(4), rel=1e-5)
    model.eval()  # the anchors depend on the feature sizes only
    anchors = model.anchor_generator(
        model.transform([torch.rand(3, 320, 320)])[0], list(model.backbone(torch.rand(1, 3, 320, 320)).values())
    )[0]
    iou = box_iou(box, anchors)[0]
    matched = iou >= 0.5
    matched[iou.argmax()] = True
    deltas = model.box_coder.encode_single(box.expand(int(matched.sum()), 4), anchors[matched])
    expected = torch.nn.functional.smooth_l1_loss(deltas, torch.zeros_like(deltas), reduction='sum') / matched.sum()
    assert losses['bbox_regression'].item() == pytest.approx(expected.item(), rel=1e-4)


def test_ssd_augmentation_keeps_boxes_inside_and_labels_from_one(synthetic_root):
    cfg = train_ssdlite.parse_args(['--data.synthetic_train', '4', '--data.synthetic_val', '2']).data
    train_set, val_set = build_ssdlite_datasets(cfg)
    assert len(train_set) == 4 * cfg.repeat_times and val_set.label_offset == 1
    torch.manual_seed(1)
    resized = 0
    for i in range(6):
        image, target = train_set[i]
        h, w = image.shape[-2:]
        original = train_set.coco.coco.imgs[train_set.coco.ids[i % len(train_set.coco)]]
        resized += (h, w) != (original['height'], original['width'])  # expanded or cropped
        boxes = target['boxes']
        assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all() and (target['labels'] >= 1).all()
    assert resized > 0  # the augmentation engages


TINY = [
    '--data.synthetic_train', '4', '--data.synthetic_val', '2', '--data.repeat_times', '1',
    '--data.batch_size', '2', '--data.eval_batch_size', '2', '--data.workers', '0', '--device', 'cpu',
    '--no-tensorboard', '--warmup_iters', '1', '--log_interval', '1', '--threads', 'null', '--epochs', '1',
]  # fmt: skip


def test_train_ssdlite_then_eval_ssdlite(synthetic_root, tmp_path):
    metrics = train_ssdlite.main(train_ssdlite.parse_args([*TINY, '--output_dir', str(tmp_path)]))
    state = load_checkpoint(tmp_path / 'last.pt')
    assert state['step'] == 2 and state['config']['data']['image_size'] == 320
    assert metrics['model'] == 'ssdlite_emo_test'
    result = eval_ssdlite.main(eval_ssdlite.parse_args(['--checkpoint', str(tmp_path / 'last.pt')]))
    for key in ('AP', 'AP50', 'AP75'):
        assert 0.0 <= result[key] <= 1.0
        assert result[key] == pytest.approx(metrics['last'][key], abs=1e-12)
    assert json.loads((tmp_path / 'eval' / 'metrics.json').read_text())['model'] == 'ssdlite_emo_test'


def test_ssdlite_recipes_are_the_official_configs():
    for variant, window in (('1m', 7), ('2m', 7), ('5m', 10)):
        cfg = train_ssdlite.parse_args(['-c', str(DEFAULT_SSDLITE_CONFIG.parent / f'ssdlite_emo_{variant}_coco.yaml')])
        assert (cfg.lr, cfg.lr_base_batch, cfg.weight_decay, cfg.epochs, cfg.warmup_iters) == (
            1.2e-3,
            192,
            0.05,
            120,
            500,
        )
        assert (cfg.data.repeat_times, cfg.data.image_size, cfg.data.batch_size, cfg.window_size) == (
            5,
            320,
            24,
            window,
        )
        assert (cfg.frozen_stages, cfg.norm_eval, cfg.nms_thresh, cfg.score_thresh) == (-1, True, 0.45, 0.02)


@pytest.mark.slow
def test_macs_match_the_paper_to_its_one_decimal():
    """Conv + matmul MACs of EMO-1M SSDLite at 320 x 320: 0.554 G, the README's 0.6 G to one decimal."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_ssdlite('emo_1m', num_classes=80).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.head(list(model.backbone(torch.rand(1, 3, 320, 320)).values()))
    assert round(counter.get_total_flops() / 2e9, 1) == 0.6


def test_eval_ssdlite_refuses_a_retinanet_checkpoint(synthetic_root, tmp_path):
    from emo.detection import build_retinanet
    from shared.checkpoint import save_checkpoint

    save_checkpoint({'package': 'emo', 'model': build_retinanet('emo_test', 6).state_dict()}, tmp_path / 'r.pt')
    args = ['--checkpoint', str(tmp_path / 'r.pt'), '-c', str(DEFAULT_SSDLITE_CONFIG), *TINY[:4], '--device', 'cpu']
    with pytest.raises(ValueError, match='does not fit ssdlite-emo_test'):
        eval_ssdlite.main(eval_ssdlite.parse_args(args))
