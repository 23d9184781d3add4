"""Synthetic CIFAR-10/100 in the exact "python version" pickle layout of the real release.

Files, keys and types follow the real archives: ``cifar-10-batches-py/data_batch_1..5``, ``test_batch``,
``batches.meta`` and ``cifar-100-python/train``, ``test``, ``meta``; each batch is a pickled dict with ``b'data'``
(uint8, ``(N, 3072)``, row-major RGB planes: 1024 R, 1024 G, 1024 B values), ``b'labels'`` (CIFAR-10) or
``b'fine_labels'`` + ``b'coarse_labels'`` (CIFAR-100), ``b'filenames'`` and ``b'batch_label'``.

The real files were pickled by Python 2, whose ``str`` keys come back as ``str`` with ``encoding='latin1'`` (what
torchvision and DivideMix use) and as ``bytes`` with ``encoding='bytes'`` (what the CIFAR page suggests). Python 3
cannot produce such strings with the standard pickler, so :func:`_dump_py2` writes byte strings with the protocol-2
``BINSTRING`` opcodes Python 2 used; both ways of loading then behave as with the real files.

Content (32 x 32, cluttered background, random scale, position and a small rotation): CIFAR-10 class ``c`` is shape
``c`` (circle, square, triangle, star, cross, ring, crescent, arrow, hexagon, heart) with fill texture ``c % 4`` and
object hue ``c / 10`` (jittered, random saturation and brightness). For CIFAR-100 the 20 superclasses are 10 shapes
x {solid, striped}, and the five fine classes of a superclass differ by the object hue, so coarse labels follow the
real fine->coarse table (:data:`shared.label_noise.CIFAR100_COARSE_LABELS`) and fine classes of one superclass
look alike, as in the real data.

torchvision's ``CIFAR10``/``CIFAR100`` refuse the synthetic files: their ``_check_integrity`` compares each batch
with the md5 of the *real* file. :class:`SyntheticCIFAR10` and :class:`SyntheticCIFAR100` are the same readers with
those md5 values set to ``None`` (``torchvision.datasets.utils.check_integrity`` then only checks that the file
exists) and with downloading disabled.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100

from shared.label_noise import CIFAR100_COARSE_LABELS
from shared.synthetic._cache import write_cached
from shared.synthetic._draw import TEXTURES, render_object_image

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_COARSE_CLASSES",
    "CIFAR100_FINE_CLASSES",
    "SyntheticCIFAR10",
    "SyntheticCIFAR100",
    "write_cifar",
]

_VERSION = 1
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
#: Fine label names in the order of the real ``meta`` file (alphabetical).
CIFAR100_FINE_CLASSES: tuple[str, ...] = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)
CIFAR100_COARSE_CLASSES: tuple[str, ...] = (
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
)
_CIFAR_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "crescent", "arrow", "hexagon", "heart")
_SPLITS = {"train": 0, "test": 1}


class _Py2StringPickler(pickle._Pickler):
    """Protocol-2 pickler that stores ``bytes`` as Python-2 ``str`` (``SHORT_BINSTRING``/``BINSTRING`` opcodes)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _dump_py2(obj: Any, path: Path) -> None:
    with open(path, "wb") as handle:
        _Py2StringPickler(handle, protocol=2).dump(obj)


