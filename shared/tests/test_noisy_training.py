"""shared.noisy.supervised (exact resume, NaN guard) and the DivideMix engine (beats CE at 50 % symmetric noise)."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from shared.distributed import DistContext
from shared.logger import RunLogger
from shared.noisy.data import CIFAR_MEAN, CIFAR_STD, CifarTrainTransform, Normalize, load_cifar, noisy_labels_for
from shared.noisy.dividemix import DivideMix, DivideMixConfig, cifar_defaults
from shared.noisy.models import PreActResNet18
from shared.noisy.supervised import SupervisedConfig, train_supervised
from shared.testing import single_torch_thread  # noqa: F401  (autouse fixture)
from shared.training import NonFiniteLossError

CPU = DistContext(0, 1, 0, torch.device("cpu"))


def _toy_images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 60, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    images[labels == 1, 0] += 150
    return images, labels


class Killed(Exception):
    pass


def _run(tmp, resume=None, hook=None, model=None):
    images, labels = _toy_images()
    torch.manual_seed(0)
    model = model or PreActResNet18(num_classes=2, width=4)
    cfg = SupervisedConfig(epochs=3, batch_size=16, milestones=[2])
    logger = RunLogger(tmp, tensorboard=False, name="sup")
    try:
        return train_supervised(
            model,
            images,
            labels,
            CifarTrainTransform(10, padding=1),
            images[:32],
            labels[:32],
            Normalize(CIFAR_MEAN[10], CIFAR_STD[10]),
            cfg,
            CPU,
            logger,
            tmp / "last.pt",
            resume_state=resume,
            on_epoch_end=hook,
        ), model
    finally:
        logger.close()


def test_supervised_resume_is_bit_identical(tmp_path):
    full, full_model = _run(tmp_path / "full")

    def kill(epoch, row):
        if epoch == 0:
            raise Killed

    with pytest.raises(Killed):
        _run(tmp_path / "cut", hook=kill)
    state = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert state["epoch"] == 0
    resumed, resumed_model = _run(tmp_path / "cut", resume=state)
    assert resumed == full
    for (k, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_supervised_nan_loss_names_the_step(tmp_path):
    class Poisoned(PreActResNet18):
        def forward(self, x, return_features=False):
            return super().forward(x) * float("nan")

    torch.manual_seed(0)
    with pytest.raises(NonFiniteLossError, match="at step 0"):
        _run(tmp_path, model=Poisoned(num_classes=2, width=4))


def test_supervised_soft_labels_and_batch_check(tmp_path):
    images, labels = _toy_images(16)
    soft = torch.nn.functional.one_hot(labels, 2).float() * 0.8 + 0.1
    logger = RunLogger(tmp_path, tensorboard=False, name="soft")
    model = PreActResNet18(num_classes=2, width=4)
    norm = Normalize(CIFAR_MEAN[10], CIFAR_STD[10])
    result = train_supervised(
        model, images, soft, norm, images, labels, norm, SupervisedConfig(epochs=1, batch_size=8), CPU, logger, None
    )
    assert 0 <= result["last"] <= 100
    with pytest.raises(ValueError, match="exceeds the 16 training samples"):
        train_supervised(
            model,
            images,
            labels,
            norm,
            images,
            labels,
            norm,
            SupervisedConfig(epochs=1, batch_size=32),
            CPU,
            logger,
            None,
        )
    logger.close()


def test_dividemix_state_round_trip(tmp_path):
    images, labels = _toy_images(64)
    norm = Normalize(CIFAR_MEAN[10], CIFAR_STD[10])
    torch.manual_seed(0)
    cfg = DivideMixConfig(epochs=2, warmup_epochs=1, batch_size=16, warmup_batch_size=16, lr=0.02)
    logger = RunLogger(tmp_path, tensorboard=False, name="dm")

    def make(**kwargs) -> DivideMix:
        nets = PreActResNet18(2, 4), PreActResNet18(2, 4)
        return DivideMix(
            *nets, images, labels, 2, norm, norm, images, labels, cfg, torch.device("cpu"), logger, **kwargs
        )

    engine = make(clean_labels=labels)
    result = engine.fit(tmp_path / "dm.pt")
    state = torch.load(tmp_path / "dm.pt", weights_only=True)
    assert state["epoch"] == 1 and result["last"] == state["tracker"]["last"]
    other = make()
    other.load_state_dict(copy.deepcopy(state))
    for a, b in zip(engine.nets[0].state_dict().values(), other.nets[0].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    logger.close()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 5 minutes alone on one core; a loaded machine takes several times that
def test_dividemix_beats_ce_at_50_percent_symmetric_noise(tmp_path):
    """Synthetic CIFAR-10 set, 50 % symmetric noise, tiny PreAct ResNet-18: DivideMix > CE (last epoch).

    No augmentation, so that CE fits the noisy labels within the 40 epochs (the papers' regime: their CE baselines are
    last-epoch numbers after memorisation); with crop views CE had not fitted the noise by the last epoch and the
    comparison was one against an early-stopped CE (DivideMix 68.4 vs CE 70.8 with the exact PreResNet layout).
    """
    from shared.synthetic import synthetic_root, write_cifar

    root = write_cifar(synthetic_root() / "noisy_engine_cifar10_n1000", 10, train_size=1000, test_size=500, seed=0)
    train, test = load_cifar(root, 10, True, 16), load_cifar(root, 10, False, 16)
    noise = noisy_labels_for(train.labels, "sym", 0.5, 10, seed=0)
    labels = torch.from_numpy(noise.noisy.copy())
    norm, aug = Normalize(CIFAR_MEAN[10], CIFAR_STD[10]), CifarTrainTransform(10, padding=0, hflip=False)
    epochs = 40  # long enough for CE to fit the noisy half of a small training set
    np.random.seed(0)
    torch.manual_seed(0)
    ce_logger = RunLogger(tmp_path / "ce", tensorboard=False, name="ce")
    ce, _ = (
        train_supervised(
            PreActResNet18(10, 8),
            train.images,
            labels,
            aug,
            test.images,
            test.labels,
            norm,
            SupervisedConfig(epochs=epochs, batch_size=64, lr=0.02, milestones=[32]),
            CPU,
            ce_logger,
            None,
        ),
        None,
    )
    ce_logger.close()
    torch.manual_seed(0)
    nets = [PreActResNet18(10, 8), PreActResNet18(10, 8)]
    # DivideMix's CIFAR-10 sym-50 % settings (lambda_u 25, batch 64), on the short schedule of this small set
    short = {"epochs": epochs, "warmup_epochs": 5, "warmup_batch_size": 64, "lr_decay_epoch": 32, "rampup_length": 8}
    cfg = dataclasses.replace(cifar_defaults(10, "sym", 0.5), **short)
    dm_logger = RunLogger(tmp_path / "dm", tensorboard=False, name="dm")
    dm = DivideMix(
        nets[0],
        nets[1],
        train.images,
        labels,
        10,
        aug,
        norm,
        test.images,
        test.labels,
        cfg,
        torch.device("cpu"),
        dm_logger,
        clean_labels=train.labels,
    ).fit()
    dm_logger.close()
    assert dm["last"] > ce["last"], (dm, ce)


def test_supervised_epoch_samples_draws_a_balanced_budget_per_epoch(tmp_path):
    """``epoch_samples``: each epoch trains on a fresh class-balanced sample of that size (Clothing1M's budget)."""
    images, labels = _toy_images(64)
    rows = []
    logger = RunLogger(tmp_path, tensorboard=False, name="budget")
    torch.manual_seed(0)
    train_supervised(
        PreActResNet18(num_classes=2, width=4),
        images,
        labels,
        Normalize(CIFAR_MEAN[10], CIFAR_STD[10]),
        images[:16],
        labels[:16],
        Normalize(CIFAR_MEAN[10], CIFAR_STD[10]),
        SupervisedConfig(epochs=2, batch_size=8, epoch_samples=16),
        CPU,
        logger,
        tmp_path / "last.pt",
        on_epoch_end=lambda epoch, row: rows.append(row),
    )
    logger.close()
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 2 * (16 // 8)  # 16 samples per epoch, not 64
