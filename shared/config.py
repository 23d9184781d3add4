"""Validated configs: dataclass defaults < YAML file < command line.

A package describes its configuration as a (possibly nested) dataclass. `parse_config` builds an argparse parser
from it, so `--help` lists every key with its type and default, then resolves the values in this order::

    dataclass defaults  <  YAML file given with -c/--config  <  --key value flags on the command line

Nested dataclasses are addressed with dots on the command line (`--optim.lr 0.1`) and as nested mappings in
YAML. An unknown key (in YAML or on the command line) is an error that lists the valid keys; a value of the
wrong type is an error naming the key. Booleans take `--flag` / `--no-flag` on the command line.

Example::

    @dataclass
    class Config:
        epochs: int = 10
        lr: float = 0.1
        model: str = "emo_1m"

    cfg = parse_config(Config)          # python train.py -c configs/x.yaml --lr 0.05
    save_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = [
    "AmpMode",
    "ConfigError",
    "DeviceName",
    "RunConfig",
    "build_parser",
    "config_from_dict",
    "config_name",
    "config_to_dict",
    "load_yaml",
    "parse_config",
    "parse_eval_config",
    "pop_stored_key",
    "save_config",
    "script_parser",
]

T = TypeVar("T")
_MISSING = object()
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """An invalid configuration: unknown key, wrong type, unreadable file."""


DeviceName = Literal["auto", "cpu", "cuda"]
AmpMode = Literal["off", "bf16", "fp16"]
#: Run-level keys as packages named them before ``RunConfig`` (old name -> today's), read by ``upgrade_stored``.
_RENAMED_RUN_KEYS = {"num_threads": "threads", "torch_threads": "threads", "ckpt_interval": "checkpoint_interval"}


def _stored_section(values: dict[str, Any], path: Sequence[str]) -> dict[str, Any] | None:
    """The section of ``values`` that ``path`` names, each dict on the way replaced by a copy (the checkpoint's own
    dicts stay as they were); None where one is missing."""
    section = values
    for name in path:
        if not isinstance(section.get(name), Mapping):
            return None
        section[name] = dict(section[name])
        section = section[name]
    return section


def pop_stored_key(values: dict[str, Any], dotted: str) -> Any:
    """Remove the ``dotted`` key from ``values``, a stored config being upgraded (``RunConfig.upgrade_stored``), and
    return its value (None where it is absent): what a renamed or moved key held."""
    *path, key = dotted.split(".")
    section = _stored_section(values, path)
    return None if section is None else section.pop(key, None)


def _with_legacy_values(stored: Mapping[str, Any], legacy: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``stored`` with each dotted key of ``legacy`` it lacks set to its value, where its section exists."""
    values = dict(stored)
    for dotted, value in legacy.items():
        *path, key = dotted.split(".")
        section = _stored_section(values, path)
        if section is not None:
            section.setdefault(key, value)
    return values


