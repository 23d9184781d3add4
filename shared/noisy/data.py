"""Datasets of the noisy-label packages (dmlp, anm, crema): CIFAR-10/100 and Clothing1M in their official layouts.

* CIFAR: the "python version" pickles (``<root>/cifar-10-batches-py`` / ``<root>/cifar-100-python``), read into
  memory as uint8 ``N x 3 x H x W`` tensors. The real archives and the synthetic ones written by
  :func:`shared.synthetic.write_cifar` are read by the same code. The noisy training labels come from a noisy-label
  file (:mod:`shared.label_noise` format, DivideMix protocol), created on first use and re-read afterwards, so every
  network and every epoch share one noise draw (DivideMix persists ``<r>_<mode>.json`` the same way).
* Clothing1M: the official key lists (``noisy_train_key_list.txt`` with ``noisy_label_kv.txt`` for training,
  ``clean_val_key_list.txt`` / ``clean_test_key_list.txt`` with ``clean_label_kv.txt`` for the clean validation and
  test splits), images read from ``<root>/images/...`` on demand.
* :class:`ViewDataset` turns an indexable image source into ``(view_1, ..., view_k, index)`` samples, which is
  what the DivideMix engine and the supervised trainer consume (labels and clean probabilities are looked up by
  index on the trainer side, so the label set can change between epochs without rebuilding datasets).
* :func:`write_digits_cifar`: scikit-learn's ``digits`` (1 797 real handwritten 8 x 8 digits, shipped inside the
  scikit-learn wheel) written in the CIFAR-10 pickle layout, so :func:`load_cifar` reads real images offline.
* Label files: :func:`save_label_file` / :func:`load_label_file` write and read (hard + optional soft) training
  labels. With clean labels known the file is exactly the :mod:`shared.label_noise` format (readable by
  :func:`shared.label_noise.load_noisy_labels`) plus optional ``soft`` and ``source`` fields.
"""

from __future__ import annotations

import codecs
import json
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from shared.datasets import check_content, require_dataset
from shared.label_noise import (
    NoisyLabels,
    asymmetric_noise,
    load_noisy_labels,
    read_label_json,
    save_noisy_labels,
    symmetric_noise,
    write_label_json,
)

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "CLOTHING1M_MEAN",
    "CLOTHING1M_STD",
    "CifarSplit",
    "CifarTrainTransform",
    "Clothing1M",
    "LabelFile",
    "NoisyDataConfig",
    "NoisyTaskBase",
    "Normalize",
    "ViewDataset",
    "balanced_subset",
    "cifar_noise",
    "cifar_normalize",
    "cifar_task_fields",
    "clothing1m_splits",
    "clothing1m_task_fields",
    "clothing1m_transforms",
    "load_cifar",
    "load_cifar_task",
    "load_label_file",
    "noise_path",
    "noisy_labels_for",
    "save_label_file",
    "save_noise",
    "synthetic_cifar_root",
    "write_digits_cifar",
]

CIFAR_MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.507, 0.487, 0.441)}  # DivideMix dataloader_cifar.py
CIFAR_STD = {10: (0.2023, 0.1994, 0.2010), 100: (0.267, 0.256, 0.276)}
CLOTHING1M_MEAN = (0.6959, 0.6537, 0.6371)  # DivideMix dataloader_clothing1M.py
CLOTHING1M_STD = (0.3113, 0.3192, 0.3214)
_LABEL_FILE_FORMAT = "shared.label_noise/v1"


