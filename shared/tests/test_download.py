"""Downloads (local HTTP server with Range support and file:// URLs), checksums and safe extraction."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import re
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.datasets import download as dl
from shared.datasets.download import (
    ChecksumError,
    UnsafeArchiveError,
    download_dataset,
    download_file,
    file_digest,
    safe_extract,
    verify_checksum,
)
from shared.datasets.registry import REGISTRY, DatasetInfo, RemoteFile

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # a little over 1 MiB: more than one read chunk
SHA256 = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
MD5 = "md5:" + hashlib.md5(PAYLOAD).hexdigest()


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from ``server.directory`` with single-range ``Range: bytes=N-`` support; records requests."""

    def do_GET(self) -> None:
        path = Path(self.server.directory) / self.path.lstrip("/")
        self.server.requests.append((self.path, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and self.server.honour_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.server.bytes_sent += len(body)  # counted before sending: the client may finish before this thread
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[http.server.HTTPServer]:
    served = tmp_path / "served"
    served.mkdir()
    (served / "blob.bin").write_bytes(PAYLOAD)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    httpd.directory, httpd.requests, httpd.bytes_sent, httpd.honour_range = str(served), [], 0, True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _url(httpd: http.server.HTTPServer, name: str) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/{name}"


def test_http_download_verifies_sha256_and_md5(server, tmp_path: Path) -> None:
    out = download_file(_url(server, "blob.bin"), tmp_path / "a.bin", SHA256, size=len(PAYLOAD))
    assert out.read_bytes() == PAYLOAD and not (tmp_path / "a.bin.part").exists()
    download_file(_url(server, "blob.bin"), tmp_path / "b.bin", MD5)
    assert (tmp_path / "b.bin").read_bytes() == PAYLOAD
    assert file_digest(out, "md5") == MD5.split(":")[1]


def test_resume_requests_only_the_missing_bytes(server, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    cut = 300_001
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD[:cut])
    download_file(_url(server, "blob.bin"), dest, SHA256)
    assert server.requests == [("/blob.bin", f"bytes={cut}-")]
    assert server.bytes_sent == len(PAYLOAD) - cut
    assert dest.read_bytes() == PAYLOAD


def test_resume_restarts_when_server_ignores_range(server, tmp_path: Path) -> None:
    server.honour_range = False
    (tmp_path / "blob.bin.part").write_bytes(b"garbage that must be discarded")
    download_file(_url(server, "blob.bin"), tmp_path / "blob.bin", SHA256)
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_complete_part_file_gets_416_and_verifies(server, tmp_path: Path) -> None:
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD)
    download_file(_url(server, "blob.bin"), tmp_path / "blob.bin", SHA256)
    assert server.bytes_sent == 0
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_resume_from_file_url(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD)
    (tmp_path / "copy.bin.part").write_bytes(PAYLOAD[:12345])
    download_file(source.as_uri(), tmp_path / "copy.bin", SHA256)
    assert (tmp_path / "copy.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_names_file_and_digests_and_keeps_part(server, tmp_path: Path) -> None:
    wrong = "sha256:" + "0" * 64
    with pytest.raises(ChecksumError) as info:
        download_file(_url(server, "blob.bin"), tmp_path / "blob.bin", wrong)
    message = str(info.value)
    assert "blob.bin" in message and wrong in message and SHA256 in message
    assert (tmp_path / "blob.bin.part").read_bytes() == PAYLOAD
    assert not (tmp_path / "blob.bin").exists()


def test_http_error_is_clear(server, tmp_path: Path) -> None:
    with pytest.raises(dl.DatasetDownloadError, match="HTTP 404"):
        download_file(_url(server, "missing.bin"), tmp_path / "x.bin", SHA256)


def test_verify_checksum_rejects_malformed_spec(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="md5:<hex>"):
        verify_checksum(path, "crc32:1234")


# ----------------------------------------------------------------------------------------------------------------
# safe extraction


def _tar_with(tmp_path: Path, name: str, members: list[tarfile.TarInfo], data: bytes = b"evil") -> Path:
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _file_member(name: str, data: bytes = b"evil") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info


def _link_member(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _nothing_outside(tmp_path: Path, dest: Path) -> None:
    assert not (tmp_path / "evil").exists() and not (tmp_path / "escaped").exists()
    assert not dest.exists() or list(dest.iterdir()) == []


@pytest.mark.parametrize(
    "members",
    [
        [_file_member("../evil")],
        [_file_member("good/../../evil")],
        [_file_member("/tmp/absolute-evil-shared-datasets-test")],
        [_link_member("link", "..")],
        [_link_member("link", "/etc")],
        [_link_member("hard", "../evil", tarfile.LNKTYPE)],
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-up", "symlink-absolute", "hardlink-up"],
)
def test_malicious_tar_is_refused(tmp_path: Path, members: list[tarfile.TarInfo]) -> None:
    archive = _tar_with(tmp_path, "bad.tar.gz", [_file_member("fine.txt", b"ok"), *members])
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match=re.escape(members[-1].name)):
        safe_extract(archive, dest)
    _nothing_outside(tmp_path, dest)
    assert not Path("/tmp/absolute-evil-shared-datasets-test").exists()


def test_symlink_chain_escape_is_refused(tmp_path: Path) -> None:
    # Each link looks harmless alone ("b" -> ".", "a" -> "b/.." is lexically inside), together "a" is the parent.
    members = [_link_member("b", "."), _link_member("a", "b/.."), _file_member("a/escaped")]
    archive = _tar_with(tmp_path, "chain.tar", members)
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, dest)
    assert not (tmp_path / "escaped").exists()


def test_device_member_is_refused(tmp_path: Path) -> None:
    device = tarfile.TarInfo("dev/null-copy")
    device.type = tarfile.CHRTYPE
    archive = _tar_with(tmp_path, "dev.tar", [device])
    with pytest.raises(UnsafeArchiveError, match="device"):
        safe_extract(archive, tmp_path / "dest")


@pytest.mark.parametrize("name", ["../evil", "/abs/evil", "a/../../evil", "..\\evil"])
def test_malicious_zip_is_refused(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", "ok")
        zf.writestr(zipfile.ZipInfo(name), "evil")
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match=re.escape(repr(name))):
        safe_extract(archive, dest)
    _nothing_outside(tmp_path, dest)


def test_zip_symlink_pointing_outside_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    info = zipfile.ZipInfo("link")
    info.external_attr = 0o120777 << 16
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "../../etc")
    with pytest.raises(UnsafeArchiveError, match="points outside"):
        safe_extract(archive, tmp_path / "dest")


def test_safe_archives_extract_and_merge(tmp_path: Path) -> None:
    first = tmp_path / "one.tar"
    with tarfile.open(first, "w") as tar:
        for name, data in (("top/a.txt", b"a"), ("top/sub/b.txt", b"b")):
            info = _file_member(name, data)
            tar.addfile(info, io.BytesIO(data))
        tar.addfile(_link_member("top/alias.txt", "a.txt"))
    second = tmp_path / "two.zip"
    with zipfile.ZipFile(second, "w") as zf:
        zf.writestr("top/c.txt", "c")
    dest = tmp_path / "dest"
    assert safe_extract(first, dest) == ["top"]
    assert safe_extract(second, dest) == ["top"]
    assert (dest / "top/a.txt").read_text() == "a" and (dest / "top/sub/b.txt").read_text() == "b"
    assert (dest / "top/c.txt").read_text() == "c" and (dest / "top/alias.txt").read_text() == "a"
    assert sorted(p.name for p in dest.iterdir()) == ["top"]  # scratch folders are gone


def test_corrupt_archive_names_the_file(tmp_path: Path) -> None:
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"this is not a zip")
    with pytest.raises(dl.DatasetDownloadError, match="broken.zip"):
        safe_extract(archive, tmp_path / "dest")


