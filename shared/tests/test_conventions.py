"""The house rules that a reviewer would otherwise check by hand (CONTRIBUTING.md):

* imports flow one way inside a package: no module imports another that (directly or not) imports it back;
* one setting, one name: every training config inherits :class:`shared.config.RunConfig` and no dataclass in a
  package declares another spelling of a run-level setting (``num_threads``, ``torch_threads``, ``eval_every`` ...);
* every recipe under ``<pkg>/configs`` resolves (``_base_`` chains included) against its script's config.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest

from shared.config import RunConfig

REPO = Path(__file__).resolve().parents[2]
PACKAGES = [
    p
    for p in (
        "shared",
        "emo",
        "pvg",
        "lsfa",
        "energy_anomaly_seg",
        "mixteacher",
        "calibrated_teacher",
        "dmlp",
        "anm",
        "crema",
        "frih",
    )
    if (REPO / p / "__init__.py").is_file()
]
PAPER_PACKAGES = [p for p in PACKAGES if p != "shared"]
#: Other names for RunConfig's settings: a package must use RunConfig's name instead.
RUN_LEVEL_ALIASES = {
    "num_threads",
    "torch_threads",
    "n_threads",
    "cpu_threads",
    "eval_every",
    "eval_freq",
    "ckpt_interval",
    "save_interval",
    "save_every",
    "checkpoint_every",
    "print_freq",
    "log_every",
    "log_freq",
    "out_dir",
    "output",
    "run_dir",
    "use_amp",
    "precision",
    "gpu",
    "use_cuda",
    "resume_from",
    "random_seed",
}


def _module_name(path: Path, repo: Path) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str, package: str) -> set[str]:
    """The modules of `package` that `module` (file `path`) imports, relative imports resolved."""
    found = set()
    is_init = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == package)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_init else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != package:
                continue
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


def import_graph(package: str, repo: Path = REPO) -> dict[str, set[str]]:
    """module -> the package's modules it imports (tests excluded; a package's __init__ counts as a module)."""
    files = {_module_name(p, repo): p for p in (repo / package).rglob("*.py") if "tests" not in p.parts}
    return {m: {d for d in _imports(p, m, package) if d in files and d != m} for m, p in files.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted, the list sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def _without_init(graph: dict[str, set[str]], package: str) -> dict[str, set[str]]:
    """The package's __init__ re-exports the public API: it may import every module, and a module importing the
    package root is a cycle only if it goes through a real module, so the root is left out."""
    return {m: {d for d in deps if d != package} for m, deps in graph.items() if m != package}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_among_a_packages_modules(package):
    assert import_cycles(_without_init(import_graph(package), package)) == []


def test_the_cycle_finder_finds_a_cycle_through_a_deferred_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.train import main\n")
    (pkg / "train.py").write_text("from pkg import eval as ev\nimport pkg.model\n")
    (pkg / "eval.py").write_text("def main():\n    from pkg.train import build\n")
    (pkg / "model.py").write_text("import torch\n")
    graph = _without_init(import_graph("pkg", tmp_path), "pkg")
    assert graph["pkg.train"] == {"pkg.eval", "pkg.model"}
    assert import_cycles(graph) == [["pkg.eval", "pkg.train"]]


def _package_dataclasses(package: str) -> list[type]:
    classes = []
    for path in sorted((REPO / package).rglob("*.py")):
        if "tests" in path.parts or path.name.startswith("__main__"):
            continue
        module = importlib.import_module(_module_name(path, REPO))
        classes += [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__
        ]
    return classes


@pytest.mark.parametrize("package", PAPER_PACKAGES)
def test_one_setting_one_name(package):
    bad = [
        f"{cls.__module__}.{cls.__name__}.{f.name}"
        for cls in _package_dataclasses(package)
        for f in dataclasses.fields(cls)
        if f.name in RUN_LEVEL_ALIASES
    ]
    assert bad == [], f"use shared.config.RunConfig's name for these settings: {bad}"


@pytest.mark.parametrize("package", PAPER_PACKAGES)
def test_every_training_script_parses_to_a_run_config(package):
    for path in sorted((REPO / package).glob("train*.py")):
        module = importlib.import_module(_module_name(path, REPO))
        cfg = module.parse_args([])
        assert isinstance(cfg, RunConfig), f"{path.relative_to(REPO)}: parse_args gives {type(cfg).__name__}"
        redefined = [
            f.name
            for f in dataclasses.fields(cfg)
            if f.name in {g.name for g in dataclasses.fields(RunConfig)}
            and f.type != {g.name: g.type for g in dataclasses.fields(RunConfig)}[f.name]
        ]
        assert redefined == [], f"{type(cfg).__name__} changes the type of RunConfig fields {redefined}"


@pytest.mark.parametrize("package", PAPER_PACKAGES)
def test_every_training_config_names_what_a_resume_may_not_change(package):
    """Each training script's config declares its own ``RESUME_SECTIONS`` (RunConfig's empty default is not
    inherited by accident), and every section it names is one of its fields."""
    for path in sorted((REPO / package).glob("train*.py")):
        cfg = importlib.import_module(_module_name(path, REPO)).parse_args([])
        declared_below_run_config = any(
            "RESUME_SECTIONS" in vars(c) for c in type(cfg).__mro__[: type(cfg).__mro__.index(RunConfig)]
        )
        assert declared_below_run_config, f"{path.relative_to(REPO)}: {type(cfg).__name__} declares no RESUME_SECTIONS"
        fields = {f.name for f in dataclasses.fields(cfg)}
        unknown = [s for s in type(cfg).RESUME_SECTIONS if s not in fields]
        assert unknown == [], f"{type(cfg).__name__}.RESUME_SECTIONS names no field: {unknown}"


def _has_dotted_field(cfg: object, dotted: str) -> bool:
    for name in dotted.split("."):
        if not (dataclasses.is_dataclass(cfg) and name in {f.name for f in dataclasses.fields(cfg)}):
            return False
        cfg = getattr(cfg, name)
    return True


@pytest.mark.parametrize("package", PAPER_PACKAGES)
def test_every_key_a_stored_config_is_upgraded_with_exists(package):
    """``LEGACY_VALUES`` (the value a key added later had in older runs) and ``RESUME_FREE_KEYS`` name real dotted
    keys of the training config: a misspelt one would silently do nothing."""
    for path in sorted((REPO / package).glob("train*.py")):
        cfg = importlib.import_module(_module_name(path, REPO)).parse_args([])
        for attribute in ("LEGACY_VALUES", "RESUME_FREE_KEYS"):
            unknown = [key for key in getattr(type(cfg), attribute) if not _has_dotted_field(cfg, key)]
            assert unknown == [], f"{type(cfg).__name__}.{attribute} names no config key: {unknown}"


def test_the_dotted_key_check_sees_a_misspelt_key():
    cfg = importlib.import_module("lsfa.train").parse_args([])
    assert _has_dotted_field(cfg, "data.mask_resize") and _has_dotted_field(cfg, "threads")
    assert not _has_dotted_field(cfg, "data.mask_resise") and not _has_dotted_field(cfg, "data.mask_resize.x")


@pytest.mark.parametrize("package", PAPER_PACKAGES)
def test_every_training_script_prints_its_help(package, capsys):
    for path in sorted((REPO / package).glob("train*.py")):
        module = importlib.import_module(_module_name(path, REPO))
        with pytest.raises(SystemExit) as exit_info:
            module.parse_args(["--help"])
        assert exit_info.value.code == 0, path.name
        assert "--seed" in capsys.readouterr().out


@pytest.mark.parametrize("package", PAPER_PACKAGES)
def test_every_eval_script_prints_its_help_without_a_checkpoint(package, capsys):
    for path in sorted((REPO / package).glob("eval.py")) + sorted((REPO / package).glob("eval_*.py")):
        module = importlib.import_module(_module_name(path, REPO))
        with pytest.raises(SystemExit) as exit_info:
            module.parse_args(["--help"])
        assert exit_info.value.code == 0, path.name
        assert "--checkpoint" in capsys.readouterr().out, path.name


def test_the_setting_check_catches_an_alias():
    @dataclasses.dataclass
    class Bad(RunConfig):
        num_threads: int = 0

    assert [f.name for f in dataclasses.fields(Bad) if f.name in RUN_LEVEL_ALIASES] == ["num_threads"]


def _recipes(package: str) -> list[Path]:
    return sorted((REPO / package / "configs").glob("*.yaml")) if (REPO / package / "configs").is_dir() else []


@pytest.mark.parametrize(
    "recipe", [r for p in PAPER_PACKAGES for r in _recipes(p)], ids=lambda r: f"{r.parent.parent.name}/{r.name}"
)
def test_every_recipe_resolves_against_a_training_script(recipe):
    package = recipe.parent.parent.name
    errors = []
    for path in sorted((REPO / package).glob("train*.py")):
        module = importlib.import_module(_module_name(path, REPO))
        try:
            cfg = module.parse_args(["-c", str(recipe)])
        except SystemExit as err:
            errors.append(f"{path.name}: exit {err.code}")
            continue
        assert cfg.name == recipe.stem
        return
    pytest.fail(f"{recipe} parses with no training script of {package}: {errors}")


def _private_timm_imports() -> list[tuple[str, str]]:
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.ImportFrom)
                    and (node.module or "").startswith("timm.")
                    and any(part.startswith("_") for part in node.module.split("."))
                ):
                    found += [(node.module, alias.name) for alias in node.names]
    return sorted(set(found))


def test_private_timm_imports_exist_in_the_pinned_timm_range():
    """A package that imports a private timm module must run on every timm that pyproject.toml allows."""
    import re

    import timm
    from packaging.requirements import Requirement
    from packaging.version import Version

    line = re.search(r'^\s*"(timm[^"]*)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert line is not None, "timm is not a dependency in pyproject.toml"
    spec = Requirement(line.group(1))
    private = _private_timm_imports()
    if private:
        assert spec.specifier and any(s.operator in ("<", "<=", "==", "~=") for s in spec.specifier), (
            f"private timm imports {private} need an upper bound on timm in pyproject.toml, got {spec}"
        )
    assert Version(timm.__version__) in spec.specifier
    for module, name in private:
        assert hasattr(importlib.import_module(module), name), f"{module}.{name} is gone in timm {timm.__version__}"


def test_no_test_skips_on_a_missing_dependency():
    # Every dependency is installed by `make setup`: a broken install must fail a test, not skip it.
    found = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("test_*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "importorskip"
    ]
    assert found == [], f"pytest.importorskip on an installed dependency: {found}"