@dataclass
class CifarSplit:
    """One CIFAR split in memory: ``images`` uint8 ``N x 3 x H x W`` and int64 ``labels`` (the true labels)."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches that can build numpy arrays and plain containers only.

    The real batches (pickled by Python 2) and the synthetic ones need exactly ``numpy``'s array reconstruction
    (``_reconstruct``, ``ndarray``, ``dtype``) and, in Python 3 protocol-2 files, ``_codecs.encode`` for bytes; any
    other global (``os.system``, ``builtins.eval``, ...) is refused, so a batch file cannot run code.
    """

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],  # numpy's own function
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy._core"):  # numpy >= 2 writes numpy._core for what numpy 1 calls numpy.core
            module = "numpy.core" + module[len("numpy._core") :]
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise pickle.UnpicklingError(
            f"global '{module}.{name}' is not allowed in a CIFAR batch (only numpy arrays, "
            "lists, dicts, numbers and strings are)"
        )


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            batch = _CifarUnpickler(handle, encoding="latin1").load()
    except Exception as error:  # truncated, foreign or malicious file: name it
        raise ValueError(f"could not read CIFAR batch {path}: {error}") from error
    if not isinstance(batch, dict):
        raise ValueError(f"could not read CIFAR batch {path}: it holds a {type(batch).__name__}, not a dict")
    return batch


def load_cifar(root: str | Path, num_classes: int, train: bool, image_size: int | None = None) -> CifarSplit:
    """Read a CIFAR-10/100 split from the official pickles under ``root`` (torchvision's ``root``).

    Args:
        root: folder holding ``cifar-10-batches-py/`` or ``cifar-100-python/``.
        num_classes: 10 or 100.
        train: training (50 000 real images) or test split (10 000).
        image_size: resize the images once (antialiased bilinear) to this side, e.g. 16 for the tiny CPU default;
            ``None`` keeps 32.
    """
    if num_classes not in (10, 100):
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
    name = "cifar10" if num_classes == 10 else "cifar100"
    root = require_dataset(name, root)
    check_content(name, root)
    if num_classes == 10:
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        batches = [_unpickle(root / "cifar-10-batches-py" / n) for n in names]
        label_key = "labels"
    else:
        batches = [_unpickle(root / "cifar-100-python" / ("train" if train else "test"))]
        label_key = "fine_labels"
    data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
    labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(
            f"{root}: CIFAR batches hold data of shape {data.shape} and {len(labels)} labels; "
            "expected (N, 3072) and N labels"
        )
    images = torch.from_numpy(data).view(-1, 3, 32, 32)
    if image_size is not None and image_size != 32:
        images = (
            F.interpolate(
                images.float(), size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
            )
            .round()
            .clamp(0, 255)
            .to(torch.uint8)
        )
    return CifarSplit(images.contiguous(), torch.from_numpy(labels), num_classes)


def noisy_labels_for(
    clean: Sequence[int] | np.ndarray | torch.Tensor,
    noise_type: str,
    rate: float,
    num_classes: int,
    seed: int,
    path: str | Path | None = None,
) -> NoisyLabels:
    """The noisy training labels of a DivideMix-protocol run: read ``path`` if it exists, else draw and save.

    Args:
        clean: true training labels.
        noise_type: ``"sym"`` / ``"symmetric"`` or ``"asym"`` / ``"asymmetric"``.
        rate: nominal noise rate r (DivideMix's ``r``).
        num_classes: 10 or 100 for CIFAR (selects the asymmetric map).
        seed: seed of the noise draw.
        path: noise file, re-read when it exists: it must hold ``len(clean)`` labels, the same clean labels and the
            same recipe (noise type, rate, seed); a file drawn with another recipe is refused, never reused.
    """
    clean = np.asarray(torch.as_tensor(clean).cpu().numpy(), dtype=np.int64)
    kind = {"sym": "symmetric", "asym": "asymmetric"}.get(noise_type, noise_type)
    if path is not None and Path(path).is_file():
        loaded = load_noisy_labels(path, expected_length=len(clean))
        if not np.array_equal(loaded.clean, clean):
            raise ValueError(
                f"{path}: its clean labels differ from the dataset's; the file belongs to another "
                "dataset or split (delete it to draw new noise)"
            )
        if (loaded.noise_type, float(loaded.rate), int(loaded.seed)) != (kind, float(rate), int(seed)):
            raise ValueError(
                f"{path} holds {loaded.noise_type} noise at rate {loaded.rate} (seed {loaded.seed}), "
                f"but {kind} noise at rate {rate} (seed {seed}) was asked for; it is not reused. Use "
                "another output folder, or delete the file to draw the new noise there."
            )
        return loaded
    if kind == "symmetric":
        result = symmetric_noise(clean, rate, num_classes, seed=seed)
    elif kind == "asymmetric":
        result = asymmetric_noise(clean, rate, dataset=f"cifar{num_classes}", seed=seed)
    else:
        raise ValueError(f"noise_type must be 'sym' or 'asym', got {noise_type!r}")
    if path is not None:
        save_noisy_labels(path, result)
    return result


