"""Command line of the dataset registry.

    python -m shared.datasets list
    python -m shared.datasets info NAME
    python -m shared.datasets download NAME --root DIR [--only FILE]
    python -m shared.datasets verify NAME --root DIR [--rehash]

Exit codes: 0 success, 1 failure (missing data, checksum mismatch, manual steps needed), 2 usage error (unknown
dataset or file name).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shared.datasets.download import (
    ChecksumError,
    DatasetDownloadError,
    ManualDownloadRequired,
    UnsafeArchiveError,
    VerifyReport,
    download_dataset,
    verify_dataset,
)
from shared.datasets.registry import REGISTRY, DatasetInfo, list_datasets


def _access(info: DatasetInfo) -> str:
    if not info.downloadable:
        return "manual"
    return "mixed" if info.manual else "download"


def format_table() -> str:
    """Return the ``list`` table: one row per registered dataset."""
    rows = [("name", "access", "size", "used by", "title")]
    for name in list_datasets():
        info = REGISTRY[name]
        size = info.size if len(info.size) <= 38 else info.size[:35] + "..."
        rows.append((name, _access(info), size, ",".join(info.used_by), info.title))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def format_info(info: DatasetInfo) -> str:
    """Return everything the registry knows about ``info`` as readable text (the ``info`` command)."""
    out = [
        f"{info.title}  [{info.name}]",
        f"homepage : {info.homepage}",
        f"citation : {info.citation}",
        f"used by  : {', '.join(info.used_by)}",
        f"size     : {info.size}",
        f"licence  : {info.license}",
        f"access   : {_access(info)}",
        "",
        "Files:",
    ]
    if not info.files:
        out.append("  (no fixed archive names published; see the manual steps)")
    for remote in info.files:
        size = f", {remote.size} bytes" if remote.size is not None else ""
        out.append(f"  {remote.filename}{size}")
        out.append(f"    url      : {remote.url or 'none (manual download, see below)'}")
        out.append(f"    checksum : {remote.checksum or 'not published'}")
        if remote.is_archive:
            where = "<root>" if remote.extract_to == "." else f"<root>/{remote.extract_to}"
            out.append(f"    unpacks into: {where}/")
        if remote.source:
            out.append(f"    source   : {remote.source}")
    if info.manual:
        out += ["", "Manual download steps:"]
        out += [f"  {i}. {step}" for i, step in enumerate(info.manual, 1)]
    out += ["", "Expected layout:", info.layout, "", "Required paths (checked by verify and by the loaders):"]
    out += [f"  {path}" for path in info.required_paths]
    if info.notes:
        out += ["", f"Notes: {info.notes}"]
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared.datasets", description="Registry, downloader and verifier of the real datasets."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="table of the registered datasets")
    info = commands.add_parser("info", help="everything about one dataset, including manual steps and layout")
    info.add_argument("name")
    download = commands.add_parser("download", help="download, verify and unpack a dataset")
    download.add_argument("name")
    download.add_argument("--root", required=True, help="dataset root folder")
    download.add_argument("--only", metavar="FILE", help="only this registered file")
    verify = commands.add_parser("verify", help="check the layout and the checksums of archives present")
    verify.add_argument("name")
    verify.add_argument("--root", required=True, help="dataset root folder")
    verify.add_argument("--rehash", action="store_true", help="recompute checksums even if verified before")
    return parser


_VERIFY_LINES = (  # (report field, tag, suffix) in the order they are printed
    ("missing_paths", "MISSING", ""),
    ("checksum_failures", "CORRUPT", ""),
    ("verified_files", "ok", " (checksum)"),
    ("unverifiable_files", "present", " (no published checksum)"),
    ("absent_files", "absent", " (only needed until it is unpacked)"),
    ("structure_failures", "WRONG", ""),
)


def _print_verify(name: str, report: VerifyReport) -> None:
    for attribute, tag, suffix in _VERIFY_LINES:
        for entry in getattr(report, attribute):
            print(f"{tag:<10s}{entry}{suffix}")
    if report.ok:
        print(f"{name}: OK under {report.root}")
    else:
        print(f"{name}: NOT OK under {report.root}; see `python -m shared.datasets info {name}`")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (defaults to ``sys.argv[1:]``); return the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "list":
        print(format_table())
        return 0
    if args.name not in REGISTRY:
        print(f"error: unknown dataset {args.name!r}. Valid names: {', '.join(list_datasets())}", file=sys.stderr)
        return 2
    info = REGISTRY[args.name]
    if args.command == "info":
        print(format_info(info))
        return 0
    if args.command == "verify":
        report = verify_dataset(args.name, args.root, rehash=args.rehash)
        _print_verify(args.name, report)
        return 0 if report.ok else 1
    if args.only is not None and args.only not in {f.filename for f in info.files}:
        valid = ", ".join(f.filename for f in info.files) or "(none)"
        print(f"error: {args.name} has no file {args.only!r}. Valid files: {valid}", file=sys.stderr)
        return 2
    try:
        report = download_dataset(args.name, args.root, only=args.only)
    except (ManualDownloadRequired, ChecksumError, DatasetDownloadError, UnsafeArchiveError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"{args.name}: done ({len(report.downloaded)} downloaded, {len(report.already_present)} already present, "
        f"{len(report.extracted)} extracted) under {args.root}"
    )
    if report.unverified:
        print(f"warning: no published checksum for {', '.join(report.unverified)}; integrity not verified")
    if info.manual and info.downloadable:
        print("Parts of this dataset need manual steps:")
        print("\n".join(f"  {i}. {step}" for i, step in enumerate(info.manual, 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
