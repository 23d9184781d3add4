"""RetinaNet-EMO training/evaluation scripts: a 2-iteration run re-evaluated by eval_det.py, exact resume, the mmdet
schedule and no-decay rule, the COCO reader and grouped sampler, the COCO conversion, the recipe YAMLs."""

import json
import math
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from torch import nn

import emo  # noqa: F401  (registers the models)
from emo import eval_det, train_det
from emo.config import DetDataConfig
from emo.data import build_detection_datasets, coco_split
from emo.detection import build_retinanet
from shared.checkpoint import load_checkpoint
from shared.detection import CocoDetection, GroupedDistributedSampler, detection_collate
from shared.distributed import init_distributed

CONFIGS = Path(train_det.__file__).resolve().parent / 'configs'
# 4 train / 2 val synthetic COCO images (192 px high, square or 1.25x wide), batch 2: 2-3 iterations per epoch
TINY = [
    '--data.synthetic_train',
    '4',
    '--data.synthetic_val',
    '2',
    '--data.batch_size',
    '2',
    '--data.eval_batch_size',
    '2',
    '--data.workers',
    '0',
    '--device',
    'cpu',
    '--no-tensorboard',
    '--warmup_iters',
    '2',
    '--log_interval',
    '1',
    '--threads',
    'null',
]


def test_train_det_few_iterations_then_eval_det(synthetic_root, tmp_path):
    metrics = train_det.main(train_det.parse_args([*TINY, '--epochs', '1', '--output_dir', str(tmp_path)]))
    for name in ('config.yaml', 'log.csv', 'metrics.json', 'last.pt', 'best.pt'):
        assert (tmp_path / name).is_file(), name
    state = load_checkpoint(tmp_path / 'last.pt')
    train_set, _ = build_detection_datasets(train_det.parse_args(TINY).data)
    groups = train_set.aspect_groups()
    assert len(train_set) == 4 and 0 < sum(groups) < 4  # both aspect groups present
    # each aspect group is padded to whole batches of 2 (mmdet's grouped sampler)
    assert state['step'] == sum(math.ceil(n / 2) for n in (groups.count(0), groups.count(1))) and state['epoch'] == 0
    assert state['categories']['ids'] == [1, 2, 3, 5, 6, 7]  # non-contiguous COCO-style ids, mapped to 0..5
    result = eval_det.main(eval_det.parse_args(['--checkpoint', str(tmp_path / 'last.pt')]))
    assert {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR100', 'per_class'} <= set(result)
    for key in ('AP', 'AP50', 'AP75', 'APs', 'APm'):
        assert 0.0 <= result[key] <= 1.0
        assert result[key] == pytest.approx(metrics['last'][key], abs=1e-12)
    written = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    assert written['model'] == 'retinanet_emo_test' and written['images'] == 2


def test_train_det_resume_equals_uninterrupted_run(synthetic_root, cut_and_resume):
    cfg = train_det.parse_args([*TINY, '--epochs', '2'])
    a, at_cut, b = cut_and_resume(train_det.main, cfg, 'on_epoch_end', 0)
    assert at_cut['epoch'] == 0
    assert a['step'] == b['step'] > 2 and a['epoch'] == b['epoch'] == 1
    for key, value in a['model'].items():
        assert torch.equal(value, b['model'][key]), key
    assert a['optimizer']['state'][0]['exp_avg'].equal(b['optimizer']['state'][0]['exp_avg'])
    assert a['best'] == b['best']


def test_mmdet_cosine_schedule_with_linear_warmup():
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=2.0)
    scheduler = train_det.mmdet_cosine_schedule(
        optimizer, epochs=12, iters_per_epoch=10, warmup_iters=5, warmup_ratio=1e-3
    )
    lrs = []
    for _ in range(120):
        lrs.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(2.0 * 1e-3)  # mmcv: lr * (1 - (1 - i / W) * (1 - ratio))
    assert lrs[2] == pytest.approx(2.0 * (1 - 0.6 * 0.999))
    assert lrs[5] == lrs[9] == pytest.approx(2.0)  # epoch 0 of the per-epoch cosine
    assert lrs[10] == lrs[19] == pytest.approx(1.0 + math.cos(math.pi / 12))
    assert lrs[119] == pytest.approx(1.0 + math.cos(11 * math.pi / 12))


