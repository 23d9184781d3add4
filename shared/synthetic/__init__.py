"""Synthetic datasets written to disk in the real formats, so that the real loaders read them.

* :func:`write_imagefolder`: ImageNet-style ``train/<class>/*.png`` / ``val/<class>/*.png`` classification set.
* :func:`write_cifar`: CIFAR-10/100 "python version" pickles (read with :class:`SyntheticCIFAR10` /
  :class:`SyntheticCIFAR100`, which skip torchvision's md5 checks of the real files).
* :func:`write_coco_detection`: COCO 2017 detection layout (``train2017/``, ``val2017/``, ``annotations/``).

Every writer is deterministic (same arguments, byte-identical files), fast (seconds at the default sizes), writes
through a scratch folder renamed into place, and is idempotent: a ``_SYNTHETIC.json`` marker records the arguments
and a matching call returns immediately. Put the sets under :func:`synthetic_root` (``<repo>/data/synthetic``,
ignored by git; override with the ``SYNTHETIC_DATA_ROOT`` environment variable).
"""

from __future__ import annotations

import os
from pathlib import Path

from shared.synthetic._cache import MARKER, read_marker, write_cached
from shared.synthetic.cifar import SyntheticCIFAR10, SyntheticCIFAR100, write_cifar
from shared.synthetic.coco import write_coco_detection
from shared.synthetic.imagefolder import imagefolder_class_names, write_imagefolder

__all__ = [
    "MARKER",
    "SyntheticCIFAR10",
    "SyntheticCIFAR100",
    "imagefolder_class_names",
    "read_marker",
    "synthetic_root",
    "write_cached",
    "write_cifar",
    "write_coco_detection",
    "write_imagefolder",
]

_REPO_ROOT = Path(__file__).resolve().parents[2]


def synthetic_root() -> Path:
    """Folder for cached synthetic sets: ``$SYNTHETIC_DATA_ROOT`` if set, else ``<repo root>/data/synthetic``.

    The repository root is the parent of the ``shared`` package folder.
    """
    override = os.environ.get("SYNTHETIC_DATA_ROOT")
    return Path(override).expanduser() if override else _REPO_ROOT / "data" / "synthetic"