# ----------------------------------------------------------------------------------------------------------------
# dataset-level download with a temporary registry entry


def _make_release(tmp_path: Path) -> tuple[Path, str]:
    archive = tmp_path / "release" / "toy.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("toy/train/x.txt", "toy/val/y.txt"):
            tar.addfile(_file_member(name, b"data"), io.BytesIO(b"data"))
    return archive, "sha256:" + file_digest(archive)


def _register(monkeypatch: pytest.MonkeyPatch, name: str, file: RemoteFile, **fields: Any) -> None:
    """Put a one-file dataset ``name`` into the registry for this test (text fields empty, ``toy/train`` required)."""
    texts = dict.fromkeys(("title", "homepage", "citation", "size", "license", "layout"), "")
    values = {"used_by": (), "required_paths": ("toy/train",), **texts, **fields}
    monkeypatch.setitem(REGISTRY, name, DatasetInfo(name=name, files=(file,), **values))


@pytest.fixture()
def toy_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    archive, checksum = _make_release(tmp_path)
    file = RemoteFile("toy.tar.gz", archive.as_uri(), checksum)
    _register(monkeypatch, "toy", file, required_paths=("toy/train", "toy/val"))
    return "toy", archive


def test_download_dataset_is_idempotent(toy_dataset, tmp_path: Path) -> None:
    name, archive = toy_dataset
    root = tmp_path / "root"
    report = download_dataset(name, root, log=lambda _: None)
    assert report.downloaded == ["toy.tar.gz"] and report.extracted == ["toy.tar.gz"]
    assert (root / "toy/train/x.txt").read_bytes() == b"data"
    archive.unlink()  # a second run must not need the source again
    again = download_dataset(name, root, log=lambda _: None)
    assert again.downloaded == [] and again.extracted == [] and again.already_present == ["toy.tar.gz"]
    assert dl.verify_dataset(name, root).ok