@dataclass
class LabelFile:
    """Training labels read from a label file: hard ``labels``, optional ``soft`` (N x C) and ``clean`` labels."""

    labels: np.ndarray
    num_classes: int
    soft: np.ndarray | None = None
    clean: np.ndarray | None = None
    source: str = ""


def save_label_file(
    path: str | Path,
    labels: Any,
    num_classes: int,
    clean: Any | None = None,
    soft: Any | None = None,
    source: str = "",
    noise: NoisyLabels | None = None,
) -> Path:
    """Write training labels (e.g. purified ones) in the noise-file format.

    With ``clean`` labels the file is a :mod:`shared.label_noise` file whose "noisy" field holds ``labels``
    (recipe fields copied from ``noise`` when given), so ``load_noisy_labels`` reads it; ``soft`` (N x C) and
    ``source`` are extra fields. Without clean labels (Clothing1M) "clean" is ``null``; read it with
    :func:`load_label_file`.
    """
    path = Path(path)
    labels = np.asarray(torch.as_tensor(labels).cpu().numpy(), dtype=np.int64)
    if clean is not None:
        recipe = noise or NoisyLabels(labels, np.asarray(clean), "symmetric", 0.0, 0, num_classes, "fixed")
        record = NoisyLabels(
            labels,
            np.asarray(torch.as_tensor(clean).cpu().numpy()),
            recipe.noise_type,
            recipe.rate,
            recipe.seed,
            num_classes,
            recipe.selection,
            recipe.dataset,
        )
        save_noisy_labels(path, record)
        content = json.loads(path.read_text())
    else:
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes})")
        content = {
            "format": _LABEL_FILE_FORMAT,
            "noise_type": "real",
            "num_classes": num_classes,
            "noisy": labels.tolist(),
            "clean": None,
        }
    if soft is not None:
        soft = np.asarray(torch.as_tensor(soft).detach().cpu().numpy(), dtype=np.float64)
        if soft.shape != (len(labels), num_classes):
            raise ValueError(f"soft labels must have shape {(len(labels), num_classes)}, got {soft.shape}")
        content["soft"] = np.round(soft, 6).tolist()
    content["source"] = source
    return write_label_json(path, content)


def load_label_file(path: str | Path, expected_length: int | None = None) -> LabelFile:
    """Read a label file written by :func:`save_label_file` or :func:`shared.label_noise.save_noisy_labels`.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (naming the file) for a wrong format or a
    length different from ``expected_length``.
    """
    path = Path(path)
    content = read_label_json(path, "label file")
    if not isinstance(content, dict) or content.get("format") != _LABEL_FILE_FORMAT:
        raise ValueError(f"{path}: not a label file (expected 'format': {_LABEL_FILE_FORMAT!r})")
    if content.get("clean") is not None:
        record = load_noisy_labels(path, expected_length)
        labels, clean, num_classes = record.noisy, record.clean, record.num_classes
    else:
        labels, clean, num_classes = np.asarray(content["noisy"], dtype=np.int64), None, int(content["num_classes"])
        if expected_length is not None and len(labels) != expected_length:
            raise ValueError(f"{path}: holds {len(labels)} labels, the dataset has {expected_length}")
    soft = None
    if content.get("soft") is not None:
        soft = np.asarray(content["soft"], dtype=np.float32)
        if soft.shape != (len(labels), num_classes):
            raise ValueError(f"{path}: soft labels of shape {soft.shape}, expected {(len(labels), num_classes)}")
    return LabelFile(labels, num_classes, soft, clean, str(content.get("source", "")))


