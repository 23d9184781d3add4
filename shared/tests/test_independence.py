"""Each paper package imports only `shared`, itself and third-party code; `shared` imports no paper package."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAPER_PACKAGES = (
    "lsfa",
    "pvg",
    "mixteacher",
    "calibrated_teacher",
    "dmlp",
    "anm",
    "energy_anomaly_seg",
    "emo",
    "crema",
    "frih",
)


def imported_top_levels(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def violations(package: str, repo: Path = REPO) -> list[str]:
    forbidden = set(PAPER_PACKAGES) - {package}
    found = []
    for path in sorted((repo / package).rglob("*.py")):
        for name in sorted(imported_top_levels(path) & forbidden):
            found.append(f"{path.relative_to(repo)} imports {name}")
    return found


@pytest.mark.parametrize("package", ["shared", *PAPER_PACKAGES])
def test_package_imports_no_other_paper_package(package):
    if not (REPO / package).is_dir():
        pytest.skip(f"{package} is not in this checkout yet")
    assert violations(package) == []


def test_the_checker_detects_a_cross_import(tmp_path):
    (tmp_path / "emo").mkdir()
    (tmp_path / "emo" / "model.py").write_text("import torch\nfrom pvg.model import PVG\nimport frih.losses as l\n")
    assert violations("emo", tmp_path) == ["emo/model.py imports frih", "emo/model.py imports pvg"]
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "x.py").write_text("from emo import EMO\n")
    assert violations("shared", tmp_path) == ["shared/x.py imports emo"]