def test_no_weight_decay_on_norm_parameters_only():
    model = build_retinanet('emo_test', num_classes=3)
    decay, no_decay = train_det.detection_param_groups(model, 0.05, ['norm'])
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay['weight_decay'] == 0.05 and no_decay['weight_decay'] == 0.0
    assert all('norm' in names[id(p)] for p in no_decay['params'])
    assert all('norm' not in names[id(p)] for p in decay['params'])
    assert any(names[id(p)].endswith('.bias') for p in decay['params'])  # mmdet decays biases
    frozen = {id(p) for p in model.backbone.body.stage1.parameters()}
    assert not frozen & {id(p) for g in (decay, no_decay) for p in g['params']}  # frozen_stages=1
    assert len(decay['params']) + len(no_decay['params']) == sum(p.requires_grad for p in model.parameters())


def _write_coco(root: Path, degenerate: bool = True) -> Path:
    """3 images: a landscape one with a normal, a crowd and (``degenerate``) a sub-pixel box; a portrait one; one
    without boxes."""
    (root / 'images').mkdir(parents=True)
    sizes = {1: (80, 60), 2: (50, 70), 3: (64, 64)}
    for image_id, size in sizes.items():
        Image.new('RGB', size, (image_id * 40, 0, 0)).save(root / 'images' / f'{image_id}.png')
    annotations = [
        dict(id=1, image_id=1, category_id=7, bbox=[10, 5, 30, 20], area=600, iscrowd=0),
        dict(id=2, image_id=1, category_id=3, bbox=[0, 0, 40, 40], area=1600, iscrowd=1),
        dict(id=4, image_id=2, category_id=3, bbox=[5, 10, 20, 40], area=800, iscrowd=0),
    ]
    if degenerate:
        annotations.append(dict(id=3, image_id=1, category_id=3, bbox=[50, 30, 0.5, 10], area=5, iscrowd=0))
    content = dict(
        images=[dict(id=i, file_name=f'{i}.png', width=w, height=h) for i, (w, h) in sizes.items()],
        annotations=annotations,
        categories=[dict(id=3, name='cat'), dict(id=7, name='dog')],
    )
    path = root / 'instances.json'
    path.write_text(json.dumps(content))
    return path


def test_coco_reader_maps_categories_filters_and_flips(tmp_path):
    ann = _write_coco(tmp_path)
    val = coco_split(tmp_path / 'images', ann, train=False)
    assert val.ids == [1, 2, 3] and val.cat_ids == [3, 7] and val.category_names == ['cat', 'dog']
    image, target = val[0]
    assert image.shape == (3, 60, 80) and image.dtype == torch.float32 and image.max() <= 1
    assert target['boxes'].tolist() == [[10, 5, 40, 25]]  # crowd and sub-pixel boxes dropped
    assert target['labels'].tolist() == [1] and target['image_id'] == 1
    assert val[2][1]['boxes'].shape == (0, 4)
    train = coco_split(tmp_path / 'images', ann, train=True, hflip=1.0)
    assert train.ids == [1, 2]  # the image without a usable box is left out of training
    assert train.aspect_groups() == [1, 0]
    flipped_image, flipped = train[0]
    assert torch.equal(flipped_image, image.flip(-1))
    assert flipped['boxes'].tolist() == [[40, 5, 70, 25]]


def test_coco_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match='coco2017'):
        coco_split(tmp_path / 'val2017', tmp_path / 'annotations' / 'instances_val2017.json')
    with pytest.raises(FileNotFoundError, match='coco2017'):
        build_detection_datasets(DetDataConfig(root=str(tmp_path / 'coco')))
    ann = _write_coco(tmp_path)
    (tmp_path / 'images' / '2.png').write_bytes(b'not an image')
    dataset = coco_split(tmp_path / 'images', ann)
    with pytest.raises(RuntimeError, match=r'2\.png'):
        dataset[1]


def test_grouped_sampler_batches_one_aspect_group_and_shards_ranks():
    groups = [0, 1, 1, 0, 1, 1, 1, 0, 1, 1]  # 3 portrait, 7 landscape
    shares = []
    for rank in range(2):
        sampler = GroupedDistributedSampler(groups, samples_per_gpu=2, num_replicas=2, rank=rank, seed=3)
        sampler.set_epoch(1)
        indices = list(sampler)
        assert len(indices) == len(sampler) == 6  # groups padded to multiples of 4: 4 + 8 = 12 over 2 ranks
        for i in range(0, len(indices), 2):
            assert groups[indices[i]] == groups[indices[i + 1]]
        assert indices == list(sampler)  # a function of (seed, epoch)
        shares.append(indices)
    assert set(shares[0]) | set(shares[1]) == set(range(10))
    sampler = GroupedDistributedSampler(groups, 2, 2, 0, seed=3)
    sampler.set_epoch(2)
    assert list(sampler) != shares[0]


