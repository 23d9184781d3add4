"""Segmentation-EMO: parameter counts against the paper, head shapes and strides, the loss on a constructed example,
multi-scale + flip inference, the ADE20K loader (reduce-zero-label) on the synthetic set, the data stream of an
iteration-based run, the poly schedule, and a short train_seg.py run re-evaluated by eval_seg.py."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import emo  # noqa: F401  (registers the models)
from emo import eval_seg, train_seg
from emo.config import DEFAULT_SEG_CONFIG
from emo.data import ADE20KSegmentation, IterationSampler, build_segmentation_datasets, reduce_zero_label
from emo.segmentation import build_segmentor, predict_probabilities, segmentation_loss
from shared.checkpoint import load_checkpoint

# official README: parameters in millions (150 ADE20K classes, auxiliary head included)
PAPER_PARAMS = {
    ('deeplabv3', 'emo_1m'): 5.6,
    ('deeplabv3', 'emo_2m'): 6.9,
    ('deeplabv3', 'emo_5m'): 10.3,
    ('pspnet', 'emo_1m'): 4.3,
    ('pspnet', 'emo_2m'): 5.5,
    ('pspnet', 'emo_5m'): 8.5,
}


@pytest.mark.parametrize(('head', 'variant'), sorted(PAPER_PARAMS))
def test_parameter_count_within_3_percent_of_the_paper(head, variant):
    model = build_segmentor(variant, head, num_classes=150)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params / PAPER_PARAMS[head, variant] - 1) < 0.03, params


@pytest.mark.parametrize('head', ['deeplabv3', 'pspnet'])
def test_heads_at_stride_32_and_16_and_window(head):
    model = build_segmentor('emo_test', head, num_classes=5, channels=16, aux_channels=8)
    assert model.body.stage4[-1].window_size == 16  # the official segmentation window
    decode, aux = model(torch.rand(2, 3, 96, 64))
    assert decode.shape == (2, 5, 3, 2) and aux.shape == (2, 5, 6, 4)  # stage 4 (1/32) and stage 3 (1/16)
    model.eval()
    assert model(torch.rand(1, 3, 96, 64)).shape == (1, 5, 3, 2)
    no_aux = build_segmentor('emo_test', head, num_classes=5, channels=16, auxiliary=False)
    assert no_aux(torch.rand(2, 3, 64, 64))[1] is None


def test_loss_on_a_constructed_example():
    """Uniform logits: cross entropy log(K) on every labelled pixel; mmseg's default averages over all pixels."""
    labels = torch.tensor([[[0, 1, 255, 2], [255, 255, 1, 0]]])  # 5 of 8 pixels labelled
    logits = torch.zeros(1, 3, 1, 2)
    assert segmentation_loss(logits, labels).item() == pytest.approx(math.log(3) * 5 / 8)
    assert segmentation_loss(logits, labels, avg_non_ignore=True).item() == pytest.approx(math.log(3))
    logits = torch.tensor([[[[5.0]], [[0.0]], [[0.0]]]])  # class 0 everywhere, upsampled to 2 x 4
    ce0, ce_other = (-torch.log_softmax(torch.tensor([5.0, 0, 0]), 0))[:2].tolist()
    expected = (2 * ce0 + 3 * ce_other) / 5
    assert segmentation_loss(logits, labels, avg_non_ignore=True).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match='labels'):
        segmentation_loss(logits, labels[0])


def test_multi_scale_flip_inference_averages_probabilities():
    model = build_segmentor('emo_test', 'pspnet', num_classes=4, channels=16, aux_channels=8).eval()
    image = torch.rand(3, 40, 56)
    single = predict_probabilities(model, image, (40, 56), base_size=(128, 64))
    assert single.shape == (1, 4, 40, 56)
    torch.testing.assert_close(single.sum(1), torch.ones(1, 40, 56))
    # the 64-px short side: the model sees the image resized by 64 / 40 (mmseg keep-ratio resize)
    direct = torch.nn.functional.interpolate(image[None], size=(64, 90), mode='bilinear', align_corners=False)
    expected = torch.nn.functional.interpolate(model(direct), size=(40, 56), mode='bilinear').softmax(1)
    torch.testing.assert_close(single, expected)
    flipped = predict_probabilities(model, image.flip(-1), (40, 56), (0.5, 1.0), True, (128, 64))
    both = predict_probabilities(model, image, (40, 56), (0.5, 1.0), True, (128, 64))
    torch.testing.assert_close(flipped.flip(-1), both, atol=1e-5, rtol=1e-4)  # flip-averaging is flip-symmetric


def test_reduce_zero_label():
    label = torch.tensor([[0, 1, 150], [2, 0, 37]], dtype=torch.uint8)
    assert reduce_zero_label(label).tolist() == [[255, 0, 149], [1, 255, 36]]


