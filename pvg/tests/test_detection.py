"""Mask R-CNN with the Pyramid ViG / PVG + FPN backbone: FPN strides and shapes, the mmdet 1x head settings, a
training step's losses, frozen stages, the optimiser groups and schedule, the recipes, and train_det.py ->
eval_det.py reproducing box and mask AP on a tiny synthetic COCO set."""

import json
import math

import pytest
import timm
import torch
from torch.nn.modules.batchnorm import _BatchNorm

import pvg  # noqa: F401  (registers the models)
from pvg import eval_det, train_det
from pvg.config import CONFIG_DIR
from pvg.detection import PyramidViGFPN, apply_frozen_stages, build_mask_rcnn
from shared.checkpoint import CheckpointError
from shared.testing import assert_resume_refused


def _targets(sizes):
    """One box + its mask per image (labels from 1)."""
    targets = []
    for i, (h, w) in enumerate(sizes):
        mask = torch.zeros(1, h, w, dtype=torch.uint8)
        x0, y0 = 8 + 4 * i, 10
        mask[0, y0 : y0 + 40, x0 : x0 + 30] = 1
        box = torch.tensor([[x0, y0, x0 + 30, y0 + 40]], dtype=torch.float32)
        targets.append({'boxes': box, 'labels': torch.tensor([1 + i]), 'masks': mask})
    return targets


@pytest.mark.parametrize('variant', ['pvig_test', 'pvg_test'])
def test_fpn_levels_have_strides_4_to_64(variant):
    backbone = PyramidViGFPN(timm.create_model(variant), out_channels=32).eval()
    with torch.no_grad():
        feats = backbone(torch.rand(2, 3, 96, 128))
    assert list(feats) == ['0', '1', '2', '3', 'pool']
    for (name, feat), stride in zip(feats.items(), (4, 8, 16, 32, 64)):
        assert feat.shape == (2, 32, math.ceil(96 / stride), math.ceil(128 / stride)), name
    # every stage output feeds the FPN (ViG issue #104): four laterals with the stage widths
    widths = [m.in_channels for m in backbone.fpn.inner_blocks.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [info['num_chs'] for info in backbone.body.feature_info]


def test_mask_rcnn_has_the_mmdet_1x_heads():
    model = build_mask_rcnn('pvg_test', num_classes=5, fpn_channels=32, min_size=96, max_size=128)
    assert model.roi_heads.box_predictor.cls_score.out_features == 6  # 5 classes + background
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 6
    assert model.roi_heads.box_roi_pool.sampling_ratio == 0 and model.roi_heads.box_roi_pool.output_size == (7, 7)
    assert model.roi_heads.mask_roi_pool.output_size == (14, 14)
    assert [s[0] for s in model.rpn.anchor_generator.sizes] == [32, 64, 128, 256, 512]
    assert model.rpn._post_nms_top_n == {'training': 2000, 'testing': 1000}  # torchvision default; cfg sets 1000
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 512
    assert model.transform.image_mean == [0.485, 0.456, 0.406]


def test_training_step_losses_are_finite_and_reach_every_stage():
    torch.manual_seed(0)
    model = build_mask_rcnn('pvg_test', num_classes=3, fpn_channels=32, min_size=96, max_size=128)
    model.train()
    images = [torch.rand(3, 96, 128), torch.rand(3, 96, 96)]
    losses = model(images, _targets([(96, 128), (96, 96)]))
    assert set(losses) == set(train_det.LOSS_NAMES)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    body = model.backbone.body
    first_block_of_each_stage = [0, body.stage_ends[0] + 1, body.stage_ends[1] + 1, body.stage_ends[2] + 1]
    for n in first_block_of_each_stage:
        grads = [p.grad for p in body.backbone[n].parameters() if p.requires_grad]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), n
    model.eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 96, 128)])
    assert out['masks'].shape[1:] == (1, 96, 128) and out['masks'].shape[0] == len(out['boxes'])


