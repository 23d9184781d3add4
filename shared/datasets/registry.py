"""Registry of the real datasets used by the packages of this repository (the entries: ``registry.yaml`` beside it).

Each :class:`DatasetInfo` says where a dataset comes from, what its archives are called, how to check them,
which directory tree the loaders expect under the dataset root, and, for data behind a registration wall, the exact
manual steps.

Provenance of every URL and checksum is written next to it (``RemoteFile.source``). Where no checksum is
published anywhere we could read, ``checksum`` is ``None`` and the source says "not published"; nothing here is
computed by us from a download. No source of these datasets publishes SHA-256 digests, so the registered checksums
are the published md5 values (each ``source`` names where it was read); md5 detects corruption and truncation but is
not collision-resistant. Plain-http URLs remain where the host serves nothing else that we could confirm: COCO's
``images.cocodataset.org`` presents the certificate of s3.amazonaws.com over https (a hostname mismatch), and the
ETH and DHBW hosts of Fishyscapes / Lost and Found could not be checked from here; those have a checksum.
``download_file`` refuses a plain-http file without one: ADE20K's zip (plain http, nothing published) is placed by
hand, as its manual steps say, and ``download`` then extracts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import load_yaml

__all__ = [
    "EYECANDIES_CLASSES",
    "MVTEC3D_CLASSES",
    "REGISTRY",
    "DatasetInfo",
    "RemoteFile",
    "get_dataset",
    "list_datasets",
]

_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".zip")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset release.

    Attributes:
        filename: name of the file as published (and as stored under the dataset root).
        url: direct download URL, or ``None`` when the file sits behind a registration wall.
        checksum: ``"md5:<hex>"`` or ``"sha256:<hex>"``; ``None`` when no checksum is published.
        size: size in bytes when published, else ``None``.
        extract_to: folder (relative to the dataset root) into which an archive is unpacked.
        source: where ``url`` and ``checksum`` were read.
    """

    filename: str
    url: str | None
    checksum: str | None
    size: int | None = None
    extract_to: str = "."
    source: str = ""

    def __post_init__(self) -> None:
        if self.checksum is not None:
            algorithm, _, digest = self.checksum.partition(":")
            expected_length = {"md5": 32, "sha256": 64}.get(algorithm)
            if expected_length is None or len(digest) != expected_length:
                raise ValueError(
                    f"{self.filename}: checksum must be 'md5:<32 hex>' or 'sha256:<64 hex>', got {self.checksum!r}"
                )
            int(digest, 16)

    @property
    def is_archive(self) -> bool:
        """True when the file is a tar/zip archive that ``download`` unpacks."""
        return self.filename.lower().endswith(_ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class DatasetInfo:
    """Everything a user needs to obtain one real dataset and lay it out as the loaders expect.

    Attributes:
        name: the CLI key (``python -m shared.datasets info NAME``).
        title: human-readable name.
        homepage: official page.
        citation: the paper to cite.
        used_by: packages of this repository that read the dataset.
        size: approximate download size, as text (marked when not verified).
        license: licence / terms of use, as stated by the publisher.
        files: the published files; those with a URL can be fetched by ``download``.
        manual: exact steps for what cannot be downloaded automatically (empty when everything can).
        layout: the directory tree under the dataset root, with exact names.
        required_paths: paths relative to the root that must exist; ``verify`` and ``require_dataset`` check them.
        notes: conventions and pitfalls the loaders must know about.
        content_files: unpacked files with a published checksum (``filename`` relative to the root, ``url``
            None); ``verify`` and :func:`shared.datasets.check_content` (called by loaders) compare them.
        expected_counts: ``(folder, kind, n)`` structure checks of ``verify``: ``kind`` ``"dirs"`` counts the
            sub-folders of ``folder``, ``"files"`` the files below it (recursively).
    """

    name: str
    title: str
    homepage: str
    citation: str
    used_by: tuple[str, ...]
    size: str
    license: str
    files: tuple[RemoteFile, ...]
    layout: str
    required_paths: tuple[str, ...]
    manual: tuple[str, ...] = ()
    notes: str = ""
    content_files: tuple[RemoteFile, ...] = ()
    expected_counts: tuple[tuple[str, str, int], ...] = ()
    downloadable: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "downloadable", any(f.url is not None for f in self.files))
        if not self.required_paths:
            raise ValueError(f"{self.name}: required_paths must not be empty")
        if not self.downloadable and not self.manual:
            raise ValueError(f"{self.name}: a dataset without download URLs needs manual instructions")

    def file(self, filename: str) -> RemoteFile:
        """Return the registered file called ``filename`` (``KeyError`` listing the valid names otherwise)."""
        for remote in self.files:
            if remote.filename == filename:
                return remote
        valid = ", ".join(f.filename for f in self.files) or "(none)"
        raise KeyError(f"{self.name} has no file {filename!r}; valid files: {valid}")


# The classes of the two anomaly-detection sets; registry.yaml's required paths list a folder per class.
MVTEC3D_CLASSES = ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire")
EYECANDIES_CLASSES = (
    "CandyCane",
    "ChocolateCookie",
    "ChocolatePraline",
    "Confetto",
    "GummyBear",
    "HazelnutTruffle",
    "LicoriceSandwich",
    "Lollipop",
    "Marshmallow",
    "PeppermintCandy",
)
_REGISTRY_FILE = Path(__file__).with_name("registry.yaml")
_LIST_FIELDS = {"used_by", "manual", "required_paths"}


def _dataset_info(name: str, values: dict[str, Any]) -> DatasetInfo:
    """One ``datasets:`` entry of registry.yaml as a :class:`DatasetInfo` (a ``TypeError`` names a wrong key)."""
    values = dict(values)
    for key in ("files", "content_files"):
        values[key] = tuple(RemoteFile(**remote) for remote in values.get(key, ()))
    values["expected_counts"] = tuple(tuple(count) for count in values.get("expected_counts", ()))
    for key in _LIST_FIELDS & values.keys():
        values[key] = tuple(values[key])
    try:
        return DatasetInfo(name=name, **values)
    except TypeError as err:
        raise TypeError(f"{_REGISTRY_FILE.name}: dataset {name!r}: {err}") from None


def _registry() -> dict[str, DatasetInfo]:
    """Read registry.yaml: ``sources`` (provenance texts that entries refer to by YAML alias) and ``datasets``."""
    data = load_yaml(_REGISTRY_FILE)  # safe loading; a key given twice is an error
    return {name: _dataset_info(name, values) for name, values in data["datasets"].items()}


REGISTRY: dict[str, DatasetInfo] = _registry()


def list_datasets() -> list[str]:
    """Return the registered dataset names, sorted."""
    return sorted(REGISTRY)


def get_dataset(name: str) -> DatasetInfo:
    """Return the registry entry for ``name``; ``KeyError`` listing the valid names when it is unknown."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}") from None
