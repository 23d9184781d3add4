"""Resumable downloads, checksum verification and safe archive extraction for the dataset registry.

* Downloads go to ``<file>.part`` and resume with an HTTP ``Range`` request (or a seek, for ``file://`` URLs);
  the file gets its final name only after its checksum (md5 or sha256) matched. A mismatch raises
  :class:`ChecksumError` and leaves the ``.part`` file in place for inspection.
* Archives (tar, tar.gz/tgz, tar.xz, tar.bz2, zip) are unpacked member by member into a scratch folder inside the
  dataset root and then moved into place. Any member that would land outside the target (absolute path, ``..``,
  a link whose target escapes, a member written through such a link) and any device or FIFO member is refused with
  :class:`UnsafeArchiveError` naming the member; nothing of a refused archive is kept.
* Progress is remembered in ``<root>/.shared_datasets_state.json`` (size, mtime and checksum of each verified file,
  whether it was extracted), so running ``download`` again neither re-downloads nor re-hashes nor re-extracts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from shared.datasets.registry import DatasetInfo, RemoteFile, get_dataset

_CHUNK = 1 << 20
_STATE_FILE = ".shared_datasets_state.json"
_USER_AGENT = "shared.datasets/1.0 (+python urllib)"


class DatasetDownloadError(RuntimeError):
    """A download failed (network error, truncated transfer, unsupported URL, wrong size)."""


class ChecksumError(DatasetDownloadError):
    """A file's digest differs from the registered checksum."""

    def __init__(self, path: Path, expected: str, actual: str) -> None:
        self.path, self.expected, self.actual = path, expected, actual
        super().__init__(
            f"checksum mismatch for {path}: expected {expected}, got {actual}. The file was kept for "
            f"inspection; delete it and run the command again to download it afresh."
        )


class UnsafeArchiveError(RuntimeError):
    """An archive member would be written outside the extraction folder, or is a device/FIFO."""


class ManualDownloadRequired(RuntimeError):
    """Part of a dataset sits behind a registration wall and has to be fetched by hand."""

    def __init__(self, info: DatasetInfo, root: Path, missing: list[str]) -> None:
        self.info, self.root, self.missing = info, root, missing
        steps = "\n".join(f"  {i}. {step}" for i, step in enumerate(info.manual, 1))
        super().__init__(
            f"{info.title} cannot be downloaded automatically (registration or licence acceptance "
            f"needed). Missing under {root}: {', '.join(missing)}\nManual steps:\n{steps}"
        )


@dataclass
class DownloadReport:
    """What :func:`download_dataset` did for each file."""

    downloaded: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    """Result of :func:`verify_dataset`; ``ok`` is true when nothing is missing and no checksum failed."""

    root: Path
    missing_paths: list[str] = field(default_factory=list)
    checksum_failures: list[str] = field(default_factory=list)
    verified_files: list[str] = field(default_factory=list)
    unverifiable_files: list[str] = field(default_factory=list)
    absent_files: list[str] = field(default_factory=list)
    structure_failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing_paths and not self.checksum_failures and not self.structure_failures


# ----------------------------------------------------------------------------------------------------------------
# checksums


def _parse_checksum(checksum: str) -> tuple[str, str]:
    algorithm, sep, digest = checksum.partition(":")
    if not sep or algorithm not in ("md5", "sha256") or not digest:
        raise ValueError(f"checksum must look like 'md5:<hex>' or 'sha256:<hex>', got {checksum!r}")
    return algorithm, digest.lower()


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Return the hex digest of ``path`` computed with ``algorithm`` (``"md5"`` or ``"sha256"``)."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def verify_checksum(path: str | Path, checksum: str) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the digest ``checksum`` (``"md5:..."``/``"sha256:..."``)."""
    algorithm, expected = _parse_checksum(checksum)
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise ChecksumError(Path(path), f"{algorithm}:{expected}", f"{algorithm}:{actual}")


# ----------------------------------------------------------------------------------------------------------------
# downloads


def _progress_bar(name: str, total: int | None, initial: int) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=not sys.stderr.isatty(),
        leave=False,
    )


def _copy_stream(source: BinaryIO, target: BinaryIO, bar: tqdm) -> int:
    copied = 0
    for chunk in iter(lambda: source.read(_CHUNK), b""):
        target.write(chunk)
        copied += len(chunk)
        bar.update(len(chunk))
    return copied