@dataclasses.dataclass
class RunConfig:
    """The run-level settings every training config inherits, one name each in every package.

    A package's config is ``@dataclass class TrainConfig(RunConfig): ...``; it may change a default by declaring
    the field again (e.g. ``log_interval: int = 20``) but never adds another name for one of these settings.
    ``eval_interval`` and ``checkpoint_interval`` count the loop's own unit (epochs or iterations, said in the
    package's help text); 0 means "only at the end".
    """

    output_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "run folder (default runs/<package>/<name>/<time>)"}
    )
    name: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "run name, the middle part of the default run folder (default: the -c file's stem, else 'default')"
        },
    )
    resume: str | None = dataclasses.field(default=None, metadata={"help": "last.pt of a run to continue"})
    seed: int = 0
    device: DeviceName = dataclasses.field(default="auto", metadata={"help": "auto: cuda when available"})
    amp: AmpMode = dataclasses.field(default="off", metadata={"help": "mixed precision: off, bf16 or fp16"})
    threads: int | None = dataclasses.field(
        default=None, metadata={"help": "torch intra-op CPU threads (null: torch's default)"}
    )
    log_interval: int = dataclasses.field(default=50, metadata={"help": "progress/log line every N steps"})
    eval_interval: int = dataclasses.field(
        default=0, metadata={"help": "evaluate every N epochs/iterations (0: at the end)"}
    )
    checkpoint_interval: int = dataclasses.field(
        default=1, metadata={"help": "write last.pt every N epochs/iterations (and at the end)"}
    )
    tensorboard: bool = True

    #: The top-level keys that define what a run trains (its model, its method). A ``--resume`` whose config differs
    #: from the checkpoint's stored one in any of them is refused before anything is written
    #: (``shared.checkpoint.load_resume_state``); other keys (more epochs, intervals, paths) may change on resume.
    #: Every training config names its own (``shared/tests/test_conventions.py``).
    RESUME_SECTIONS: ClassVar[tuple[str, ...]] = ()
    #: Dotted keys inside those sections that may change on resume all the same: where files are (a moved dataset,
    #: a weights path the checkpoint already holds), how they are loaded, how long the run is.
    RESUME_FREE_KEYS: ClassVar[frozenset[str]] = frozenset()
    #: Dotted keys added after runs were stored, each with the value such a run had (what it was trained and scored
    #: with), filled in by :meth:`upgrade_stored` where a stored config lacks the key but holds its section.
    LEGACY_VALUES: ClassVar[Mapping[str, Any]] = {}

    @classmethod
    def upgrade_stored(cls, stored: Mapping[str, Any]) -> dict[str, Any]:
        """A config stored in a checkpoint by an older version of the package, in today's keys and meanings (what a
        key added since must be for that run to be rebuilt as it was trained). Read by resume checks and evaluation
        scripts (``shared.entrypoints``). A key added later is declared in :attr:`LEGACY_VALUES`; a package overrides
        this method only for a key renamed or moved, starting from this one's result.

        Here: the run-level settings as they were before they moved onto this class (``num_threads`` /
        ``torch_threads`` -> ``threads``, 0 meaning torch's default -> null; ``ckpt_interval`` ->
        ``checkpoint_interval``; ``device: null`` -> ``auto``; ``amp: none`` -> ``off``), each an old value that
        today's config refuses; then the :attr:`LEGACY_VALUES`. A current config passes unchanged."""
        values = _with_legacy_values(stored, cls.LEGACY_VALUES)
        for old, new in _RENAMED_RUN_KEYS.items():
            if old in values:
                values.setdefault(new, values.pop(old))
        if "threads" in values and values["threads"] == 0:
            values["threads"] = None
        if "device" in values and values["device"] is None:
            values["device"] = "auto"
        if values.get("amp") == "none":
            values["amp"] = "off"
        return values

    def __post_init__(self) -> None:
        for name in ("log_interval", "eval_interval", "checkpoint_interval"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key '{name}' must be >= 0, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"config key 'threads' must be >= 1 or null, got {self.threads}")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _fields(schema: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = get_type_hints(schema)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(schema) if f.init}


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _wrong(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"config key '{key}': expected {expected}, got {value!r}")


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    options = get_args(tp)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is type(None):
            continue
        try:
            return _coerce(value, option, key)
        except ConfigError:
            continue
    raise _wrong(key, _type_name(tp), value)


def _coerce_literal(value: Any, tp: Any, key: str) -> Any:
    options = get_args(tp)
    if value in options and not (isinstance(value, bool) and True not in options):  # True == 1 in Python
        return value
    if value is False and "off" in options:
        return "off"  # YAML 1.1 reads a bare `off` as false
    if value is True and "on" in options:
        return "on"  # and a bare `on` as true
    raise _wrong(key, _type_name(tp), value)


