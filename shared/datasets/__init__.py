"""Registry of the real datasets, downloader with verification, and the ``python -m shared.datasets`` CLI.

    python -m shared.datasets list                  # table of datasets
    python -m shared.datasets info mvtec3d          # layout, files, checksums, manual download steps
    python -m shared.datasets download coco2017 --root data/coco [--only val2017.zip]
    python -m shared.datasets verify cifar10 --root data/cifar

Loaders of the paper packages call :func:`require_dataset` before reading real data: a missing dataset is a
``FileNotFoundError`` that names the expected path, shows the layout and points to the ``info`` command.
COCO partial-label splits (STAC protocol) come from ``python -m shared.datasets.coco_partial``.
"""

from shared.datasets.download import (
    ChecksumError,
    DatasetDownloadError,
    DownloadReport,
    ManualDownloadRequired,
    UnsafeArchiveError,
    VerifyReport,
    check_content,
    download_dataset,
    download_file,
    file_digest,
    require_dataset,
    safe_extract,
    verify_checksum,
    verify_dataset,
)
from shared.datasets.registry import REGISTRY, DatasetInfo, RemoteFile, get_dataset, list_datasets

__all__ = [
    "REGISTRY",
    "ChecksumError",
    "DatasetDownloadError",
    "DatasetInfo",
    "DownloadReport",
    "ManualDownloadRequired",
    "RemoteFile",
    "UnsafeArchiveError",
    "VerifyReport",
    "check_content",
    "download_dataset",
    "download_file",
    "file_digest",
    "get_dataset",
    "list_datasets",
    "partial_split",
    "partial_split_paths",
    "require_dataset",
    "safe_extract",
    "verify_checksum",
    "verify_dataset",
    "write_partial_splits",
]

_COCO_PARTIAL = ("partial_split", "partial_split_paths", "write_partial_splits")


def __getattr__(name: str) -> object:
    # Imported lazily so that `python -m shared.datasets.coco_partial` does not find its module pre-imported.
    if name in _COCO_PARTIAL:
        from shared.datasets import coco_partial

        return getattr(coco_partial, name)
    raise AttributeError(f"module 'shared.datasets' has no attribute {name!r}")