class Normalize:
    """uint8 or [0, 1] image tensor (``... x 3 x H x W``) -> float, normalised with per-channel mean and std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
        return (image - self.mean.to(image.device)) / self.std.to(image.device)


class CifarTrainTransform:
    """DivideMix's CIFAR training augmentation on a uint8 ``3 x H x W`` tensor: RandomCrop(padding) + flip + norm.

    Zero padding and the crop offset/flip are drawn from torch's global generator (so a resumed run replays them).
    """

    def __init__(self, num_classes: int, padding: int = 4, hflip: bool = True):
        self.padding = padding
        self.hflip = hflip
        self.normalize = Normalize(CIFAR_MEAN[num_classes], CIFAR_STD[num_classes])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        p = self.padding
        if p:
            h, w = image.shape[-2:]
            padded = F.pad(image, (p, p, p, p))
            top, left = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
            image = padded[..., top : top + h, left : left + w]
        if self.hflip and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        return self.normalize(image)


class ViewDataset(Dataset):
    """``(view_1, ..., view_k, index)`` samples of an indexable image source, each view an independent transform.

    Args:
        source: anything with ``__len__`` and ``__getitem__`` returning one image (a uint8 tensor for CIFAR, a
            PIL image for Clothing1M).
        transform: image -> normalised float tensor, applied ``num_views`` times; or a list of transforms, one
            per view (e.g. ANM's AutoAugment and RandAugment views), which sets the number of views.
        num_views: views per sample when ``transform`` is one callable (DivideMix: 2 for the labeled and
            unlabeled loaders, 1 otherwise).
        indices: restrict to these sample indices (the returned ``index`` is the original one).
    """

    def __init__(
        self,
        source: Any,
        transform: Callable[[Any], torch.Tensor] | Sequence[Callable[[Any], torch.Tensor]],
        num_views: int = 1,
        indices: Sequence[int] | np.ndarray | None = None,
    ):
        self.source = source
        self.transforms = list(transform) if isinstance(transform, (list, tuple)) else [transform] * num_views
        if not self.transforms:
            raise ValueError("ViewDataset needs at least one view")
        self.num_views = len(self.transforms)
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple:
        index = int(self.indices[position])
        image = self.source[index]
        return (*(transform(image) for transform in self.transforms), index)


def balanced_subset(
    labels: Sequence[int] | np.ndarray, num_samples: int, num_classes: int, generator: np.random.Generator
) -> np.ndarray:
    """DivideMix's Clothing1M epoch sample: ``num_samples`` indices, an equal share of each (noisy) class.

    DivideMix shuffles the noisy training set each epoch and keeps the first ``num_samples / C`` images of every
    class (``dataloader_clothing1M.py``); classes with fewer images contribute all they have.
    """
    labels = np.asarray(labels)
    per_class = num_samples // num_classes
    order = generator.permutation(len(labels))
    chosen = [order[labels[order] == c][:per_class] for c in range(num_classes)]
    return np.sort(np.concatenate(chosen))


class Clothing1M:
    """Clothing1M in its official layout (``python -m shared.datasets info clothing1m``).

    Args:
        root: the dataset root (``images/``, the key lists and the label kv files side by side).
        split: ``"train"`` (noisy_train_key_list + noisy labels, 1M images), ``"val"`` (clean_val_key_list, 14 313
            images) or ``"test"`` (clean_test_key_list, 10 526 images), the latter two with clean labels.
        loader: path -> image (default: PIL RGB).
    """

    num_classes = 14

    def __init__(self, root: str | Path, split: str = "train", loader: Callable[[Path], Any] | None = None):
        self.root = require_dataset("clothing1m", root)
        files = {
            "train": ("noisy_train_key_list.txt", "noisy_label_kv.txt"),
            "val": ("clean_val_key_list.txt", "clean_label_kv.txt"),
            "test": ("clean_test_key_list.txt", "clean_label_kv.txt"),
        }
        if split not in files:
            raise ValueError(f"split must be one of {sorted(files)}, got {split!r}")
        key_file, label_file = files[split]
        table = self._read_kv(self.root / label_file)
        keys = [line.strip() for line in (self.root / key_file).read_text().splitlines() if line.strip()]
        missing = [k for k in keys if k not in table]
        if missing:
            raise ValueError(
                f"{self.root / key_file}: {len(missing)} keys have no label in {label_file}, e.g. {missing[0]}"
            )
        self.keys = keys
        self.labels = torch.tensor([table[k] for k in keys], dtype=torch.int64)
        self.loader = loader or self._pil_loader

    @staticmethod
    def _read_kv(path: Path) -> dict[str, int]:
        table = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or not 0 <= int(parts[1]) < 14:
                raise ValueError(f"{path}:{number}: expected '<key> <label 0..13>', got {line!r}")
            table[parts[0]] = int(parts[1])
        return table

    @staticmethod
    def _pil_loader(path: Path) -> Any:
        from PIL import Image

        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except OSError as error:
            raise OSError(f"could not read Clothing1M image {path}: {error}") from error

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Any:
        return self.loader(self.root / self.keys[index])


def clothing1m_transforms(train: bool) -> Callable[[Any], torch.Tensor]:
    """DivideMix's Clothing1M transforms: Resize 256, RandomCrop 224 + flip (train) / CenterCrop 224 (test)."""
    from torchvision import transforms as T

    ops = [T.Resize(256), T.RandomCrop(224), T.RandomHorizontalFlip()] if train else [T.Resize(256), T.CenterCrop(224)]
    return T.Compose([*ops, T.ToTensor(), T.Normalize(CLOTHING1M_MEAN, CLOTHING1M_STD)])


DIGITS_VERSION = 1


def _dump_cifar_batch(content: dict[str, Any], path: Path) -> None:
    with open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=2)


