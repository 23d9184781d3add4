import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
import yaml

from shared.config import (
    ConfigError,
    RunConfig,
    config_from_dict,
    config_name,
    config_to_dict,
    load_yaml,
    parse_config,
    parse_eval_config,
    save_config,
    script_parser,
)


@dataclass
class Optim:
    lr: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Cfg:
    epochs: int = 10
    name: str = "emo_1m"
    amp: bool = False
    ema: float | None = 0.9998
    pretrained: str | None = None
    milestones: list[int] = field(default_factory=lambda: [105, 115])
    noise: tuple[float, float] | None = None
    optim: Optim = field(default_factory=Optim)


def write(tmp_path, data):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    path = write(tmp_path, {"epochs": 20, "optim": {"lr": 0.5}, "name": "from_yaml"})
    cfg = parse_config(Cfg, ["-c", path, "--optim.lr", "0.05", "--amp", "--milestones", "1", "2", "3"])
    assert cfg.epochs == 20  # YAML over default
    assert cfg.optim.lr == 0.05  # CLI over YAML
    assert cfg.name == "from_yaml"
    assert cfg.optim.betas == (0.9, 0.999)  # default kept
    assert cfg.amp is True and cfg.milestones == [1, 2, 3]
    assert parse_config(Cfg, ["--no-amp"]).amp is False


