"""shared.noisy: DivideMix's exact PreAct ResNet-18 key layout, the model API and the engine's extension points."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared.logger import RunLogger
from shared.noisy.data import CIFAR_MEAN, CIFAR_STD, CifarTrainTransform, Normalize, ViewDataset
from shared.noisy.dividemix import (
    DivideMix,
    DivideMixConfig,
    MixBatch,
    clothing1m_defaults,
    mixmatch,
    sample_beta,
)
from shared.noisy.models import PreActResNet18, preact_resnet18, resnet50_noisy
from shared.noisy.simclr import load_ssl_checkpoint
from shared.testing import single_torch_thread  # noqa: F401  (autouse fixture)

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _official_preresnet18_keys() -> dict[str, tuple[int, ...]]:
    """Key -> shape of DivideMix's ``PreResNet.py`` ResNet18(num_classes=10), written out from the released file
    (stem conv1/bn1, blocks bn1 conv1 bn2 conv2, ``shortcut.0`` projections, ``linear``), not from this package."""
    keys: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 3, 3)}
    keys.update({f"bn1.{p}": (64,) if p != "num_batches_tracked" else () for p in _BN})
    for layer, (cin, cout) in enumerate([(64, 64), (64, 128), (128, 256), (256, 512)], 1):
        for block in (0, 1):
            inp = cin if block == 0 else cout
            prefix = f"layer{layer}.{block}."
            keys.update({f"{prefix}bn1.{p}": (inp,) if p != "num_batches_tracked" else () for p in _BN})
            keys[f"{prefix}conv1.weight"] = (cout, inp, 3, 3)
            keys.update({f"{prefix}bn2.{p}": (cout,) if p != "num_batches_tracked" else () for p in _BN})
            keys[f"{prefix}conv2.weight"] = (cout, cout, 3, 3)
            if block == 0 and layer > 1:
                keys[f"{prefix}shortcut.0.weight"] = (cout, cin, 1, 1)
    keys.update({"linear.weight": (10, 512), "linear.bias": (10,)})
    return keys


OFFICIAL_KEYS = [
    "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
    "layer1.0.bn1.weight", "layer1.0.conv1.weight", "layer1.0.bn2.weight", "layer1.0.conv2.weight",
    "layer1.1.bn1.running_var", "layer2.0.shortcut.0.weight", "layer3.0.shortcut.0.weight",
    "layer4.0.shortcut.0.weight", "layer4.1.conv2.weight", "layer4.1.bn2.num_batches_tracked",
    "linear.weight", "linear.bias",
]  # fmt: skip


def _random_official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in _official_preresnet18_keys().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.1
    return state


def _official_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """DivideMix ``PreResNet.ResNet.forward`` in eval mode, written functionally from the released file."""

    def bn(prefix, t):
        return F.batch_norm(t, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                            state[f"{prefix}.weight"], state[f"{prefix}.bias"], False)  # fmt: skip

    out = F.relu(bn("bn1", F.conv2d(x, state["conv1.weight"], padding=1)))
    for layer in range(1, 5):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            stride = 2 if (block == 0 and layer > 1) else 1
            pre = F.relu(bn(f"{p}.bn1", out))
            short = (
                F.conv2d(pre, state[f"{p}.shortcut.0.weight"], stride=stride)
                if f"{p}.shortcut.0.weight" in state
                else pre
            )
            mid = F.relu(bn(f"{p}.bn2", F.conv2d(pre, state[f"{p}.conv1.weight"], stride=stride, padding=1)))
            out = F.conv2d(mid, state[f"{p}.conv2.weight"], padding=1) + short
    out = F.avg_pool2d(out, 4).flatten(1)
    return F.linear(out, state["linear.weight"], state["linear.bias"])


def test_official_dividemix_key_layout_loads_strictly_and_computes_the_same_function():
    official = _random_official_state()
    assert set(OFFICIAL_KEYS) <= set(official)
    model = preact_resnet18(num_classes=10).eval()
    model.load_state_dict(official, strict=True)
    assert list(model.state_dict()) == list(_official_preresnet18_keys())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), _official_forward(official, x), atol=1e-4)


def test_c2d_simclr_checkpoint_in_the_official_layout_loads_strictly(tmp_path):
    official = _random_official_state(1)
    backbone = {f"module.{k}": v for k, v in official.items() if not k.startswith("linear")}
    backbone["module.head.0.weight"] = torch.zeros(128, 512)  # projection head: dropped
    torch.save({"model": backbone, "epoch": 500}, tmp_path / "ckpt_cifar10_resnet18.pth")
    model = preact_resnet18(num_classes=10)
    left = load_ssl_checkpoint(model, tmp_path / "ckpt_cifar10_resnet18.pth", strict_backbone=True)
    assert left == ["linear.weight", "linear.bias"]
    for key, value in official.items():
        if not key.startswith("linear"):
            assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("which", ["preact", "resnet50"])
def test_model_api_feature_map_pool_head(which):
    model = PreActResNet18(10, width=4).eval() if which == "preact" else resnet50_noisy(14).eval()
    x = torch.randn(2, 3, 32 if which == "preact" else 64, 32 if which == "preact" else 64)
    with torch.no_grad():
        fmap = model.forward_feature_map(x)
        logits, pooled = model(x, return_features=True)
    assert fmap.dim() == 4 and fmap.shape[:2] == (2, model.num_features)
    assert fmap.shape[2:] == ((4, 4) if which == "preact" else (2, 2))
    assert torch.allclose(model.pool(fmap), pooled, atol=1e-6)
    assert torch.allclose(model.forward_head(model.pool(fmap)), logits, atol=1e-5)
    assert torch.allclose(model.forward_features(x), pooled, atol=1e-6)


def test_mixmatch_uses_the_run_generator_not_global_numpy():
    x, y = torch.randn(8, 3), F.one_hot(torch.arange(8) % 3, 3).float()
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    a = mixmatch(x, y, 4.0, torch.Generator().manual_seed(3))
    b = mixmatch(x, y, 4.0, torch.Generator().manual_seed(3))
    assert np.array_equal(np.random.get_state()[1], before)
    assert a[2] == b[2] and torch.equal(a[0], b[0]) and a[2] >= 0.5
    mixed_x, mixed_y, _ = mixmatch(x, y, 4.0, torch.Generator().manual_seed(3), num_forward=4)
    assert mixed_x.shape == (4, 3) and torch.allclose(mixed_y.sum(1), torch.ones(4))
    draws = np.array([sample_beta(0.5, torch.Generator().manual_seed(s)) for s in range(4000)])
    assert draws.mean() == pytest.approx(0.5, abs=0.02) and draws.var() == pytest.approx(1 / 8, abs=0.01)


def _toy(n=64):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 60, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    images[labels == 1, 0] += 150
    return images, labels


def _engine(cls, tmp_path, **cfg_kwargs):
    images, labels = _toy()
    norm = Normalize(CIFAR_MEAN[10], CIFAR_STD[10])
    torch.manual_seed(0)
    base = dict(epochs=2, warmup_epochs=1, batch_size=8, warmup_batch_size=16, lambda_u=25.0)
    cfg = DivideMixConfig(**{**base, **cfg_kwargs})
    logger = RunLogger(tmp_path, tensorboard=False, name="dm")
    nets = PreActResNet18(2, 4), PreActResNet18(2, 4)
    aug = CifarTrainTransform(10, padding=1)
    return cls(*nets, images, labels, 2, aug, norm, images, labels, cfg, torch.device("cpu"), logger, seed=3), logger


class _Recording(DivideMix):
    """Records the forwarded batch sizes and the warm-up loss; adds a masked group and an auxiliary loss."""

    need_feature_maps = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, int]] = []
        self.batches: list[MixBatch] = []

    def augment_batch(self, k, batch):
        attention = batch.feature_maps_x.pow(2).sum(1, keepdim=True)
        mask = F.interpolate(attention, size=batch.views_x[0].shape[-2:]) < attention.mean()
        batch.labeled.append(batch.views_x[0] * mask)
        batch.labeled_targets.append(batch.targets_x)
        self.batches.append(batch)
        return batch

    def extra_loss(self, k, batch, logits, mixed_target):
        self.seen.append((logits.shape[0], batch.num_labeled_rows))
        aux = self.nets[k].forward_feature_map(batch.labeled[-1]).pow(2).mean()
        return 0.01 * aux, {"aux": aux.item()}


def test_subclass_hooks_add_a_group_and_an_auxiliary_loss(tmp_path):
    engine, logger = _engine(_Recording, tmp_path)
    rows = []
    engine.fit(on_epoch_end=lambda e, row: rows.append(row))
    logger.close()
    assert "aux1" in rows[1] and "aux2" in rows[1] and rows[1]["aux1"] > 0
    batch = engine.batches[0]
    assert batch.feature_maps_x.shape[:2] == (8, engine.nets[0].num_features)
    assert len(batch.labeled) == 3 and batch.num_labeled_rows == 24  # two views + the masked group
    for forwarded, labeled_rows in engine.seen:
        assert forwarded == labeled_rows + (16 if engine.batches[0].unlabeled else 0)


def test_mix_forward_labeled_forwards_2b_rows_and_warmup_has_the_penalty(tmp_path):
    engine, logger = _engine(_Recording, tmp_path, lambda_u=0.0, mix_forward="labeled", asym_penalty=True)
    logits = torch.tensor([[2.0, 0.0]])
    ce = F.cross_entropy(logits, torch.tensor([0]))
    assert engine.warmup_loss(0, logits, torch.tensor([0])).item() < ce.item()  # CE + negative entropy (< 0)
    engine.fit()
    logger.close()
    assert engine.seen and all(forwarded == labeled for forwarded, labeled in engine.seen)
    assert any(b.unlabeled for b in engine.batches)  # the unlabeled rows were mixed as partners, not forwarded
    with pytest.raises(ValueError, match="lambda_u must be 0"):
        DivideMixConfig(mix_forward="labeled", lambda_u=25.0)


class _SixViews(DivideMix):
    guess_views = (0, 1)
    mix_views = (2, 3, 4, 5)

    def view_transforms(self, role):
        if role == "warmup":
            return super().view_transforms(role)
        return [self.train_transform] * 4 + [self.eval_transform] * 2

    def extra_loss(self, k, batch, logits, mixed_target):
        assert len(batch.views_x) == 6 and len(batch.labeled) == 4
        unlabeled = 0 if batch.index_u is None else len(batch.index_u)
        assert logits.shape[0] == 4 * len(batch.index_x) + 4 * unlabeled
        self.calls = getattr(self, "calls", 0) + 1
        return None, {}


def test_view_hook_delivers_six_views(tmp_path):
    engine, logger = _engine(_SixViews, tmp_path)
    engine.fit()
    logger.close()
    assert engine.calls > 0
    dataset = ViewDataset(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), [lambda im: im.float(), lambda im: im + 1])
    first, second, index = dataset[2]
    assert index == 2 and torch.equal(second, first.to(torch.uint8) + 1)


def test_resume_restores_the_mix_generator(tmp_path):
    engine, logger = _engine(DivideMix, tmp_path / "a", epochs=3)
    states = []
    engine.fit(tmp_path / "a.pt", on_epoch_end=lambda e, row: states.append(copy.deepcopy(engine.state_dict())))
    logger.close()
    resumed, logger = _engine(DivideMix, tmp_path / "b", epochs=3)
    resumed.fit(None, states[1])
    logger.close()
    for a, b in zip(engine.nets[0].state_dict().values(), resumed.nets[0].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(engine.generator.get_state(), resumed.generator.get_state())


def test_clothing1m_defaults_match_train_clothing1m_py():
    cfg = clothing1m_defaults()
    assert (cfg.batch_size, cfg.warmup_batch_size, cfg.epoch_samples, cfg.warmup_samples) == (32, 64, 32000, 64000)
    assert (cfg.lr, cfg.weight_decay, cfg.lr_decay_epoch, cfg.epochs, cfg.warmup_epochs) == (0.002, 1e-3, 40, 81, 1)
    assert (cfg.alpha, cfg.lambda_u, cfg.p_threshold, cfg.temperature) == (0.5, 0.0, 0.5, 0.5)
    assert cfg.asym_penalty and cfg.mix_forward == "labeled"
    assert (cfg.gmm_max_iter, cfg.gmm_tol, cfg.gmm_reg_covar) == (10, 1e-2, 5e-4)