def write_digits_cifar(
    root: str | Path, test_size: int = 297, seed: int = 0, upsample: Literal["nearest", "bilinear"] = "nearest"
) -> Path:
    """Write (or reuse) scikit-learn's digits in the CIFAR-10 "python version" layout under ``root`` and return it.

    Each 8 x 8 image (values 0..16) is scaled to 0..255, enlarged to 32 x 32 (``nearest``: every pixel repeated
    4 x 4; ``bilinear``: torch's bilinear resize without corner alignment, rounded) and copied to the three
    channels; the 1 797 images are shuffled with ``seed`` and the last ``test_size`` form the test batch, the others
    the five training batches (``root/cifar-10-batches-py``, with the synthetic-set marker, so the published CIFAR
    checksums are not applied). Read it with ``load_cifar(root, 10, train, image_size=8)``
    for the native resolution.
    """
    from sklearn.datasets import load_digits

    from shared.synthetic import write_cached

    def write(folder: Path) -> None:
        digits = load_digits()
        order = np.random.default_rng(seed).permutation(len(digits.target))
        if not 0 < test_size < len(order) - 5:
            raise ValueError(f"test_size must lie in (0, {len(order) - 5}), got {test_size}")
        if upsample == "nearest":
            images = np.round(digits.images[order] * (255.0 / 16.0)).astype(np.uint8)
            images = images.repeat(4, axis=1).repeat(4, axis=2)  # N x 32 x 32
        else:
            scaled = torch.from_numpy(digits.images[order]).float().mul(255 / 16).unsqueeze(1)
            scaled = F.interpolate(scaled, size=(32, 32), mode="bilinear", align_corners=False)
            images = scaled.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
        data = np.repeat(images.reshape(len(order), 1, 1024), 3, axis=1).reshape(len(order), 3072)
        labels = digits.target[order].astype(np.int64)
        train_rows = np.arange(len(order) - test_size)
        for number, chunk in enumerate(np.array_split(train_rows, 5), 1):
            _dump_cifar_batch(
                {"batch_label": f"training batch {number} of 5", "labels": labels[chunk].tolist(), "data": data[chunk]},
                folder / f"data_batch_{number}",
            )
        test_rows = np.arange(len(order) - test_size, len(order))
        _dump_cifar_batch(
            {"batch_label": "testing batch 1 of 1", "labels": labels[test_rows].tolist(), "data": data[test_rows]},
            folder / "test_batch",
        )
        _dump_cifar_batch({"label_names": [str(d) for d in range(10)], "num_vis": 3072}, folder / "batches.meta")

    params = {"generator": "shared.noisy.data.write_digits_cifar", "version": DIGITS_VERSION, "test_size": test_size}
    params["seed"] = seed
    if upsample not in ("nearest", "bilinear"):
        raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {upsample!r}")
    if upsample != "nearest":  # the nearest-neighbour marker keeps its earlier form: existing folders stay valid
        params["upsample"] = upsample
    write_cached(Path(root) / "cifar-10-batches-py", params, write)
    return Path(root)