def _coerce_sequence(value: Any, tp: Any, key: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise _wrong(key, "a list", value)
    origin, args = get_origin(tp), get_args(tp)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise ConfigError(f"config key '{key}': expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    item_tp = args[0] if args else Any
    items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple or tp is tuple else items


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is float and is_number:
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)  # PyYAML (YAML 1.1) reads `5e-4`, without a dot, as a string
    if tp is int and is_number and isinstance(value, int):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp not in (bool, float, int, str) and isinstance(tp, type) and isinstance(value, tp):
        return value
    expected = {bool: "true/false", float: "a number", int: "an integer", str: "a string"}.get(tp, _type_name(tp))
    raise _wrong(key, expected, value)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where it is lossless (int -> float, list -> tuple)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is Literal:
        return _coerce_literal(value, tp, key)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        return _coerce_sequence(value, tp, key)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise _wrong(key, "a mapping", value)
        return dict(value)
    return _coerce_scalar(value, tp, key)


def config_from_dict(schema: type[T], values: Mapping[str, Any], base: T | None = None, prefix: str = "") -> T:
    """Build a `schema` instance from a (nested) mapping, on top of `base` (or the dataclass defaults).

    Raises:
        ConfigError: on an unknown key (the message lists the valid keys) or a value of the wrong type.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"config section '{prefix or '<root>'}' must be a mapping, got {values!r}")
    fields = _fields(schema)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f" in section '{prefix.rstrip('.')}'" if prefix else ""
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(repr(prefix + k) for k in unknown)}"
            f"{where}; valid keys: {', '.join(prefix + k for k in fields)}"
        )
    kwargs = {}
    for name, (_field, tp) in fields.items():
        current = getattr(base, name) if base is not None else _MISSING
        if name in values:
            if _is_dataclass_type(tp):
                kwargs[name] = config_from_dict(
                    tp, values[name], current if current is not _MISSING else None, prefix=f"{prefix}{name}."
                )
            else:
                kwargs[name] = _coerce(values[name], tp, prefix + name)
        elif current is not _MISSING:
            kwargs[name] = current
    return schema(**kwargs) if base is None else dataclasses.replace(base, **kwargs)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples become lists), safe for YAML/JSON and `torch.load(weights_only=True)`."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


BASE_KEY = "_base_"


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; nested mappings merge key by key, everything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
        )
    return out


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, a syntax error, a key given twice or a non-mapping top level is a
    `ConfigError`.

    A file may start with ``_base_: other.yaml`` (a path relative to the file): the base is read first (bases may
    have bases; a cycle is an error) and this file's keys are merged on top of it, nested sections key by key.
    """
    path = Path(path)
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"config files include each other in a cycle: {cycle}")
    data = _read_yaml_mapping(path)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: {BASE_KEY} must be a file name, got {base!r}")
    return _merge(load_yaml(path.parent / base, (*_chain, path.resolve())), data)


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically: temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    tmp.replace(path)
    return path


def _flat_fields(schema: type, prefix: str = "") -> list[tuple[str, Any, Any, str]]:
    """(dotted key, type, default, help) for every leaf field of a nested dataclass."""
    out = []
    defaults = schema()
    for name, (field, tp) in _fields(schema).items():
        key = prefix + name
        if _is_dataclass_type(tp):
            out.extend(_flat_fields(tp, key + "."))
        else:
            out.append((key, tp, getattr(defaults, name), field.metadata.get("help", "")))
    return out