def test_frozen_stages_and_norm_eval():
    model = build_mask_rcnn('pvig_test', num_classes=2, fpn_channels=16, frozen_stages=1, norm_eval=True)
    model.train()
    body = model.backbone.body
    assert not any(p.requires_grad for p in body.stem.parameters()) and not body.pos_embed.requires_grad
    assert not any(p.requires_grad for p in body.backbone[: body.stage_ends[0] + 1].parameters())
    later = body.backbone[body.stage_ends[0] + 1 :]
    # later stages stay trainable (the relative-position tensors are frozen parameters in every model, as official)
    assert all(p.requires_grad for n, p in later.named_parameters() if not n.endswith('relative_pos'))
    assert all(not m.training for m in body.modules() if isinstance(m, _BatchNorm))
    assert model.backbone.fpn.training
    with pytest.raises(ValueError, match='frozen_stages'):
        apply_frozen_stages(body, 5, norm_eval=False)


def test_param_groups_and_step_schedule():
    model = build_mask_rcnn('pvg_test', num_classes=2, fpn_channels=16)
    decay, no_decay = train_det.param_groups(model, 0.05, no_decay_norm=True, no_decay_keys=['pos_embed'])
    no_decay_ids = {id(p) for p in no_decay['params']}
    assert id(model.backbone.body.pos_embed) in no_decay_ids
    bn = next(m for m in model.backbone.body.modules() if isinstance(m, _BatchNorm))
    assert id(bn.weight) in no_decay_ids and id(bn.bias) in no_decay_ids
    assert len(decay['params']) + len(no_decay['params']) == sum(1 for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = train_det.mmdet_step_schedule(opt, iters_per_epoch=10, steps=[8, 11], gamma=0.1, warmup_iters=5,
                                          warmup_ratio=0.001)  # fmt: skip
    lrs = []
    for _ in range(120):
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.001) and lrs[5] == pytest.approx(1.0)
    assert lrs[79] == pytest.approx(1.0) and lrs[80] == pytest.approx(0.1) and lrs[110] == pytest.approx(0.01)


def test_recipes_resolve_and_a_random_backbone_is_refused(tmp_path):
    cfg = train_det.parse_args(['-c', str(CONFIG_DIR / 'maskrcnn_pvg_s_coco_1x.yaml')])
    assert (cfg.model, cfg.lr, cfg.lr_base_batch, cfg.weight_decay) == ('pvg_s', 1e-4, 16, 0.05)
    assert (cfg.epochs, cfg.lr_steps, cfg.data.batch_size, cfg.data.min_size, cfg.data.max_size) == (
        12, [8, 11], 2, 800, 1333,
    )  # fmt: skip
    assert train_det.parse_args(['-c', str(CONFIG_DIR / 'maskrcnn_pvig_s_coco_1x.yaml')]).model == 'pvig_s'
    with pytest.raises(ValueError, match='pretrained_backbone'):
        train_det.main(dataclass_replace(cfg, output_dir=str(tmp_path / 'refused')))
    assert not (tmp_path / 'refused').exists()