# ----------------------------------------------------------------------------------------------- task building
@dataclass
class NoisyDataConfig:
    """The data keys every noisy-label package shares: the dataset, the embedded synthetic CIFAR set and the noise
    recipe (DivideMix protocol). A package's ``DataConfig`` subclasses it, declares ``dataset`` (its choices) and
    ``root`` (its help) again where they differ, and adds its own keys after these."""

    dataset: str = "cifar10"
    root: str | None = field(default=None, metadata={"help": "dataset root; null = the embedded synthetic CIFAR set"})
    synthetic_train_size: int = 5000
    synthetic_test_size: int = 1000
    image_size: int = field(default=32, metadata={"help": "CIFAR-layout images are resized once to this side"})
    noise_type: Literal["sym", "asym"] = "sym"
    noise_rate: float = 0.5
    noise_seed: int = 0
    noise_file: str | None = field(
        default=None, metadata={"help": "noisy-label file (created if missing); null: <run folder>/noisy_labels.json"}
    )


@dataclass
class NoisyTaskBase:
    """The part every package's task shares: the image (or token) sources, the labels, the class count and the
    per-item training and evaluation transforms.

    dmlp, anm and crema subclass it with their own fields (meta split, views, vocabulary)."""

    train_source: Any
    test_source: Any
    test_labels: torch.Tensor
    noisy_labels: torch.Tensor
    clean_labels: torch.Tensor | None
    num_classes: int
    train_transform: Callable
    eval_transform: Callable


def cifar_normalize(num_classes: int) -> Normalize:
    """DivideMix's CIFAR-10/100 normalisation (:data:`CIFAR_MEAN`, :data:`CIFAR_STD`)."""
    return Normalize(CIFAR_MEAN[num_classes], CIFAR_STD[num_classes])


def cifar_task_fields(train: CifarSplit, test: CifarSplit, noise: NoisyLabels) -> dict[str, Any]:
    """The source and label fields of a CIFAR-layout task: in-memory images, the noise draw's labels."""
    return {
        "train_source": train.images,
        "test_source": test.images,
        "test_labels": test.labels,
        "noisy_labels": torch.from_numpy(np.array(noise.noisy)),
        "clean_labels": train.labels,
        "num_classes": train.num_classes,
    }