def _recipe(num_classes: int, label: int) -> tuple[str, str, float]:
    """(shape, texture, object hue) of a class."""
    if num_classes == 10:
        return _CIFAR_SHAPES[label], TEXTURES[label % len(TEXTURES)], label / 10
    coarse = CIFAR100_COARSE_LABELS[label]
    members = [fine for fine, group in enumerate(CIFAR100_COARSE_LABELS) if group == coarse]
    return _CIFAR_SHAPES[coarse % 10], ("solid", "stripes")[coarse // 10], members.index(label) / len(members)


def _render_split(num_classes: int, size: int, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Balanced labels in a seeded random order (the real batches are shuffled too).
    labels = np.random.default_rng([seed, _SPLITS[split], 0]).permutation(np.arange(size) % num_classes)
    data = np.empty((size, 3072), dtype=np.uint8)
    for index, label in enumerate(labels):
        rng = np.random.default_rng([seed, _SPLITS[split], 1, index])
        shape, texture, hue = _recipe(num_classes, int(label))
        pixels = render_object_image(rng, 32, shape, texture, hue=hue, lines=2)
        data[index] = pixels.transpose(2, 0, 1).reshape(-1)  # HWC -> R plane, G plane, B plane
    return data, labels.astype(np.int64)


def _filenames(labels: np.ndarray, names: tuple[str, ...], offset: int) -> list[bytes]:
    return [f"synthetic_{names[label]}_s_{offset + i:06d}.png".encode() for i, label in enumerate(labels)]


def _write_cifar10(folder: Path, train_size: int, test_size: int, seed: int) -> None:
    data, labels = _render_split(10, train_size, "train", seed)
    chunks = np.array_split(np.arange(train_size), 5)
    for number, chunk in enumerate(chunks, 1):
        _dump_py2(
            {
                b"batch_label": f"training batch {number} of 5".encode(),
                b"labels": labels[chunk].tolist(),
                b"data": data[chunk],
                b"filenames": _filenames(labels[chunk], CIFAR10_CLASSES, int(chunk[0]) if len(chunk) else 0),
            },
            folder / f"data_batch_{number}",
        )
    test_data, test_labels = _render_split(10, test_size, "test", seed)
    _dump_py2(
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": test_labels.tolist(),
            b"data": test_data,
            b"filenames": _filenames(test_labels, CIFAR10_CLASSES, 0),
        },
        folder / "test_batch",
    )
    _dump_py2(
        {
            b"num_cases_per_batch": len(chunks[0]),
            b"label_names": [n.encode() for n in CIFAR10_CLASSES],
            b"num_vis": 3072,
        },
        folder / "batches.meta",
    )


def _write_cifar100(folder: Path, train_size: int, test_size: int, seed: int) -> None:
    coarse_table = np.array(CIFAR100_COARSE_LABELS)
    for split, size, batch_label in (
        ("train", train_size, b"training batch 1 of 1"),
        ("test", test_size, b"testing batch 1 of 1"),
    ):
        data, labels = _render_split(100, size, split, seed)
        _dump_py2(
            {
                b"filenames": _filenames(labels, CIFAR100_FINE_CLASSES, 0),
                b"batch_label": batch_label,
                b"fine_labels": labels.tolist(),
                b"coarse_labels": coarse_table[labels].tolist(),
                b"data": data,
            },
            folder / split,
        )
    _dump_py2(
        {
            b"fine_label_names": [n.encode() for n in CIFAR100_FINE_CLASSES],
            b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_CLASSES],
        },
        folder / "meta",
    )


def write_cifar(
    root: str | Path, num_classes: int = 10, train_size: int = 5000, test_size: int = 1000, seed: int = 0
) -> Path:
    """Write (or reuse) a synthetic CIFAR set under ``root`` and return ``root``.

    ``root`` plays the role of torchvision's ``root``: the batches go to ``root/cifar-10-batches-py`` or
    ``root/cifar-100-python`` (with the ``_SYNTHETIC.json`` marker inside), so CIFAR-10 and CIFAR-100 can share a
    root. Deterministic (same arguments, byte-identical files) and idempotent (a matching marker returns at once).

    Args:
        root: torchvision-style root folder.
        num_classes: 10 or 100.
        train_size: training images (CIFAR-10: split over five batches as evenly as possible, at least 5).
        test_size: test images.
        seed: base seed.
    """
    if num_classes not in (10, 100):
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
    min_train = 5 if num_classes == 10 else 1
    if train_size < min_train or test_size < 1:
        raise ValueError(f"train_size must be >= {min_train} and test_size >= 1, got {train_size}, {test_size}")
    base = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    params = {
        "generator": "shared.synthetic.cifar",
        "version": _VERSION,
        "num_classes": num_classes,
        "train_size": train_size,
        "test_size": test_size,
        "seed": seed,
    }
    writer = _write_cifar10 if num_classes == 10 else _write_cifar100
    write_cached(Path(root) / base, params, lambda folder: writer(folder, train_size, test_size, seed))
    return Path(root)


def _refuse_download(self) -> None:
    raise RuntimeError("a synthetic CIFAR set is not downloaded; write it with shared.synthetic.write_cifar")


def _synthetic_reader(base: type) -> type:
    """``base`` (torchvision's CIFAR10 / CIFAR100) with the md5 checks of the real files and downloading disabled."""
    return type(
        f"Synthetic{base.__name__}",
        (base,),
        {
            "__doc__": f"``torchvision.datasets.{base.__name__}`` for synthetic sets: same reader, md5 checks of the "
            "real files disabled (``check_integrity`` then only checks that each file exists).",
            "__module__": __name__,
            "train_list": [[name, None] for name, _ in base.train_list],
            "test_list": [[name, None] for name, _ in base.test_list],
            "meta": {**base.meta, "md5": None},
            "download": _refuse_download,
        },
    )


SyntheticCIFAR10: type[CIFAR10] = _synthetic_reader(CIFAR10)
SyntheticCIFAR100: type[CIFAR100] = _synthetic_reader(CIFAR100)
