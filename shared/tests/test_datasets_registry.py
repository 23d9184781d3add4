"""Registry content, require_dataset and the ``python -m shared.datasets`` command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.datasets import REGISTRY, get_dataset, list_datasets, require_dataset
from shared.datasets.__main__ import format_info, main
from shared.datasets.registry import RemoteFile
from shared.testing import run_module

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "ade20k",
    "imagenet1k",
    "coco2017",
    "voc",
    "cifar10",
    "cifar100",
    "clothing1m",
    "mvtec3d",
    "eyecandies",
    "cityscapes",
    "fishyscapes",
    "road_anomaly",
    "smiyc",
    "iharmony4",
}
WALLED = {"imagenet1k", "clothing1m", "mvtec3d", "eyecandies", "cityscapes", "iharmony4"}


def test_every_dataset_of_the_conventions_is_registered() -> None:
    assert set(list_datasets()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_entries_are_complete(name: str) -> None:
    info = get_dataset(name)
    assert info.name == name and info.title and info.homepage.startswith("http") and info.citation
    assert info.used_by and info.size and info.license and info.layout and info.required_paths
    assert all(not Path(p).is_absolute() and ".." not in Path(p).parts for p in info.required_paths)
    for remote in info.files:
        assert remote.source, f"{name}/{remote.filename}: every URL/checksum needs its source"
        assert remote.url is None or remote.url.startswith(("http://", "https://"))
    if name in WALLED:
        assert not info.downloadable and len(info.manual) >= 3
    else:
        assert info.downloadable
    text = format_info(info)
    assert info.layout in text and all(path in text for path in info.required_paths)


def test_published_checksums_match_their_sources() -> None:
    # Spot checks against the values printed in the cited sources (torchvision 0.29.1 is installed: compare live).
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.imagenet import ARCHIVE_META
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    assert get_dataset("cifar10").file("cifar-10-python.tar.gz").checksum == f"md5:{CIFAR10.tgz_md5}"
    assert get_dataset("cifar100").file("cifar-100-python.tar.gz").checksum == f"md5:{CIFAR100.tgz_md5}"
    for filename, md5 in ARCHIVE_META.values():
        assert get_dataset("imagenet1k").file(filename).checksum == f"md5:{md5}"
    # Keyed by year: torchvision's 2008 entry reuses the 2012 file name, so file names are not unique there.
    for year in ("2007", "2007-test", "2012"):
        entry = DATASET_YEAR_DICT[year]
        remote = get_dataset("voc").file(entry["filename"])
        assert remote.checksum == f"md5:{entry['md5']}" and remote.url == entry["url"]


def test_remote_file_rejects_malformed_checksum() -> None:
    with pytest.raises(ValueError, match="md5:<32 hex>"):
        RemoteFile("x.zip", None, "md5:1234")
    with pytest.raises(ValueError):
        RemoteFile("x.zip", None, "sha1:" + "0" * 40)


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="valid names: .*mvtec3d"):
        get_dataset("mvtec")
    with pytest.raises(KeyError, match="valid files: mvtec_3d_anomaly_detection.tar.xz"):
        get_dataset("mvtec3d").file("nope.zip")


def test_require_dataset_missing_root_explains(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        require_dataset("mvtec3d", tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message
    assert "train/good/rgb" in message and "python -m shared.datasets info mvtec3d" in message


def test_require_dataset_names_first_missing_path(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    for name in ("data_batch_1", "data_batch_2"):
        (tmp_path / "cifar-10-batches-py" / name).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="data_batch_3.*and 4 more"):
        require_dataset("cifar10", tmp_path)
    for rel in REGISTRY["cifar10"].required_paths:
        (tmp_path / rel).touch()
    assert require_dataset("cifar10", tmp_path) == tmp_path


def test_cli_list(capsys: pytest.CaptureFixture) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPECTED)
    assert "manual" in out and "download" in out


def test_cli_info_mvtec3d_shows_layout_and_manual_steps(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "mvtec3d"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == format_info(REGISTRY["mvtec3d"]).strip()
    for expected in (
        "Manual download steps:",
        "https://www.mvtec.com/company/research/datasets/mvtec-3d-ad/downloads",
        "CC BY-NC-SA 4.0",
        "Expected layout:",
        "train/good/rgb/000.png",
        "test/<defect>/gt/000.png",
        "md5:d8bb2800fbf3ac88e798da6ae10dc819",
        "bagel/ cable_gland/",
    ):
        assert expected in out


def test_cli_unknown_name_exits_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "mvtec"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'mvtec'" in err and "mvtec3d" in err and "imagenet1k" in err


def test_cli_unknown_file_exits_2(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["download", "cifar10", "--root", str(tmp_path), "--only", "nope"]) == 2
    assert "cifar-10-python.tar.gz" in capsys.readouterr().err


def test_cli_download_of_walled_dataset_prints_manual_steps(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["download", "imagenet1k", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "cannot be downloaded automatically" in err and "image-net.org" in err


def test_cli_verify_exit_codes(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["verify", "road_anomaly", "--root", str(tmp_path)]) == 1
    assert "MISSING   RoadAnomaly_jpg/frames" in capsys.readouterr().out
    (tmp_path / "RoadAnomaly_jpg" / "frames").mkdir(parents=True)
    assert main(["verify", "road_anomaly", "--root", str(tmp_path)]) == 0


def test_module_entry_point_runs() -> None:
    result = run_module("shared.datasets", ["info", "mvtec3d"])
    assert result.returncode == 0, result.stderr
    assert "Manual download steps:" in result.stdout and "Expected layout:" in result.stdout
    bad = run_module("shared.datasets", ["info", "nope"])
    assert bad.returncode == 2 and "Valid names" in bad.stderr


def test_registry_yaml_lists_a_folder_per_anomaly_class() -> None:
    # registry.yaml spells the per-class paths out; the class tuples the loaders import must agree with it.
    from shared.datasets.registry import EYECANDIES_CLASSES, MVTEC3D_CLASSES

    mvtec = {path.split("/")[0] for path in REGISTRY["mvtec3d"].required_paths}
    eyecandies = {path.split("/")[0] for path in REGISTRY["eyecandies"].required_paths}
    assert mvtec == set(MVTEC3D_CLASSES) and eyecandies == set(EYECANDIES_CLASSES)


def test_a_wrong_key_in_registry_yaml_is_named(tmp_path, monkeypatch) -> None:
    from shared.datasets import registry

    broken = tmp_path / "registry.yaml"
    broken.write_text(
        "datasets:\n  toy:\n    title: T\n    homepage: ''\n    citation: ''\n    used_by: []\n    size: ''\n"
        "    license: ''\n    files: []\n    layout: ''\n    required_paths: [x]\n    manual: [m]\n    licence: typo\n"
    )
    monkeypatch.setattr(registry, "_REGISTRY_FILE", broken)
    with pytest.raises(TypeError, match=r"registry.yaml: dataset 'toy'.*licence"):
        registry._registry()