def load_cifar_task(
    cfg: Any,
    prefix: str,
    num_classes: int,
    draw_noise: Callable[[torch.Tensor], NoisyLabels],
    root: str | Path | None = None,
) -> dict[str, Any]:
    """The task fields a CIFAR-layout set gives every package: :func:`cifar_task_fields`, the CIFAR normalisation as
    ``eval_transform`` and the ``noise`` draw (the caller adds its training transform and own fields).

    Args:
        cfg: the package's data config (``root``, ``image_size`` and the synthetic-set sizes are read).
        prefix: the package, naming its embedded synthetic set (:func:`synthetic_cifar_root`).
        num_classes: 10 or 100.
        draw_noise: clean training labels -> the run's noisy labels (read from the noise file when it exists).
        root: the CIFAR-layout folder; None: ``cfg.root``, else the embedded synthetic set.
    """
    if root is None:
        root = Path(cfg.root) if cfg.root is not None else synthetic_cifar_root(prefix, cfg)
    train = load_cifar(root, num_classes, True, cfg.image_size)
    test = load_cifar(root, num_classes, False, cfg.image_size)
    noise = draw_noise(train.labels)
    return {**cifar_task_fields(train, test, noise), "eval_transform": cifar_normalize(num_classes), "noise": noise}


def clothing1m_task_fields(train: Clothing1M, test: Clothing1M) -> dict[str, Any]:
    """The :class:`NoisyTaskBase` fields of a Clothing1M task: the web labels are the noisy ones (no clean labels),
    DivideMix's Clothing1M transforms (:func:`clothing1m_transforms`)."""
    return {
        "train_source": train,
        "test_source": test,
        "test_labels": test.labels,
        "noisy_labels": train.labels,
        "clean_labels": None,
        "num_classes": 14,
        "train_transform": clothing1m_transforms(train=True),
        "eval_transform": clothing1m_transforms(train=False),
    }


def noise_path(cfg: Any, run_dir: Path | None) -> Path | None:
    """The noise file: ``cfg.noise_file``, else ``<run folder>/noisy_labels.json`` (None: no run folder yet)."""
    if cfg.noise_file:
        return Path(cfg.noise_file)
    return run_dir / "noisy_labels.json" if run_dir is not None else None


def save_noise(cfg: Any, task: Any, run_dir: Path) -> None:
    """Persist the noise draw of ``task`` when its noise file does not exist yet (rank 0, after the folder check)."""
    path = noise_path(cfg, run_dir)
    if task.noise is not None and path is not None and not path.is_file():
        save_noisy_labels(path, task.noise)


def synthetic_cifar_root(prefix: str, cfg: Any) -> Path:
    """The embedded synthetic CIFAR-10/100 set of ``cfg.dataset`` (written once, cached) under
    ``synthetic_root()/<prefix>_<dataset>_n<train>_t<test>``."""
    from shared.synthetic import synthetic_root, write_cifar

    classes = 10 if cfg.dataset == "cifar10" else 100
    root = synthetic_root() / f"{prefix}_{cfg.dataset}_n{cfg.synthetic_train_size}_t{cfg.synthetic_test_size}"
    return write_cifar(root, classes, train_size=cfg.synthetic_train_size, test_size=cfg.synthetic_test_size, seed=0)


def clothing1m_splits(root: str | Path | None, splits: Sequence[str]) -> tuple[Clothing1M, ...]:
    """The Clothing1M ``splits`` under ``root``; no root is an error (there is no embedded Clothing1M set)."""
    if root is None:
        raise ValueError(
            "Clothing1M has no embedded synthetic set: pass --data.root (see "
            "`python -m shared.datasets info clothing1m`)"
        )
    return tuple(Clothing1M(root, split) for split in splits)


def cifar_noise(
    clean: torch.Tensor, cfg: Any, num_classes: int, run_dir: Path | None, write_noise: bool = True
) -> NoisyLabels:
    """:func:`noisy_labels_for` with ``cfg``'s recipe (``noise_type``, ``noise_rate``, ``noise_seed``) and noise
    file (:func:`noise_path`). With ``write_noise=False`` a missing file is drawn in memory, not written."""
    path = noise_path(cfg, run_dir)
    return noisy_labels_for(
        clean,
        cfg.noise_type,
        cfg.noise_rate,
        num_classes,
        cfg.noise_seed,
        path if path is not None and (write_noise or path.is_file()) else None,
    )