def test_ade20k_loader_reads_the_synthetic_set_in_the_official_layout(synthetic_root, tmp_path):
    cfg = train_seg.parse_args(['--data.synthetic_train', '3', '--data.synthetic_val', '2']).data
    train_set, val_set = build_segmentation_datasets(cfg)
    assert len(train_set) == 3 and len(val_set) == 2
    assert train_set.images[0].name == 'ADE_train_00000001.jpg' and val_set.labels[1].name == 'ADE_val_00000002.png'
    assert train_set.image_dir.parts[-3:] == ('ADEChallengeData2016', 'images', 'training')
    image, label, index = val_set[0]
    assert image.shape[1:] == label.shape and index == 0 and image.max() <= 1
    values = set(label.unique().tolist())
    assert 255 in values and values - {255} <= set(range(cfg.synthetic_classes))  # the outlines: unlabelled 0
    crop, crop_label, _ = train_set[(1, 1234)]
    assert crop.shape == (3, cfg.crop_size, cfg.crop_size) and crop_label.shape == (cfg.crop_size,) * 2
    again, _, _ = train_set[(1, 1234)]
    assert torch.equal(crop, again)  # the augmentation is a function of the seed
    with pytest.raises(ValueError, match='seed'):
        train_set[1]
    with pytest.raises(FileNotFoundError, match='ade20k'):
        ADE20KSegmentation(tmp_path / 'nowhere')


def test_ade20k_loader_names_a_bad_label_file(synthetic_root):
    cfg = train_seg.parse_args(['--data.synthetic_train', '3', '--data.synthetic_val', '2']).data
    _, val_set = build_segmentation_datasets(cfg)
    val_set.labels = list(val_set.labels)
    bad = val_set.labels[0].parent.parent / 'bad.png'
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(bad)
    val_set.labels[0] = bad
    with pytest.raises(ValueError, match='bad.png'):
        val_set.load(0)


def test_iteration_sampler_resumes_the_same_stream():
    full = list(IterationSampler(5, 2, max_iters=6, seed=3))
    assert len(full) == 12 and sorted(i for i, _ in full[:5]) == list(range(5))  # one permutation per pass
    assert list(IterationSampler(5, 2, max_iters=6, start_iter=4, seed=3)) == full[8:]
    ranks = [list(IterationSampler(5, 1, max_iters=6, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    assert [s for it in zip(*ranks) for s in it] == full  # two ranks of batch 1 = one process of batch 2


def test_poly_schedule():
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = train_seg.poly_schedule(optimizer, max_iters=10, power=0.9)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 1.0 and lrs[5] == pytest.approx(0.5**0.9) and optimizer.param_groups[0]['lr'] == 0.0


TINY = [
    '--data.synthetic_train', '4', '--data.synthetic_val', '2', '--data.batch_size', '2', '--data.workers', '0',
    '--data.crop_size', '64', '--data.scale', '128', '64', '--device', 'cpu', '--no-tensorboard', '--iters', '3',
    '--eval_interval', '2', '--log_interval', '1', '--threads', 'null', '--channels', '16', '--aux_channels', '8',
]  # fmt: skip


def test_train_seg_then_eval_seg(synthetic_root, tmp_path):
    metrics = train_seg.main(train_seg.parse_args([*TINY, '--output_dir', str(tmp_path)]))
    state = load_checkpoint(tmp_path / 'last.pt')
    assert state['step'] == 3 and metrics['model'] == 'deeplabv3_emo_test'
    rows = (tmp_path / 'log.csv').read_text().splitlines()
    assert len(rows) == 3  # header + evaluations at iterations 2 and 3
    result = eval_seg.main(eval_seg.parse_args(['--checkpoint', str(tmp_path / 'last.pt')]))
    for key in ('aAcc', 'mIoU', 'mAcc'):
        assert 0.0 <= result[key] <= 1.0
        assert result[key] == pytest.approx(metrics['last'][key], abs=1e-12)
    assert json.loads((tmp_path / 'eval' / 'metrics.json').read_text())['images'] == 2
    flip = eval_seg.main(
        eval_seg.parse_args(['--checkpoint', str(tmp_path / 'last.pt'), '--eval_scales', '0.75', '1.0', '--eval_flip'])
    )
    assert flip['scales'] == [0.75, 1.0] and flip['flip'] is True


@pytest.mark.slow
def test_train_seg_resume_equals_uninterrupted_run(synthetic_root, cut_and_resume):
    cfg = train_seg.parse_args([*TINY, '--iters', '4', '--data.workers', '1'])
    a, _, b = cut_and_resume(train_seg.main, cfg, 'on_eval', 2)
    assert a['step'] == b['step'] == 4
    for key, value in a['model'].items():
        assert torch.equal(value, b['model'][key]), key


def test_segmentation_recipes_are_the_official_configs():
    for head in ('deeplabv3', 'pspnet'):
        for variant, window in (('1m', 7), ('2m', 7), ('5m', 16)):
            path = DEFAULT_SEG_CONFIG.parent / f'{head}_emo_{variant}_ade20k_80k.yaml'
            cfg = train_seg.parse_args(['-c', str(path)])
            assert (cfg.head, cfg.window_size, cfg.iters, cfg.lr, cfg.lr_base_batch) == (
                head,
                window,
                80000,
                1.2e-4,
                16,
            )
            assert (cfg.weight_decay, cfg.poly_power, cfg.channels, cfg.aux_weight) == (0.01, 0.9, 256, 0.4)
            assert (cfg.data.crop_size, tuple(cfg.data.scale), cfg.num_classes) == (512, (2048, 512), 150)


@pytest.mark.slow
def test_macs_match_the_paper():
    """Conv + matmul MACs of DeepLabv3-EMO-1M at 512 x 512 (test-time model): 2.38 G, the README's 2.4 G."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_segmentor('emo_1m', 'deeplabv3', num_classes=150).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, 512, 512))
    assert counter.get_total_flops() / 2e9 == pytest.approx(2.4, rel=0.03)