def test_verify_reports_missing_and_corrupt(toy_dataset, tmp_path: Path) -> None:
    name, _ = toy_dataset
    root = tmp_path / "root"
    download_dataset(name, root, log=lambda _: None)
    (root / "toy.tar.gz").write_bytes(b"tampered")
    os.rename(root / "toy/val", root / "toy/val-moved")
    report = dl.verify_dataset(name, root)
    assert not report.ok
    assert report.missing_paths == ["toy/val"]
    assert report.checksum_failures and "toy.tar.gz" in report.checksum_failures[0]


def test_manual_dataset_raises_with_instructions(tmp_path: Path) -> None:
    with pytest.raises(dl.ManualDownloadRequired) as info:
        download_dataset("mvtec3d", tmp_path / "mvtec", log=lambda _: None)
    message = str(info.value)
    assert "mvtec_3d_anomaly_detection.tar.xz" in message and "mvtec.com" in message


def test_manual_archive_placed_by_user_is_verified_and_extracted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, checksum = _make_release(tmp_path)
    _register(monkeypatch, "walled", RemoteFile("toy.tar.gz", None, checksum), manual=("ask nicely",))
    root = tmp_path / "root"
    with pytest.raises(dl.ManualDownloadRequired, match="ask nicely"):
        download_dataset("walled", root, log=lambda _: None)
    root.mkdir(exist_ok=True)
    (root / "toy.tar.gz").write_bytes(archive.read_bytes())
    report = download_dataset("walled", root, log=lambda _: None)
    assert report.extracted == ["toy.tar.gz"] and (root / "toy/train/x.txt").is_file()


def test_cli_download_and_verify(toy_dataset, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from shared.datasets.__main__ import main

    name, _ = toy_dataset
    root = tmp_path / "root"
    assert main(["download", name, "--root", str(root), "--only", "toy.tar.gz"]) == 0
    assert "1 downloaded" in capsys.readouterr().out and (root / "toy/val/y.txt").is_file()
    assert main(["verify", name, "--root", str(root)]) == 0
    assert "ok        toy.tar.gz (checksum)" in capsys.readouterr().out
    (root / "toy.tar.gz").write_bytes(b"corrupt")
    assert main(["verify", name, "--root", str(root), "--rehash"]) == 1
    assert "CORRUPT   toy.tar.gz" in capsys.readouterr().out