class _GroundTruthDetector(nn.Module):
    """Returns the ground truth of each image it is shown (in loader order) as detections with score 1."""

    def __init__(self, dataset: CocoDetection):
        super().__init__()
        self.targets = [dataset[i][1] for i in range(len(dataset))]

    def forward(self, images):
        outputs = []
        for _ in images:
            target = self.targets.pop(0)
            outputs.append(
                {'boxes': target['boxes'], 'labels': target['labels'], 'scores': torch.ones(len(target['labels']))}
            )
        return outputs


def test_evaluate_converts_detections_to_coco(tmp_path):
    ann = _write_coco(tmp_path, degenerate=False)
    dataset = coco_split(tmp_path / 'images', ann)
    ctx = init_distributed('cpu')
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=detection_collate)
    metrics = train_det.evaluate(_GroundTruthDetector(dataset), loader, dataset, ctx)
    assert metrics['AP'] == pytest.approx(1.0) and metrics['AP50'] == pytest.approx(1.0)
    assert metrics['num_detections'] == 2 and metrics['per_class'] == {
        'cat': pytest.approx(1.0),
        'dog': pytest.approx(1.0),
    }


def test_pretrained_backbone_from_a_train_checkpoint_uses_its_ema(tmp_path):
    raw = timm.create_model('emo_test').state_dict()  # an emo.train checkpoint: raw weights, EMA weights, ...
    ema = {k: torch.rand_like(v) + 0.5 if v.is_floating_point() else v for k, v in raw.items()}
    path = tmp_path / 'last.pt'
    torch.save({'model': raw, 'ema': ema, 'optimizer': {}, 'epoch': 3}, path)
    detector = build_retinanet('emo_test', num_classes=2, pretrained_backbone=str(path))
    loaded = detector.backbone.body.state_dict()
    assert loaded and all(torch.equal(v, ema[k]) for k, v in loaded.items())


@pytest.mark.parametrize(('variant', 'window'), [('emo_1m', 7), ('emo_2m', 7), ('emo_5m', 10)])
def test_retinanet_recipe_yaml_is_the_paper_recipe(variant, window):
    cfg = train_det.parse_args(['-c', str(CONFIGS / f'retinanet_{variant}_coco_1x.yaml')])
    assert (cfg.model, cfg.window_size, cfg.frozen_stages, cfg.norm_eval, cfg.fpn_channels) == (
        variant,
        window,
        1,
        True,
        256,
    )
    assert (cfg.epochs, cfg.lr, cfg.lr_base_batch, cfg.weight_decay, cfg.no_decay_keys) == (
        12,
        2e-4,
        32,
        0.05,
        ['norm'],
    )
    assert (cfg.warmup_iters, cfg.warmup_ratio, cfg.min_lr, cfg.clip_grad, cfg.opt_betas) == (
        500,
        1e-3,
        0.0,
        None,
        (0.9, 0.999),
    )
    assert (cfg.data.batch_size * 8, cfg.data.min_size, cfg.data.max_size, cfg.data.hflip) == (32, 800, 1333, 0.5)
    assert (cfg.score_thresh, cfg.detections_per_img, cfg.allow_random_backbone) == (0.05, 100, False)
    with pytest.raises(ValueError, match='pretrained_backbone'):
        train_det.main(cfg)


def test_unknown_detection_config_key_is_an_error(capsys):
    with pytest.raises(SystemExit):
        train_det.parse_args(['--data.image_size', '64'])
    assert 'unknown argument' in capsys.readouterr().err


def test_retinanet_losses_are_normalised_per_batch_as_mmdet_and_old_runs_per_image():
    from shared.config import config_to_dict
    from shared.detection import RetinaNetLossNorm

    cfg = train_det.parse_args(TINY)
    assert cfg.loss_normalization == 'batch'
    model = build_retinanet('emo_test', num_classes=3, loss_normalization=cfg.loss_normalization)
    assert isinstance(model, RetinaNetLossNorm) and model.loss_normalization == 'batch'
    # a checkpoint written before the key existed trained with torchvision's per-image normalisation
    old = {k: v for k, v in config_to_dict(cfg).items() if k != 'loss_normalization'}
    assert type(cfg).upgrade_stored(old)['loss_normalization'] == 'image'
    assert type(cfg).upgrade_stored(config_to_dict(cfg))['loss_normalization'] == 'batch'