def _fetch_file_url(url: str, part: Path, offset: int) -> None:
    source_path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    if not source_path.is_file():
        raise DatasetDownloadError(f"cannot download {url}: {source_path} does not exist")
    total = source_path.stat().st_size
    if offset > total:
        raise DatasetDownloadError(
            f"{part} ({offset} bytes) is larger than its source {url} ({total} bytes); delete {part} and run again"
        )
    with open(source_path, "rb") as source, open(part, "ab") as target, _progress_bar(part.name, total, offset) as bar:
        source.seek(offset)
        _copy_stream(source, target, bar)


def _fetch_http(url: str, part: Path, offset: int, timeout: float) -> None:
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            return  # the .part file already holds every byte; the checksum decides whether it is right
        raise DatasetDownloadError(f"cannot download {url}: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        raise DatasetDownloadError(f"cannot download {url}: {error}") from error
    with response:
        status = response.status
        if offset and status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise DatasetDownloadError(
                    f"cannot resume {url}: server answered Content-Range {content_range!r} "
                    f"to a request starting at byte {offset}"
                )
            mode = "ab"
        elif status == 200:
            offset, mode = 0, "wb"  # no Range support (or a fresh download): start from the beginning
        else:
            raise DatasetDownloadError(f"cannot download {url}: unexpected HTTP status {status}")
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        with (
            open(part, mode) as target,
            _progress_bar(part.name, None if expected is None else offset + expected, offset) as bar,
        ):
            try:
                received = _copy_stream(response, target, bar)
            except OSError as error:
                raise DatasetDownloadError(
                    f"download of {url} interrupted ({error}); run again to resume from {part}"
                ) from error
    if expected is not None and received != expected:
        raise DatasetDownloadError(
            f"download of {url} ended after {received} of {expected} bytes; run again to resume from {part}"
        )


def download_file(
    url: str,
    dest: str | Path,
    checksum: str | None = None,
    size: int | None = None,
    timeout: float = 60.0,
    allow_unverified_http: bool = False,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download, and verify it.

    The bytes are written to ``dest`` + ``.part``; an existing ``.part`` file is continued with an HTTP Range
    request (``file://`` URLs seek instead). When ``checksum`` is given the ``.part`` file must match it before it
    is renamed to ``dest``; otherwise :class:`ChecksumError` is raised and the ``.part`` file is kept. An already
    existing ``dest`` is verified and returned without downloading.

    Args:
        url: ``http(s)://`` or ``file://`` URL.
        dest: final path of the file.
        checksum: ``"md5:<hex>"`` or ``"sha256:<hex>"``, or ``None`` when no checksum is published.
        size: expected size in bytes, if known.
        timeout: socket timeout in seconds.
        allow_unverified_http: a plain ``http://`` URL without a checksum is refused (nothing would authenticate
            the bytes); set this to accept such a file anyway.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.
    """
    dest = Path(dest)
    if urllib.parse.urlparse(url).scheme == "http" and checksum is None and not allow_unverified_http:
        raise DatasetDownloadError(
            f"refusing to download {url}: plain http and no published checksum, so nothing "
            "would verify the bytes; fetch it over https or check it by hand"
        )
    if dest.is_file():
        if checksum is not None:
            verify_checksum(dest, checksum)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset > size:
        raise DatasetDownloadError(f"{part} holds {offset} bytes but {dest.name} has {size}; delete it and run again")
    if size is None or offset < size:
        scheme = urllib.parse.urlparse(url).scheme
        if scheme == "file":
            _fetch_file_url(url, part, offset)
        elif scheme in ("http", "https"):
            _fetch_http(url, part, offset, timeout)
        else:
            raise DatasetDownloadError(f"cannot download {url}: unsupported URL scheme {scheme!r}")
    if size is not None and part.stat().st_size != size:
        raise DatasetDownloadError(f"{part} has {part.stat().st_size} bytes, expected {size}")
    if checksum is not None:
        verify_checksum(part, checksum)
    os.replace(part, dest)
    return dest


# ----------------------------------------------------------------------------------------------------------------
# safe extraction


def _archive_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")):
        return "tar"
    raise ValueError(f"{path}: not a supported archive (tar, tar.gz, tgz, tar.xz, tar.bz2, zip)")


def _is_inside(base: str, path: str) -> bool:
    return os.path.commonpath([base, path]) == base


def _check_name(archive: Path, base: str, name: str) -> str:
    """Return the real path a member called ``name`` would get, refusing names that escape ``base``."""
    refuse = f"{archive.name}: refusing member {name!r}"
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"{refuse}: empty or NUL in name")
    posix = name.replace("\\", "/")  # Windows-made archives use backslashes; treat them as separators
    if PurePosixPath(posix).is_absolute() or (len(posix) > 1 and posix[1] == ":"):
        raise UnsafeArchiveError(f"{refuse}: absolute path")
    if ".." in PurePosixPath(posix).parts:
        raise UnsafeArchiveError(f"{refuse}: '..' in path")
    target = os.path.realpath(os.path.join(base, posix))
    if not _is_inside(base, target):
        raise UnsafeArchiveError(f"{refuse}: resolves outside the extraction folder (through a link)")
    return target


def _check_link(archive: Path, base: str, name: str, link_target: str, hard: bool) -> None:
    refuse = f"{archive.name}: refusing member {name!r}"
    if PurePosixPath(link_target).is_absolute():
        raise UnsafeArchiveError(f"{refuse}: link to absolute path {link_target!r}")
    # A hard link names a member of the archive; a symlink is relative to the folder that holds it.
    anchor = base if hard else os.path.dirname(os.path.join(base, name))
    resolved = os.path.realpath(os.path.join(anchor, link_target))
    if not _is_inside(base, resolved):
        raise UnsafeArchiveError(f"{refuse}: link target {link_target!r} points outside the extraction folder")


def _validate_tar_member(archive: Path, base: str, member: tarfile.TarInfo) -> None:
    _check_name(archive, base, member.name)
    if member.isdev():  # character/block device or FIFO
        raise UnsafeArchiveError(f"{archive.name}: refusing member {member.name!r}: device or FIFO")
    if member.issym() or member.islnk():
        _check_link(archive, base, member.name, member.linkname, hard=member.islnk())
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{archive.name}: refusing member {member.name!r}: unsupported member type")


def _extract_tar(archive: Path, scratch: str) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        # Validate everything first (clear error, nothing written), then again member by member on the live
        # folder: links extracted earlier can change what a later path resolves to.
        for member in members:
            _validate_tar_member(archive, scratch, member)
        for member in members:
            _validate_tar_member(archive, scratch, member)
            if hasattr(tarfile, "data_filter"):
                tar.extract(member, scratch, filter="data")  # second line of defence (Python >= 3.11.4)
            else:
                tar.extract(member, scratch)


def _zip_symlink_target(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return zf.read(info).decode("utf-8", errors="replace")
    return None


def _extract_zip(archive: Path, scratch: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_name(archive, scratch, info.filename)
            link_target = _zip_symlink_target(zf, info)
            if link_target is not None:
                _check_link(archive, scratch, info.filename, link_target, hard=False)
        for info in infos:
            target = _check_name(archive, scratch, info.filename)
            if info.is_dir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            # zipfile never creates symlinks; a symlink entry becomes a small file holding its target path.
            with zf.open(info) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, _CHUNK)


def _merge_conflicts(source: Path, target: Path) -> list[str]:
    """Paths where ``source`` and ``target`` disagree on the kind of entry (a file against a folder)."""
    conflicts = []
    for entry in sorted(source.iterdir()):
        destination = target / entry.name
        if not (destination.exists() or destination.is_symlink()):
            continue
        entry_dir = entry.is_dir() and not entry.is_symlink()
        dest_dir = destination.is_dir() and not destination.is_symlink()
        if entry_dir and dest_dir:
            conflicts.extend(_merge_conflicts(entry, destination))
        elif entry_dir != dest_dir:
            conflicts.append(str(destination))
    return conflicts


def _merge_move(source: Path, target: Path) -> None:
    """Move the contents of ``source`` into ``target``, merging folders that exist on both sides.

    A file of the archive replaces a file of the same name; a file where ``target`` has a folder (or the other way
    round) is refused before anything is moved, so an archive can never delete a folder of the dataset root.
    """
    target.mkdir(parents=True, exist_ok=True)
    conflicts = _merge_conflicts(source, target)
    if conflicts:
        raise UnsafeArchiveError(
            f"unpacking would replace a folder by a file (or a file by a folder) at "
            f"{', '.join(conflicts[:5])}; nothing was moved. Move that entry away first."
        )
    _move_entries(source, target)


def _move_entries(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        destination = target / entry.name
        if entry.is_dir() and not entry.is_symlink() and destination.is_dir() and not destination.is_symlink():
            _move_entries(entry, destination)
        else:
            if destination.is_symlink() or destination.exists():
                destination.unlink()
            os.replace(entry, destination)


def safe_extract(archive: str | Path, dest: str | Path) -> list[str]:
    """Unpack ``archive`` into ``dest`` after checking that every member stays inside ``dest``.

    Raises:
        UnsafeArchiveError: naming the first member with an absolute path, a ``..`` component, a link whose target
            lies outside ``dest`` (or a path through such a link), or a device/FIFO type. Nothing is written to
            ``dest`` in that case.

    Returns:
        The sorted names of the top-level entries the archive produced.
    """
    archive, dest = Path(archive), Path(dest)
    kind = _archive_kind(archive)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".extract-{archive.name}-", dir=dest) as scratch_dir:
        scratch = os.path.realpath(scratch_dir)
        try:
            (_extract_zip if kind == "zip" else _extract_tar)(archive, scratch)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError) as error:
            raise DatasetDownloadError(f"{archive} is corrupt or not a {kind} archive: {error}") from error
        top_level = sorted(entry.name for entry in Path(scratch).iterdir())
        _merge_move(Path(scratch), dest)
    return top_level


# ----------------------------------------------------------------------------------------------------------------
# dataset-level operations


def _load_state(root: Path) -> dict[str, dict]:
    path = root / _STATE_FILE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # a damaged state file only costs a re-hash
    return state if isinstance(state, dict) else {}


def _save_state(root: Path, state: dict[str, dict]) -> None:
    path = root / _STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _fingerprint(path: Path) -> dict[str, int]:
    info = path.stat()
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _verified_before(entry: dict | None, path: Path, remote: RemoteFile) -> bool:
    if not entry or not path.is_file() or entry.get("checksum") != remote.checksum:
        return False
    return all(entry.get(key) == value for key, value in _fingerprint(path).items())


def _verify_local(path: Path, remote: RemoteFile, state: dict[str, dict], rehash: bool = False) -> bool:
    """Verify ``path`` against ``remote.checksum`` (cached in ``state``); return False when there is no checksum."""
    if remote.checksum is None:
        return False
    if rehash or not _verified_before(state.get(remote.filename), path, remote):
        verify_checksum(path, remote.checksum)
        entry = state.setdefault(remote.filename, {})
        entry.update(_fingerprint(path), checksum=remote.checksum)
    return True


def _missing_paths(info: DatasetInfo, root: Path) -> list[str]:
    return [rel for rel in info.required_paths if not (root / rel).exists()]


def download_dataset(
    name: str, root: str | Path, only: str | None = None, log: Callable[[str], None] = print
) -> DownloadReport:
    """Download, verify and unpack every file of dataset ``name`` that has a URL into ``root``.

    Files without a URL (registration-walled data) are used when the user has already placed them in ``root``:
    they are verified and unpacked like downloaded ones. Running the function again does nothing for files that
    were verified and unpacked before.

    Args:
        name: registry key (see ``python -m shared.datasets list``).
        root: the dataset root.
        only: restrict to the registered file with this name.
        log: where progress messages go.

    Raises:
        KeyError: unknown dataset or file name.
        ManualDownloadRequired: required paths are still missing and some files must be fetched by hand.
        ChecksumError, DatasetDownloadError, UnsafeArchiveError: see :func:`download_file` and :func:`safe_extract`.
    """
    info = get_dataset(name)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    files = (info.file(only),) if only is not None else info.files
    state = _load_state(root)
    report = DownloadReport()
    manual_missing: list[str] = []
    for remote in files:
        path = root / remote.filename
        entry = state.get(remote.filename, {})
        if remote.is_archive and entry.get("extracted") and not path.exists():
            log(f"{remote.filename}: extracted earlier (archive since removed); skipping")
            report.already_present.append(remote.filename)
            continue
        if path.is_file():
            if _verify_local(path, remote, state):
                log(f"{remote.filename}: present, checksum ok")
            else:
                log(f"{remote.filename}: present (no published checksum; not verified)")
                report.unverified.append(remote.filename)
            report.already_present.append(remote.filename)
        elif remote.url is None:
            manual_missing.append(remote.filename)
            continue
        else:
            log(f"{remote.filename}: downloading {remote.url}")
            download_file(remote.url, path, remote.checksum, remote.size)
            if remote.checksum is None:
                log(f"{remote.filename}: WARNING no checksum is published for this file; integrity not verified")
                report.unverified.append(remote.filename)
            else:
                state.setdefault(remote.filename, {}).update(_fingerprint(path), checksum=remote.checksum)
            report.downloaded.append(remote.filename)
        _save_state(root, state)
        if remote.is_archive and not state.get(remote.filename, {}).get("extracted"):
            target = root / remote.extract_to
            log(f"{remote.filename}: extracting into {target}")
            safe_extract(path, target)
            state.setdefault(remote.filename, {})["extracted"] = True
            _save_state(root, state)
            report.extracted.append(remote.filename)
    missing = _missing_paths(info, root) if only is None else []
    if manual_missing or (missing and info.manual):
        raise ManualDownloadRequired(info, root, manual_missing + [p for p in missing if p not in manual_missing])
    if missing:
        raise DatasetDownloadError(
            f"{info.title}: after download these paths are still missing under {root}: {', '.join(missing)}"
        )
    return report


def _count_entries(folder: Path, kind: str) -> int:
    if kind == "dirs":
        with os.scandir(folder) as entries:
            return sum(1 for e in entries if e.is_dir())
    return sum(len(files) for _, _, files in os.walk(folder))


def verify_dataset(name: str, root: str | Path, rehash: bool = False) -> VerifyReport:
    """Check that the required paths of ``name`` exist under ``root``, that archives and unpacked files present
    there match their published checksums, and that the folder counts (e.g. ImageNet's 1000 classes, 50 000
    validation images) are right.

    Checksums already verified by an earlier run are not recomputed unless the file changed or ``rehash`` is set.
    """
    info = get_dataset(name)
    root = Path(root)
    report = VerifyReport(root=root)
    if not root.is_dir():
        report.missing_paths = [str(root)]
        return report
    report.missing_paths = _missing_paths(info, root)
    state = _load_state(root)
    for remote in (*info.files, *info.content_files):
        path = root / remote.filename
        if not path.is_file():
            if remote in info.files:
                report.absent_files.append(remote.filename)
            continue
        try:
            if _verify_local(path, remote, state, rehash=rehash):
                report.verified_files.append(remote.filename)
            else:
                report.unverifiable_files.append(remote.filename)
        except ChecksumError as error:
            report.checksum_failures.append(f"{remote.filename}: expected {error.expected}, got {error.actual}")
    for folder, kind, expected in info.expected_counts:
        path = root / folder
        if path.is_dir():
            found = _count_entries(path, kind)
            if found != expected:
                what = "sub-folders" if kind == "dirs" else "files"
                report.structure_failures.append(f"{folder}: {found} {what}, expected {expected}")
    if report.verified_files:
        with contextlib.suppress(OSError):  # a read-only dataset folder is fine: the cache only saves re-hashing
            _save_state(root, state)
    return report


_SYNTHETIC_MARKER = "_SYNTHETIC.json"
_CONTENT_CHECKED: dict[tuple[str, str], tuple[int, int]] = {}


def check_content(name: str, root: str | Path) -> None:
    """Compare the unpacked files of ``name`` under ``root`` with their published checksums (loaders call this).

    Each file is hashed once per process while its size and modification time stay the same. A synthetic tree
    written by :mod:`shared.synthetic` (``_SYNTHETIC.json`` in the root or beside the file) is not the published
    data and is not compared: its protection is the loader's own (e.g. CIFAR's restricted unpickler).

    Raises:
        ChecksumError: naming the first file whose digest differs (corrupt, truncated or replaced).
    """
    root = Path(root)
    for remote in get_dataset(name).content_files:
        path = root / remote.filename
        if not path.is_file() or (root / _SYNTHETIC_MARKER).is_file() or (path.parent / _SYNTHETIC_MARKER).is_file():
            continue
        stat = path.stat()
        key, stamp = (name, str(path.resolve())), (stat.st_size, stat.st_mtime_ns)
        if _CONTENT_CHECKED.get(key) == stamp:
            continue
        verify_checksum(path, remote.checksum)
        _CONTENT_CHECKED[key] = stamp


def require_dataset(name: str, root: str | Path) -> Path:
    """Return ``root`` as a Path if dataset ``name`` is laid out there, else raise a helpful ``FileNotFoundError``.

    The paper packages' loaders call this before reading real data. The error names the first expected path that is
    missing, shows the expected layout and points to ``python -m shared.datasets info NAME``.
    """
    info = get_dataset(name)
    root = Path(root)
    missing = [str(root)] if not root.is_dir() else [str(root / rel) for rel in _missing_paths(info, root)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"{info.title} not found: expected {missing[0]}{more}.\n"
            f"Expected layout under {root}:\n{info.layout}\n"
            f"See `python -m shared.datasets info {name}` for where to get it and how to lay it out."
        )
    return root
