"""Synthetic label noise for the noisy-label packages (dmlp, anm, crema), following the DivideMix protocol.

Reference: LiJunnan1992/DivideMix ``dataloader_cifar.py`` (the SANM code is identical, see anm.md §4):

* the noisy set is ``idx[:int(r * N)]`` of a random permutation of **all** samples, i.e. an exact number of
  samples, not a per-sample coin flip (``selection="fixed"``, the default here);
* **symmetric**: each selected sample gets ``randint(0, C - 1)``, uniform over *all* classes, the true class
  included, so the realised flip rate is about ``r * (C - 1) / C`` (0.5 -> 0.45 on CIFAR-10);
* **asymmetric, CIFAR-10**: the selected samples are mapped with {truck -> automobile, bird -> airplane,
  deer -> horse, cat <-> dog}; the other five classes map to themselves, so the realised rate is about ``r / 2``.

DivideMix has no CIFAR-100 asymmetric noise. We follow the common definition (C2D/ELR): each class flips to the
next class of its superclass, circularly; the classes of a superclass are taken in increasing fine-label order.
Superclasses come from the given coarse labels, else from the standard CIFAR-100 fine->coarse table below.
Note: the released ELR and Co-teaching code (``build_for_cifar100`` + ``multiclass_noisify``) groups *consecutive
fine indices* (0-4, 5-9, ...) instead of true superclasses and flips each sample independently with probability
``r``; ``cifar100_groups="consecutive"`` and ``selection="bernoulli"`` reproduce that definition (not bit for bit:
ELR draws with ``np.random.RandomState(0).multinomial`` per sample).

Randomness comes from a private ``numpy.random.Generator`` seeded with ``seed``; the global RNG is never touched.
The draws therefore differ from DivideMix's ``random.shuffle`` stream, while the distribution is the same.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "CIFAR10_ASYMMETRIC_MAP",
    "CIFAR100_COARSE_LABELS",
    "NoisyLabels",
    "asymmetric_noise",
    "cifar100_next_in_group",
    "load_noisy_labels",
    "read_label_json",
    "realised_noise_rate",
    "save_noisy_labels",
    "symmetric_noise",
    "write_label_json",
]

Selection = Literal["fixed", "bernoulli"]

#: CIFAR-10 asymmetric map (DivideMix ``self.transition``): 2 bird->0 airplane, 3 cat->5 dog, 4 deer->7 horse,
#: 5 dog->3 cat, 9 truck->1 automobile; 0, 1, 6, 7, 8 unchanged.
CIFAR10_ASYMMETRIC_MAP: tuple[int, ...] = (0, 1, 0, 5, 7, 3, 6, 7, 8, 1)

#: Coarse (superclass) label of each CIFAR-100 fine label 0..99, both in the alphabetical order of the official
#: ``meta`` file. Source: ryanchankh/cifar100coarse ``sparse2coarse.py`` (the table found, identical, in many public
#: repositories); checked against the superclass lists on https://www.cs.toronto.edu/~kriz/cifar.html, e.g.
#: apple(0) -> fruit_and_vegetables(4), aquarium_fish(1) -> fish(1), baby(2) -> people(14), bear(3) ->
#: large_carnivores(8), beaver(4) -> aquatic_mammals(0). ``shared/tests/test_label_noise.py`` re-checks the table
#: against the class names written by ``shared.synthetic.cifar``.
CIFAR100_COARSE_LABELS: tuple[int, ...] = (
    4,
    1,
    14,
    8,
    0,
    6,
    7,
    7,
    18,
    3,
    3,
    14,
    9,
    18,
    7,
    11,
    3,
    9,
    7,
    11,
    6,
    11,
    5,
    10,
    7,
    6,
    13,
    15,
    3,
    15,
    0,
    11,
    1,
    10,
    12,
    14,
    16,
    9,
    11,
    5,
    5,
    19,
    8,
    8,
    15,
    13,
    14,
    17,
    18,
    10,
    16,
    4,
    17,
    4,
    2,
    0,
    17,
    4,
    18,
    17,
    10,
    3,
    2,
    12,
    12,
    16,
    12,
    1,
    9,
    19,
    2,
    10,
    0,
    1,
    16,
    12,
    9,
    13,
    15,
    13,
    16,
    19,
    2,
    4,
    6,
    19,
    5,
    5,
    8,
    19,
    18,
    1,
    2,
    15,
    6,
    0,
    17,
    8,
    14,
    13,
)

_FORMAT = "shared.label_noise/v1"
_NOISE_TYPES = ("symmetric", "asymmetric")


@dataclass(frozen=True, eq=False)
class NoisyLabels:
    """Noisy labels together with the clean labels and the recipe that produced them.

    Attributes:
        noisy: int64 array of the noisy labels.
        clean: int64 array of the true labels (same length).
        noise_type: ``"symmetric"`` or ``"asymmetric"``.
        rate: the nominal noise rate ``r`` (fraction of samples selected for corruption).
        seed: seed of the private generator.
        num_classes: number of classes ``C``.
        selection: ``"fixed"`` (exactly ``int(r * N)`` samples, DivideMix) or ``"bernoulli"`` (each sample with
            probability ``r``).
        dataset: ``"cifar10"``, ``"cifar100"`` or ``None`` (custom map / symmetric).
    """

    noisy: np.ndarray
    clean: np.ndarray
    noise_type: str
    rate: float
    seed: int
    num_classes: int
    selection: str
    dataset: str | None = None
    realised_rate: float = field(init=False)

    def __post_init__(self) -> None:
        noisy = np.asarray(self.noisy, dtype=np.int64)
        clean = np.asarray(self.clean, dtype=np.int64)
        if noisy.shape != clean.shape or noisy.ndim != 1:
            raise ValueError(f"noisy and clean labels must be 1-D of equal length, got {noisy.shape} and {clean.shape}")
        for name, values in (("noisy", noisy), ("clean", clean)):
            if values.size and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(
                    f"{name} labels must lie in [0, {self.num_classes}), found [{values.min()}, {values.max()}]"
                )
        if self.noise_type not in _NOISE_TYPES:
            raise ValueError(f"noise_type must be one of {_NOISE_TYPES}, got {self.noise_type!r}")
        if self.selection not in ("fixed", "bernoulli"):
            raise ValueError(f"selection must be 'fixed' or 'bernoulli', got {self.selection!r}")
        noisy.flags.writeable = False
        clean.flags.writeable = False
        object.__setattr__(self, "noisy", noisy)
        object.__setattr__(self, "clean", clean)
        object.__setattr__(self, "realised_rate", realised_noise_rate(noisy, clean))

    def __len__(self) -> int:
        return len(self.noisy)

    @property
    def is_noisy(self) -> np.ndarray:
        """Boolean mask of the samples whose label was changed."""
        return self.noisy != self.clean

    def transition_counts(self) -> np.ndarray:
        """``(C, C)`` matrix whose entry ``[i, j]`` counts samples with clean label ``i`` and noisy label ``j``."""
        counts = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        np.add.at(counts, (self.clean, self.noisy), 1)
        return counts

    def transition_summary(self) -> dict[str, int]:
        """Counts of the label changes that occurred, as ``{"clean->noisy": count}``, most frequent first."""
        counts = self.transition_counts()
        np.fill_diagonal(counts, 0)
        rows, cols = np.nonzero(counts)
        order = np.lexsort((cols, rows, -counts[rows, cols]))
        return {f"{rows[i]}->{cols[i]}": int(counts[rows[i], cols[i]]) for i in order}


def realised_noise_rate(noisy: Any, clean: Any) -> float:
    """Fraction of samples whose noisy label differs from the clean label."""
    noisy, clean = np.asarray(noisy), np.asarray(clean)
    if noisy.shape != clean.shape:
        raise ValueError(f"noisy and clean labels differ in shape: {noisy.shape} vs {clean.shape}")
    return float(np.mean(noisy != clean)) if noisy.size else 0.0


def _as_labels(labels: Any, num_classes: int) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be a 1-D sequence of class indices, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), found [{array.min()}, {array.max()}]")
    return array


def _check_common(rate: float, seed: int, selection: str) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if selection not in ("fixed", "bernoulli"):
        raise ValueError(f"selection must be 'fixed' or 'bernoulli', got {selection!r}")


def _select(rng: np.random.Generator, n: int, rate: float, selection: Selection) -> np.ndarray:
    """Indices of the samples chosen for corruption."""
    if selection == "fixed":
        return rng.permutation(n)[: int(rate * n)]  # DivideMix: idx[:int(r * 50000)] of a shuffled index list
    return np.flatnonzero(rng.random(n) < rate)


def symmetric_noise(
    labels: Any, rate: float, num_classes: int, seed: int = 0, selection: Selection = "fixed"
) -> NoisyLabels:
    """Symmetric noise: selected samples get a label drawn uniformly from **all** ``num_classes`` classes.

    The true class can be drawn again, so the realised rate is about ``rate * (num_classes - 1) / num_classes``.

    Args:
        labels: clean labels, integers in ``[0, num_classes)``.
        rate: fraction of samples to corrupt, in ``[0, 1]``.
        num_classes: number of classes ``C`` (at least 2).
        seed: seed of the private generator.
        selection: ``"fixed"`` (exactly ``int(rate * N)`` samples, DivideMix) or ``"bernoulli"`` (each sample
            independently with probability ``rate``).
    """
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}")
    _check_common(rate, seed, selection)
    clean = _as_labels(labels, num_classes)
    rng = np.random.default_rng(seed)
    chosen = _select(rng, len(clean), rate, selection)
    noisy = clean.copy()
    noisy[chosen] = rng.integers(0, num_classes, size=len(chosen))
    return NoisyLabels(noisy, clean, "symmetric", float(rate), int(seed), int(num_classes), selection)


def cifar100_next_in_group(coarse_of_fine: Any) -> np.ndarray:
    """Map each fine class to the next fine class (increasing index, circular) that shares its coarse label."""
    coarse_of_fine = np.asarray(coarse_of_fine, dtype=np.int64)
    mapping = np.arange(len(coarse_of_fine))
    for group in np.unique(coarse_of_fine):
        members = np.flatnonzero(coarse_of_fine == group)
        mapping[members] = np.roll(members, -1)
    return mapping


def _coarse_table(clean: np.ndarray, coarse_labels: Any | None) -> np.ndarray:
    table = np.array(CIFAR100_COARSE_LABELS, dtype=np.int64)
    if coarse_labels is None:
        return table
    coarse = np.asarray(coarse_labels)
    if coarse.shape != clean.shape or (coarse.size and not np.issubdtype(coarse.dtype, np.integer)):
        raise ValueError(
            f"coarse_labels must be integers with one entry per sample ({clean.shape}), "
            f"got {coarse.dtype} array of shape {coarse.shape}"
        )
    pairs = np.unique(np.stack([clean, coarse.astype(np.int64)], axis=1), axis=0)
    fine_values, counts = np.unique(pairs[:, 0], return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"coarse_labels are inconsistent: fine class {int(fine_values[counts > 1][0])} appears with "
            f"several coarse labels"
        )
    # Fine classes absent from this label set keep the standard superclass.
    table[pairs[:, 0]] = pairs[:, 1]
    return table


def asymmetric_noise(
    labels: Any,
    rate: float,
    dataset: str | None = "cifar10",
    seed: int = 0,
    coarse_labels: Any | None = None,
    selection: Selection = "fixed",
    mapping: dict[int, int] | None = None,
    cifar100_groups: Literal["superclass", "consecutive"] = "superclass",
) -> NoisyLabels:
    """Class-dependent ("asymmetric", "pair") noise: each selected sample is moved to a fixed target class.

    Args:
        labels: clean labels.
        rate: fraction of samples selected, in ``[0, 1]``. With the CIFAR-10 map only half of the classes change,
            so the realised rate is about ``rate / 2``; with the CIFAR-100 map it is about ``rate``.
        dataset: ``"cifar10"`` (DivideMix map), ``"cifar100"`` (next class in the superclass) or ``None`` to use
            ``mapping``.
        seed: seed of the private generator.
        coarse_labels: CIFAR-100 only: per-sample coarse labels (``b'coarse_labels'`` of the pickle) defining the
            superclasses; default: the standard table :data:`CIFAR100_COARSE_LABELS`.
        selection: ``"fixed"`` (exactly ``int(rate * N)`` samples of all classes, DivideMix) or ``"bernoulli"``
            (each sample independently with probability ``rate``, ELR-style).
        mapping: ``{source: target}`` for ``dataset=None`` (classes not listed keep their label), e.g. the digits
            map ``{2: 7, 3: 8, 5: 6, 6: 5, 7: 1}``.
        cifar100_groups: ``"superclass"`` (true superclasses, default) or ``"consecutive"`` (fine indices 5k..5k+4,
            as ELR/Co-teaching's released code does).
    """
    _check_common(rate, seed, selection)
    if dataset == "cifar10":
        if mapping is not None:
            raise ValueError("mapping is only used with dataset=None")
        num_classes = 10
        clean = _as_labels(labels, num_classes)
        target = np.array(CIFAR10_ASYMMETRIC_MAP, dtype=np.int64)
    elif dataset == "cifar100":
        if mapping is not None:
            raise ValueError("mapping is only used with dataset=None")
        num_classes = 100
        clean = _as_labels(labels, num_classes)
        if cifar100_groups == "superclass":
            target = cifar100_next_in_group(_coarse_table(clean, coarse_labels))
        elif cifar100_groups == "consecutive":
            if coarse_labels is not None:
                raise ValueError("coarse_labels cannot be combined with cifar100_groups='consecutive'")
            target = cifar100_next_in_group(np.arange(100) // 5)
        else:
            raise ValueError(f"cifar100_groups must be 'superclass' or 'consecutive', got {cifar100_groups!r}")
    elif dataset is None:
        if not mapping:
            raise ValueError("dataset=None needs a non-empty mapping {source_class: target_class}")
        if any(int(k) != k or int(v) != v or k < 0 or v < 0 for k, v in mapping.items()):
            raise ValueError(f"mapping must map non-negative integers to non-negative integers, got {mapping}")
        array = np.asarray(labels)
        num_classes = int(max(max(mapping), max(mapping.values()), array.max() if array.size else 0)) + 1
        clean = _as_labels(labels, num_classes)
        target = np.arange(num_classes)
        target[list(mapping)] = list(mapping.values())
    else:
        raise ValueError(f"dataset must be 'cifar10', 'cifar100' or None (with mapping), got {dataset!r}")
    rng = np.random.default_rng(seed)
    chosen = _select(rng, len(clean), rate, selection)
    noisy = clean.copy()
    noisy[chosen] = target[clean[chosen]]
    return NoisyLabels(noisy, clean, "asymmetric", float(rate), int(seed), num_classes, selection, dataset)


def save_noisy_labels(path: str | Path, noisy_labels: NoisyLabels) -> Path:
    """Write ``noisy_labels`` to ``path`` as JSON (atomically); :func:`load_noisy_labels` reads it back."""
    content = {
        "format": _FORMAT,
        "noise_type": noisy_labels.noise_type,
        "rate": noisy_labels.rate,
        "seed": noisy_labels.seed,
        "num_classes": noisy_labels.num_classes,
        "selection": noisy_labels.selection,
        "dataset": noisy_labels.dataset,
        "realised_rate": noisy_labels.realised_rate,
        "transitions": noisy_labels.transition_summary(),
        "noisy": noisy_labels.noisy.tolist(),
        "clean": noisy_labels.clean.tolist(),
    }
    return write_label_json(path, content)


def read_label_json(path: str | Path, what: str) -> Any:
    """The JSON content of a label file: a missing file is a FileNotFoundError ``"<what> not found: <path>"``, a file
    that is not JSON a ValueError naming it. Shared by :func:`load_noisy_labels` and
    :func:`shared.noisy.data.load_label_file`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def write_label_json(path: str | Path, content: dict[str, Any]) -> Path:
    """Write a label file's ``content`` as compact JSON, atomically (hidden temp file, then rename); returns the path.

    Shared by :func:`save_noisy_labels` and :func:`shared.noisy.data.save_label_file`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(content))
    os.replace(tmp, path)
    return path


def load_noisy_labels(path: str | Path, expected_length: int | None = None) -> NoisyLabels:
    """Read a file written by :func:`save_noisy_labels`, validating it.

    Args:
        path: the JSON file.
        expected_length: when given, the number of labels the dataset has; a different length is an error.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not valid JSON, is not in this format, misses a field, has a wrong type, labels out
            of range, lists of different length, a length different from ``expected_length``, or a stored realised
            rate that disagrees with the labels.
    """
    path = Path(path)
    content = read_label_json(path, "noisy-label file")
    kind = type(content).__name__
    if kind == "list":
        raise ValueError(
            f"{path}: a bare list of labels (DivideMix '<r>_<mode>.json' style) has no clean labels or "
            f"recipe; this function reads files written by save_noisy_labels"
        )
    if kind != "dict" or content.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a noisy-label file (missing 'format': {_FORMAT!r})")
    expected_types = {
        "noise_type": (str,),
        "rate": (int, float),
        "seed": (int,),
        "num_classes": (int,),
        "selection": (str,),
        "noisy": (list,),
        "clean": (list,),
    }
    missing = [key for key in expected_types if key not in content]
    if missing:
        raise ValueError(f"{path}: missing field {missing[0]!r}")
    # JSON gives exact types: bool is not accepted where a number is expected.
    wrong = [key for key, kinds in expected_types.items() if type(content[key]) not in kinds]
    if wrong:
        raise ValueError(f"{path}: field {wrong[0]!r} has type {type(content[wrong[0]]).__name__}")
    noisy, clean = content["noisy"], content["clean"]
    if len(noisy) != len(clean):
        raise ValueError(f"{path}: {len(noisy)} noisy labels but {len(clean)} clean labels")
    if expected_length is not None and len(noisy) != expected_length:
        raise ValueError(f"{path}: holds {len(noisy)} labels, the dataset has {expected_length}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in noisy + clean):
        raise ValueError(f"{path}: labels must be integers")
    try:
        result = NoisyLabels(
            np.array(noisy, dtype=np.int64),
            np.array(clean, dtype=np.int64),
            content["noise_type"],
            float(content["rate"]),
            content["seed"],
            content["num_classes"],
            content["selection"],
            content.get("dataset"),
        )
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    stored = content.get("realised_rate")
    if stored is not None and abs(stored - result.realised_rate) > 1e-12:
        raise ValueError(
            f"{path}: stored realised_rate {stored} does not match the labels "
            f"({result.realised_rate}); the file was edited or is corrupt"
        )
    return result
