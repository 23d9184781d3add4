"""Label-noise injection: rates, allowed transitions, determinism, persistence and input validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.label_noise import (
    CIFAR10_ASYMMETRIC_MAP,
    CIFAR100_COARSE_LABELS,
    NoisyLabels,
    asymmetric_noise,
    load_noisy_labels,
    realised_noise_rate,
    save_noisy_labels,
    symmetric_noise,
)
from shared.synthetic.cifar import CIFAR100_COARSE_CLASSES, CIFAR100_FINE_CLASSES

N = 50_000
CIFAR10 = np.arange(N) % 10
CIFAR100 = np.arange(N) % 100

# Superclass membership as listed on https://www.cs.toronto.edu/~kriz/cifar.html (independent of the index table).
SUPERCLASSES = {
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}


def test_cifar100_coarse_table_matches_the_official_superclass_lists() -> None:
    assert len(CIFAR100_FINE_CLASSES) == 100 and len(set(CIFAR100_FINE_CLASSES)) == 100
    assert list(CIFAR100_FINE_CLASSES) == sorted(CIFAR100_FINE_CLASSES)
    for fine_index, coarse_index in enumerate(CIFAR100_COARSE_LABELS):
        coarse_name = CIFAR100_COARSE_CLASSES[coarse_index]
        assert CIFAR100_FINE_CLASSES[fine_index] in SUPERCLASSES[coarse_name].split()


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("num_classes,labels", [(10, CIFAR10), (100, CIFAR100)])
def test_symmetric_rate_includes_true_class(rate: float, num_classes: int, labels: np.ndarray) -> None:
    noisy = symmetric_noise(labels, rate, num_classes, seed=1)
    expected = rate * (num_classes - 1) / num_classes
    assert abs(noisy.realised_rate - expected) < 0.01
    assert noisy.realised_rate == pytest.approx(realised_noise_rate(noisy.noisy, labels))
    # Flipped labels are spread over all other classes, roughly uniformly.
    counts = np.bincount(noisy.noisy[noisy.is_noisy], minlength=num_classes)
    assert counts.min() > 0.7 * counts.mean()


def test_symmetric_fixed_selection_touches_exactly_int_rate_n_samples() -> None:
    noisy = symmetric_noise(CIFAR10, 0.4, 10, seed=3)
    # Selected samples are int(0.4 * N); among them 1/10 keep their label by chance.
    assert abs(noisy.is_noisy.sum() - 0.9 * int(0.4 * N)) < 300
    bernoulli = symmetric_noise(CIFAR10, 0.4, 10, seed=3, selection="bernoulli")
    assert abs(bernoulli.realised_rate - 0.36) < 0.01


def test_cifar10_asymmetric_only_allowed_transitions_and_rate() -> None:
    noisy = asymmetric_noise(CIFAR10, 0.4, "cifar10", seed=0)
    summary = noisy.transition_summary()
    assert set(summary) == {"2->0", "3->5", "4->7", "5->3", "9->1"}
    assert abs(noisy.realised_rate - 0.2) < 0.01  # half of the classes map to themselves
    for source, count in summary.items():
        assert abs(count - 0.4 * N / 10) < 250, source
    counts = noisy.transition_counts()
    assert counts.sum() == N and np.trace(counts) == N - noisy.is_noisy.sum()
    assert CIFAR10_ASYMMETRIC_MAP == (0, 1, 0, 5, 7, 3, 6, 7, 8, 1)


def test_cifar100_asymmetric_is_next_class_in_superclass() -> None:
    noisy = asymmetric_noise(CIFAR100, 0.4, "cifar100", seed=0)
    assert abs(noisy.realised_rate - 0.4) < 0.01
    coarse = np.array(CIFAR100_COARSE_LABELS)
    changed = noisy.is_noisy
    assert (coarse[noisy.noisy[changed]] == coarse[noisy.clean[changed]]).all()
    for pair in noisy.transition_summary():
        source, target = map(int, pair.split("->"))
        members = np.flatnonzero(coarse == coarse[source])
        assert target == members[(list(members).index(source) + 1) % len(members)]
    # beaver(4) -> dolphin(30) -> otter(55) -> seal(72) -> whale(95) -> beaver(4)
    assert {"4->30", "30->55", "55->72", "72->95", "95->4"} <= set(noisy.transition_summary())


def test_cifar100_coarse_labels_given_define_the_groups() -> None:
    coarse = np.arange(N) % 100 // 50  # two fake superclasses: 0..49 and 50..99
    noisy = asymmetric_noise(CIFAR100, 1.0, "cifar100", seed=0, coarse_labels=coarse)
    assert {"0->1", "49->0", "50->51", "99->50"} <= set(noisy.transition_summary())
    with pytest.raises(ValueError, match="inconsistent"):
        asymmetric_noise(CIFAR100, 0.5, "cifar100", coarse_labels=np.arange(N) % 7)


def test_cifar100_consecutive_groups_reproduce_elr_definition() -> None:
    noisy = asymmetric_noise(CIFAR100, 0.5, "cifar100", seed=0, cifar100_groups="consecutive", selection="bernoulli")
    for pair in noisy.transition_summary():
        source, target = map(int, pair.split("->"))
        assert target == source // 5 * 5 + (source + 1) % 5
    assert abs(noisy.realised_rate - 0.5) < 0.01


def test_custom_mapping() -> None:
    labels = np.arange(10_000) % 10
    noisy = asymmetric_noise(labels, 0.5, dataset=None, seed=0, mapping={2: 7, 3: 8, 5: 6, 6: 5, 7: 1})
    assert set(noisy.transition_summary()) == {"2->7", "3->8", "5->6", "6->5", "7->1"}


def test_determinism_and_private_rng() -> None:
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = symmetric_noise(CIFAR10, 0.5, 10, seed=7)
    second = symmetric_noise(CIFAR10, 0.5, 10, seed=7)
    other = symmetric_noise(CIFAR10, 0.5, 10, seed=8)
    assert np.array_equal(first.noisy, second.noisy) and not np.array_equal(first.noisy, other.noisy)
    assert np.array_equal(np.random.get_state()[1], before)
    a = asymmetric_noise(CIFAR100, 0.3, "cifar100", seed=2)
    assert np.array_equal(a.noisy, asymmetric_noise(CIFAR100, 0.3, "cifar100", seed=2).noisy)


def test_rate_zero_and_one() -> None:
    assert symmetric_noise(CIFAR10, 0.0, 10).realised_rate == 0.0
    full = asymmetric_noise(CIFAR10, 1.0, "cifar10")
    assert full.realised_rate == pytest.approx(0.5)


def test_save_load_round_trip(tmp_path: Path) -> None:
    noisy = asymmetric_noise(CIFAR10[:1000], 0.4, "cifar10", seed=5)
    path = save_noisy_labels(tmp_path / "noise" / "asym_0.4.json", noisy)
    loaded = load_noisy_labels(path, expected_length=1000)
    assert np.array_equal(loaded.noisy, noisy.noisy) and np.array_equal(loaded.clean, noisy.clean)
    assert (loaded.noise_type, loaded.rate, loaded.seed, loaded.num_classes, loaded.selection, loaded.dataset) == (
        "asymmetric",
        0.4,
        5,
        10,
        "fixed",
        "cifar10",
    )
    assert loaded.realised_rate == noisy.realised_rate
    assert loaded.transition_summary() == json.loads(path.read_text())["transitions"]


def _corrupt(tmp_path: Path, edit) -> Path:
    path = save_noisy_labels(tmp_path / "n.json", symmetric_noise(CIFAR10[:100], 0.5, 10, seed=0))
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c["noisy"].pop(), "99 noisy labels but 100 clean"),
        (lambda c: c.pop("seed"), "missing field 'seed'"),
        (lambda c: c.update(rate="0.5"), "field 'rate' has type str"),
        (lambda c: c.update(noise_type="pair"), "noise_type must be one of"),
        (lambda c: c["noisy"].__setitem__(0, 10), r"labels must lie in \[0, 10\)"),
        (lambda c: c["noisy"].__setitem__(0, 1.5), "labels must be integers"),
        (lambda c: c.update(format="other"), "not a noisy-label file"),
        (lambda c: c.update(realised_rate=0.99), "does not match the labels"),
    ],
)
def test_load_rejects_bad_files(tmp_path: Path, edit, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_noisy_labels(_corrupt(tmp_path, edit))


def test_load_rejects_wrong_length_missing_file_and_plain_lists(tmp_path: Path) -> None:
    path = save_noisy_labels(tmp_path / "n.json", symmetric_noise(CIFAR10[:100], 0.5, 10))
    with pytest.raises(ValueError, match="holds 100 labels, the dataset has 50000"):
        load_noisy_labels(path, expected_length=50_000)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_noisy_labels(tmp_path / "missing.json")
    (tmp_path / "divide.json").write_text(json.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="DivideMix"):
        load_noisy_labels(tmp_path / "divide.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_noisy_labels(tmp_path / "broken.json")


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: symmetric_noise(CIFAR10, 1.5, 10), r"rate must be in \[0, 1\]"),
        (lambda: symmetric_noise(CIFAR10, 0.2, 10, seed=-1), "seed must be a non-negative integer"),
        (lambda: symmetric_noise(CIFAR10, 0.2, 5), r"labels must lie in \[0, 5\)"),
        (lambda: symmetric_noise(CIFAR10.astype(float), 0.2, 10), "labels must be integers"),
        (lambda: symmetric_noise(CIFAR10.reshape(2, -1), 0.2, 10), "1-D"),
        (lambda: symmetric_noise(CIFAR10, 0.2, 1), "num_classes must be an integer >= 2"),
        (lambda: symmetric_noise(CIFAR10, 0.2, 10, selection="exact"), "selection must be"),
        (lambda: asymmetric_noise(CIFAR10, 0.2, "svhn"), "dataset must be 'cifar10', 'cifar100' or None"),
        (lambda: asymmetric_noise(CIFAR100, 0.2, "cifar10"), r"labels must lie in \[0, 10\)"),
        (lambda: asymmetric_noise(CIFAR10, 0.2, None), "needs a non-empty mapping"),
        (lambda: asymmetric_noise(CIFAR100, 0.2, "cifar100", coarse_labels=[1, 2]), "one entry per sample"),
        (lambda: asymmetric_noise(CIFAR100, 0.2, "cifar100", cifar100_groups="blocks"), "cifar100_groups must be"),
    ],
)
def test_invalid_inputs_are_rejected(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_noisy_labels_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="equal length"):
        NoisyLabels(np.zeros(3, int), np.zeros(4, int), "symmetric", 0.1, 0, 10, "fixed")
    with pytest.raises(ValueError, match="shape"):
        realised_noise_rate([1, 2], [1, 2, 3])