def _parse_cli_value(text: str) -> Any:
    """A command-line string as YAML scalar (so `0.1`, `true`, `null`, `[1, 2]` work); plain text otherwise."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _leaf_type(tp: Any) -> Any:
    """The non-None member of Optional[X], else `tp`."""
    if get_origin(tp) in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return tp


def _str_items(tp: Any) -> bool:
    """Whether ``tp`` (maybe Optional) is a list or tuple of strings."""
    leaf = _leaf_type(tp)
    items = [a for a in get_args(leaf) if a is not Ellipsis]
    return get_origin(leaf) in (list, tuple) and bool(items) and all(a is str for a in items)


def build_parser(schema: type, description: str | None = None, add_help: bool = True) -> argparse.ArgumentParser:
    """An argparse parser with `-c/--config` and one `--key` option per (dotted) config field."""
    parser = argparse.ArgumentParser(
        description=description,
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,  # a mistyped key (--epoch for --epochs) is an error, not a silent abbreviation
    )
    parser.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="YAML",
        help="YAML recipe; it replaces configs/default.yaml (omitted keys take the built-in defaults)",
    )
    group = parser.add_argument_group("config keys (override the YAML file)")
    for key, tp, default, help_text in _flat_fields(schema):
        dest = key.replace(".", "__")
        leaf = _leaf_type(tp)
        help_text = f"{help_text} ({_type_name(tp)})".strip().replace("%", "%%")  # argparse formats help with %
        default = str(default).replace("%", "%%")
        if leaf is bool:
            group.add_argument(
                f"--{key}",
                dest=dest,
                nargs="?",
                const=True,
                type=_parse_bool,
                metavar="BOOL",
                default=argparse.SUPPRESS,
                help=f"{help_text}; default {default} (--{key} alone, or --{key} true|false, or --no-{key})",
            )
            group.add_argument(
                f"--no-{key}", dest=dest, action="store_false", default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )
        elif get_origin(leaf) in (list, tuple) or leaf in (list, tuple):
            group.add_argument(
                f"--{key}",
                dest=dest,
                nargs="*",
                default=argparse.SUPPRESS,
                metavar="V",
                help=f"{help_text}; default {default}",
            )
        else:
            group.add_argument(
                f"--{key}", dest=dest, default=argparse.SUPPRESS, metavar="V", help=f"{help_text}; default {default}"
            )
    return parser


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _parse_bool(text: str) -> bool:
    """``--flag true`` / ``--flag false`` (also yes/no, on/off, 1/0) for a boolean key."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def _parse_flow_list(text: str, key: str, as_text: bool = False) -> list[Any]:
    """A list given on the command line in YAML flow form, e.g. ``"[ssl, purify]"`` or ``"[0.42, 0.9]"``;
    ``as_text`` (a list of strings): every item stays text (``[001, on]`` are names, not 1 and True)."""
    try:
        value = yaml.load(text, Loader=yaml.BaseLoader) if as_text else yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config key '{key}': cannot read {text!r} as a list: {err}") from err
    if not isinstance(value, list):
        raise ConfigError(f"config key '{key}': expected a list such as [a, b], got {text!r}")
    if as_text:
        return value
    return [_parse_cli_value(v) if isinstance(v, str) else v for v in value]


