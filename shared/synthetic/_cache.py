"""Idempotent, crash-safe writing of a synthetic dataset folder (shared by the writers of this package).

A dataset is generated into a scratch folder next to its root; the ``_SYNTHETIC.json`` marker holding the
generator's parameters is written last, and the scratch folder is then renamed to the root. A crash therefore
never leaves a half-written folder that looks complete, and a call whose parameters match the marker returns
at once.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = "_SYNTHETIC.json"


def read_marker(root: Path) -> dict[str, Any] | None:
    """Return the parameters stored in ``root/_SYNTHETIC.json``, or ``None`` when absent or unreadable."""
    try:
        content = json.loads((root / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return content if isinstance(content, dict) else None


def write_cached(root: str | Path, params: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """Generate a dataset into ``root`` with ``write(folder)`` unless ``root`` already holds it.

    Args:
        root: the dataset root.
        params: JSON-serialisable parameters identifying the content (generator name, version, sizes, seed ...).
        write: fills the folder it is given.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``root`` exists, is not empty and has no marker (it is not ours; never overwrite it).
    """
    root = Path(root)
    expected = json.loads(json.dumps(params))  # normalise tuples to lists, as they come back from the file
    if read_marker(root) == expected:
        return root
    if root.exists() and read_marker(root) is None and any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists and is not a synthetic dataset (no {MARKER}); refusing to overwrite "
            f"it. Pass another root or remove it yourself."
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    stale = None
    try:
        write(scratch)
        (scratch / MARKER).write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
        if root.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, stale / root.name)
        try:
            os.rename(scratch, root)
        except OSError:
            if read_marker(root) != expected:  # not a concurrent writer producing the same data
                raise
            shutil.rmtree(scratch, ignore_errors=True)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    return root