def dataclass_replace(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def test_pretrained_backbone_is_loaded_strictly(tmp_path):
    source = timm.create_model('pvg_test')
    path = tmp_path / 'pvg_test.pth'
    torch.save(source.state_dict(), path)
    model = build_mask_rcnn('pvg_test', num_classes=2, fpn_channels=16, pretrained_backbone=path)
    body = model.backbone.body.state_dict()
    assert all(torch.equal(v, body[k]) for k, v in source.state_dict().items() if k in body)
    assert torch.equal(model.backbone.body.pos_embed, source.pos_embed)
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        build_mask_rcnn('pvg_test', num_classes=2, pretrained_backbone=tmp_path / 'missing.pth')
    with pytest.raises(RuntimeError, match='does not fit'):
        build_mask_rcnn('pvig_test', num_classes=2, pretrained_backbone=path)


TINY = [
    '--data.synthetic_train', '4',
    '--data.synthetic_val', '2',
    '--data.min_size', '64',
    '--data.max_size', '80',
    '--data.batch_size', '2',
    '--data.workers', '0',
    '--roi_batch_size_per_image', '32',
    '--box_score_thresh', '0.0',  # keep the untrained model's detections: the comparison is not vacuous
    '--fpn_channels', '16',
    '--epochs', '1',
    '--warmup_iters', '1',
    '--device', 'cpu',
    '--no-tensorboard',
    '--threads', 'null',
]  # fmt: skip


def test_train_det_then_eval_det_reproduces_box_and_mask_ap(synthetic_root, tmp_path):
    out = tmp_path / 'run'
    returned = train_det.main(train_det.parse_args([*TINY, '--output_dir', str(out)]))
    for name in ('config.yaml', 'log.csv', 'metrics.json', 'last.pt', 'best.pt'):
        assert (out / name).is_file(), name
    written = json.loads((out / 'metrics.json').read_text())  # NaN (no ground truth in a range) is written as null
    finite = [k for k, v in written['bbox'].items() if v is not None and k != 'num_detections']
    assert {'AP', 'AP50', 'AR100'} <= set(finite) and written['bbox']['num_detections'] > 0
    assert {k: returned['bbox'][k] for k in finite} == pytest.approx({k: written['bbox'][k] for k in finite})
    evaluated = eval_det.main(eval_det.parse_args(['--checkpoint', str(out / 'last.pt'), '--threads', 'null']))
    assert evaluated['num_detections'] == written['bbox']['num_detections']
    for key in finite:
        assert evaluated[key] == pytest.approx(written['bbox'][key]), key
        if written['segm'][key] is not None:
            assert evaluated['segm'][key] == pytest.approx(written['segm'][key]), key
    assert json.loads((out / 'eval' / 'metrics.json').read_text())['segm']['AR100'] == pytest.approx(
        written['segm']['AR100']
    )


def test_eval_det_refuses_foreign_checkpoints(tmp_path):
    path = tmp_path / 'foreign.pt'
    torch.save({'package': 'emo', 'model': {}}, path)
    with pytest.raises(CheckpointError):
        eval_det.parse_args(['--checkpoint', str(path)])


class _Interrupt(Exception):
    """Stops a run after its first epoch's checkpoint, as an interrupted job."""


def _interrupt(epoch, row):
    raise _Interrupt


@pytest.mark.slow
def test_train_det_resume_equals_uninterrupted_run(synthetic_root, tmp_path):
    args = [*TINY, '--epochs', '2', '--eval_interval', '0', '--checkpoint_interval', '1']
    full = train_det.main(train_det.parse_args([*args, '--output_dir', str(tmp_path / 'full')]))
    with pytest.raises(_Interrupt):
        train_det.main(train_det.parse_args([*args, '--output_dir', str(tmp_path / 'cut')]), on_epoch_end=_interrupt)
    resumed = train_det.main(train_det.parse_args([*args, '--resume', str(tmp_path / 'cut' / 'last.pt')]))
    assert resumed['bbox'] == pytest.approx(full['bbox'], nan_ok=True)
    assert resumed['segm'] == pytest.approx(full['segm'], nan_ok=True)
    a = torch.load(tmp_path / 'full' / 'last.pt', weights_only=True)['model']
    b = torch.load(tmp_path / 'cut' / 'last.pt', weights_only=True)['model']
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = [*args, '--resume', str(tmp_path / 'cut' / 'last.pt'), '--frozen_stages', '2']
    assert_resume_refused(lambda: train_det.main(train_det.parse_args(other)), tmp_path / 'cut', 'frozen_stages')


def test_roi_align_is_mmdets_aligned_one_and_old_checkpoints_keep_torchvisions(tmp_path):
    from shared.checkpoint import save_checkpoint, training_state
    from shared.config import config_to_dict
    from shared.detection import PyramidRoIAlign

    cfg = train_det.parse_args(TINY)
    assert cfg.roi_aligned
    model = build_mask_rcnn('pvg_test', num_classes=2, fpn_channels=16)
    for pool in (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool):
        assert isinstance(pool, PyramidRoIAlign) and pool.aligned
    assert not build_mask_rcnn(
        'pvg_test', num_classes=2, fpn_channels=16, roi_aligned=False
    ).roi_heads.box_roi_pool.aligned
    # a checkpoint written before the switch existed was pooled unaligned: its evaluation and resume read it so
    old = {k: v for k, v in config_to_dict(cfg).items() if k != 'roi_aligned'}
    save_checkpoint(training_state('pvg', old, model=model), tmp_path / 'old.pt')
    assert not eval_det.parse_args(['--checkpoint', str(tmp_path / 'old.pt')]).roi_aligned
    save_checkpoint(training_state('pvg', config_to_dict(cfg), model=model), tmp_path / 'new.pt')
    assert eval_det.parse_args(['--checkpoint', str(tmp_path / 'new.pt')]).roi_aligned