def config_name(argv: Sequence[str] | None = None, default: str = "default") -> str:
    """The stem of the ``-c/--config`` file in ``argv`` (default ``sys.argv[1:]``), else ``default``: the run folder
    is ``runs/<package>/<config name>/<time>``. Accepts ``-c F``, ``-cF``, ``--config F`` and ``--config=F``."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("-c", "--config", default=None)
    config = pre.parse_known_args(list(sys.argv[1:] if argv is None else argv))[0].config
    return Path(config).stem if config else default


def parse_config(
    schema: type[T],
    argv: Sequence[str] | None = None,
    description: str | None = None,
    default_config: str | Path | None = None,
    base_values: Mapping[str, Any] | None = None,
) -> T:
    """Resolve a config from defaults, an optional YAML file and command-line flags (CLI > YAML > defaults).

    Args:
        schema: the config dataclass (may nest dataclasses).
        argv: command-line arguments (default: `sys.argv[1:]`).
        description: text for `--help`.
        default_config: YAML file used when `-c/--config` is not given (e.g. the package's configs/default.yaml).
            A ``-c`` file replaces it (it does not layer on top of it): keys the ``-c`` file omits take the
            dataclass defaults (or its ``_base_`` file's values), so a recipe file is complete on its own.
        base_values: values that stand in for the YAML file when no ``-c`` is given (e.g. the config stored in a
            checkpoint, see :func:`parse_eval_config`).

    Raises:
        SystemExit: with argparse's usage message, listing the valid keys, on an unknown command-line flag;
            with a message naming the key on a wrong type.
    """
    parser = build_parser(schema, description)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        valid = ", ".join("--" + k for k, *_ in _flat_fields(schema))
        parser.error(f"unknown argument(s) {' '.join(unknown)}; valid config keys: {valid}")
    yaml_path = args.config if args.config is not None else (None if base_values is not None else default_config)
    try:
        if yaml_path is not None:
            cfg = config_from_dict(schema, load_yaml(yaml_path))
        else:
            cfg = config_from_dict(schema, base_values) if base_values is not None else schema()
        overrides = {}
        for key, tp, _, _ in _flat_fields(schema):
            dest = key.replace(".", "__")
            if hasattr(args, dest):
                raw = getattr(args, dest)
                if isinstance(raw, list) and len(raw) == 1 and raw[0].strip() in ("null", "None"):
                    value = None  # --key null: an optional list switched off
                elif isinstance(raw, list) and len(raw) == 1 and raw[0].strip().startswith("["):
                    value = _parse_flow_list(raw[0], key, _str_items(tp))  # --key "[a, b]", the YAML flow form
                elif isinstance(raw, list) and _str_items(tp):
                    value = list(raw)  # list[str]: class names such as 001 or on stay text
                elif isinstance(raw, list):
                    value = [_parse_cli_value(v) for v in raw]
                elif isinstance(raw, str) and (_leaf_type(tp) is not str or raw in ("null", "None")):
                    value = _parse_cli_value(raw)
                else:
                    value = raw
                overrides[key] = value
        cfg = config_from_dict(schema, _nest(overrides), base=cfg)
        if isinstance(cfg, RunConfig) and cfg.name is None:
            cfg = dataclasses.replace(cfg, name=Path(args.config).stem if args.config else "default")
        return cfg
    except ConfigError as err:
        parser.error(str(err))
    raise AssertionError("unreachable")  # parser.error exits


def script_parser(
    schema: type[T], description: str, default_config: str | Path | None = None
) -> Callable[[Sequence[str] | None], T]:
    """The ``parse_args(argv=None) -> config`` of an entry script, so that every script declares it in one line::

        parse_args = script_parser(TrainConfig, "Train X on Y.", CONFIG_DIR / "default.yaml")

    The function resolves dataclass defaults < YAML (``-c``, else ``default_config``) < command line, as
    :func:`parse_config`.
    """

    def parse_args(argv: Sequence[str] | None = None) -> T:
        return parse_config(schema, argv, description=description, default_config=default_config)

    where = f"``-c``, else {Path(default_config).name}" if default_config is not None else "``-c``"
    parse_args.__doc__ = f"{description} Config: dataclass defaults < YAML ({where}) < command line."
    return parse_args


def parse_eval_config(
    schema: type[T],
    stored: Mapping[str, Any],
    argv: Sequence[str] | None = None,
    description: str | None = None,
    ignore: Sequence[str] = (),
) -> T:
    """The config of an evaluation: the training config stored in a checkpoint, then ``-c`` / ``--key`` overrides.

    Args:
        schema: the training config dataclass.
        stored: ``checkpoint["config"]`` (a plain nested dict).
        argv: command-line arguments (the caller removes its own, e.g. ``--checkpoint``).
        ignore: top-level keys of ``stored`` to drop first (e.g. a field a newer version removed).
    """
    values = {k: v for k, v in stored.items() if k not in ignore}
    return parse_config(schema, argv, description, base_values=values)