def test_list_flags_in_yaml_flow_form_and_null():
    assert parse_config(Cfg, ["--milestones", "[1, 2, 3]"]).milestones == [1, 2, 3]
    assert parse_config(Cfg, ["--noise", "[0.42, 0.9]"]).noise == (0.42, 0.9)
    assert parse_config(Cfg, ["--noise", "0.42", "0.9"]).noise == (0.42, 0.9)
    assert parse_config(Cfg, ["--noise", "null"]).noise is None
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--milestones", "[1, x]"])  # wrong element type names the key
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--milestones", "[1, 2"])  # not a list


def test_default_config_file_is_used_without_c(tmp_path):
    path = write(tmp_path, {"epochs": 3})
    assert parse_config(Cfg, [], default_config=path).epochs == 3
    assert parse_config(Cfg, ["--epochs", "4"], default_config=path).epochs == 4


def test_script_parser_is_parse_config_with_the_script_defaults(tmp_path, capsys):
    path = write(tmp_path, {"epochs": 3})
    parse_args = script_parser(Cfg, "Train a test model.", path)
    assert parse_args([]) == parse_config(Cfg, [], default_config=path)
    assert parse_args(["--epochs", "5"]).epochs == 5
    assert "Train a test model." in parse_args.__doc__ and Path(path).name in parse_args.__doc__
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert "Train a test model." in capsys.readouterr().out


def test_optional_values_and_null(tmp_path):
    cfg = parse_config(Cfg, ["--ema", "null", "--pretrained", "w.pth"])
    assert cfg.ema is None and cfg.pretrained == "w.pth"
    assert parse_config(Cfg, ["--pretrained", "null"]).pretrained is None
    assert parse_config(Cfg, ["--name", "123"]).name == "123"  # a str field keeps digits as text


def test_unknown_yaml_key_lists_valid_keys(tmp_path):
    path = write(tmp_path, {"epohcs": 3})
    with pytest.raises(SystemExit), pytest.raises(ConfigError):
        parse_config(Cfg, ["-c", path])
    with pytest.raises(ConfigError, match=r"unknown config key 'epohcs'.*valid keys: epochs, name"):
        config_from_dict(Cfg, {"epohcs": 3})
    with pytest.raises(ConfigError, match=r"'optim.lrr'.*valid keys: optim.lr, optim.betas"):
        config_from_dict(Cfg, {"optim": {"lrr": 3}})


def test_unknown_cli_key_is_an_error_listing_keys(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(Cfg, ["--epohcs", "3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--epohcs" in err and "--epochs" in err and "--optim.lr" in err


@pytest.mark.parametrize("argv", [["--epoch", "3"], ["--optim.l", "0.5"]])
def test_a_prefix_of_a_key_is_not_taken_for_the_key(argv, capsys):
    """argparse would read --epoch as --epochs: a mistyped key must be an error, not a silent abbreviation."""
    with pytest.raises(SystemExit) as exc:
        parse_config(Cfg, argv)
    assert exc.value.code == 2 and argv[0] in capsys.readouterr().err


def test_wrong_type_names_the_key(capsys):
    with pytest.raises(ConfigError, match="config key 'epochs': expected an integer"):
        config_from_dict(Cfg, {"epochs": "ten"})
    with pytest.raises(ConfigError, match="config key 'optim.betas': expected 2 values"):
        config_from_dict(Cfg, {"optim": {"betas": [0.9]}})
    with pytest.raises(ConfigError, match="'amp': expected true/false"):
        config_from_dict(Cfg, {"amp": 1})
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--epochs", "1.5"])
    assert "config key 'epochs'" in capsys.readouterr().err
    assert config_from_dict(Cfg, {"optim": {"lr": 1}}).optim.lr == 1.0  # int -> float is lossless


def test_bad_yaml_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(lst)


def test_save_round_trip(tmp_path):
    cfg = parse_config(Cfg, ["--optim.lr", "0.3", "--epochs", "7"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = parse_config(Cfg, ["-c", str(path)])
    assert again == cfg
    assert config_to_dict(cfg)["optim"] == {"lr": 0.3, "betas": [0.9, 0.999]}


def test_exponent_without_dot_is_a_float(tmp_path):
    # PyYAML reads 5e-4 as a string; a float field accepts it, a malformed number stays an error
    assert parse_config(Cfg, ["--optim.lr", "5e-4"]).optim.lr == 5e-4
    assert config_from_dict(Cfg, {"optim": {"lr": "1E-3"}}).optim.lr == 1e-3
    with pytest.raises(ConfigError, match="optim.lr"):
        config_from_dict(Cfg, {"optim": {"lr": "5e-4x"}})
    with pytest.raises(ConfigError, match="'epochs': expected an integer"):
        config_from_dict(Cfg, {"epochs": "5e2"})


def test_config_name_is_the_stem_of_the_config_file(monkeypatch):
    for argv in (
        ["-c", "configs/coco_1pct.yaml"],
        ["--config", "a/coco_1pct.yaml", "--seed", "3"],
        ["--config=coco_1pct.yml"],
        ["-cconfigs/coco_1pct.yaml"],
        ["--seed", "1", "-c", "coco_1pct.yaml"],
    ):
        assert config_name(argv) == "coco_1pct", argv
    assert config_name(["--seed", "1"]) == "default"
    assert config_name([], default="retinanet_default") == "retinanet_default"
    monkeypatch.setattr("sys.argv", ["train.py", "-c", "x/voc.yaml"])
    assert config_name() == "voc" and config_name(None) == "voc"


# ------------------------------------------------------------------------------------------------ RunConfig, _base_
@dataclasses.dataclass
class _Optim:
    lr: float = 0.1
    momentum: float = 0.9


@dataclasses.dataclass
class _Train(RunConfig):
    epochs: int = 3
    optim: _Optim = dataclasses.field(default_factory=_Optim)
    log_interval: int = 7  # a package may change a RunConfig default


def test_a_recipe_may_start_from_a_base_and_bases_chain(tmp_path):
    (tmp_path / "root.yaml").write_text("epochs: 5\noptim:\n  lr: 0.5\n  momentum: 0.8\nseed: 3\n")
    (tmp_path / "mid.yaml").write_text("_base_: root.yaml\noptim:\n  lr: 0.2\n")
    (tmp_path / "leaf.yaml").write_text("_base_: mid.yaml\nepochs: 9\n")
    cfg = parse_config(_Train, ["-c", str(tmp_path / "leaf.yaml")])
    assert (cfg.epochs, cfg.optim.lr, cfg.optim.momentum, cfg.seed, cfg.name) == (9, 0.2, 0.8, 3, "leaf")
    assert cfg.log_interval == 7 and cfg.amp == "off" and cfg.device == "auto"
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_yaml(tmp_path / "c.yaml")


def test_run_config_values_are_validated_and_yaml_off_is_amp_off(tmp_path):
    (tmp_path / "x.yaml").write_text("amp: off\nthreads: 2\n")
    cfg = parse_config(_Train, ["-c", str(tmp_path / "x.yaml"), "--device", "cpu"])
    assert (cfg.amp, cfg.threads, cfg.device) == ("off", 2, "cpu")
    with pytest.raises(SystemExit):
        parse_config(_Train, ["--amp", "none"])
    with pytest.raises(SystemExit):
        parse_config(_Train, ["--threads", "0"])
    assert parse_config(_Train, []).name == "default"


def test_a_config_stored_before_run_config_is_read_in_todays_keys():
    old = {"num_threads": 0, "ckpt_interval": 3, "device": None, "amp": "none", "epochs": 4}
    cfg = config_from_dict(_Train, _Train.upgrade_stored(old))
    assert (cfg.threads, cfg.checkpoint_interval, cfg.device, cfg.amp, cfg.epochs) == (None, 3, "auto", "off", 4)
    assert _Train.upgrade_stored({"torch_threads": 2})["threads"] == 2
    current = config_to_dict(parse_config(_Train, ["--threads", "2", "--amp", "bf16"]))
    assert _Train.upgrade_stored(current) == current


@dataclasses.dataclass
class _Grown(_Train):
    LEGACY_VALUES: ClassVar[Mapping[str, Any]] = {"optim.momentum": 0.0, "epochs": 1}


def test_a_key_added_later_gets_the_value_older_runs_had():
    stored = {"optim": {"lr": 0.2}}
    upgraded = _Grown.upgrade_stored(stored)
    assert upgraded == {"optim": {"lr": 0.2, "momentum": 0.0}, "epochs": 1}
    assert stored == {"optim": {"lr": 0.2}}  # the checkpoint's own dict is left as it was
    assert _Grown.upgrade_stored({"optim": {"momentum": 0.5}, "epochs": 4}) == {"optim": {"momentum": 0.5}, "epochs": 4}
    assert _Grown.upgrade_stored({"epochs": 2}) == {"epochs": 2}  # no section: its keys take today's defaults


def test_an_eval_config_starts_from_the_stored_training_config():
    stored = config_to_dict(parse_config(_Train, ["--epochs", "11", "--optim.lr", "0.3", "--name", "run7"]))
    cfg = parse_eval_config(_Train, stored, ["--optim.momentum", "0.5"])
    assert (cfg.epochs, cfg.optim.lr, cfg.optim.momentum, cfg.name) == (11, 0.3, 0.5, "run7")


@dataclass
class Switches:
    layouts: list[Literal["off", "on"]] | None = None


def test_off_and_on_words_stay_words_where_the_type_says_so():
    """YAML reads a bare off / on as false / true; a Literal["off", "on"] field gets the words back."""
    parse = script_parser(Switches, "switches")
    assert parse(["--layouts", "[off,on]"]).layouts == ["off", "on"]
    assert parse(["--layouts", "on"]).layouts == ["on"]
    with pytest.raises(ConfigError, match="layouts"):
        config_from_dict(Switches, {"layouts": ["maybe"]})


@dataclasses.dataclass
class _Classes:
    classes: list[str] = dataclasses.field(default_factory=lambda: ["bagel"])
    sizes: list[int] = dataclasses.field(default_factory=lambda: [1])


def test_a_list_of_strings_keeps_its_items_as_text():
    """``--classes 001 on bagel`` are names, not YAML numbers or booleans; a list of ints still parses."""
    cfg = parse_config(_Classes, ["--classes", "001", "on", "bagel", "--sizes", "2", "3"])
    assert cfg.classes == ["001", "on", "bagel"] and cfg.sizes == [2, 3]
    cfg = parse_config(_Classes, ["--classes", "[001, on, bagel]", "--sizes", "[2, 3]"])  # the flow form too
    assert cfg.classes == ["001", "on", "bagel"] and cfg.sizes == [2, 3]
