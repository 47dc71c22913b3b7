"""Configuration files: a YAML file plus environment overrides becomes one frozen, validated
object, and every mistake an operator can make is a ConfigError that names the key."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from global_agg.config import GlobalConfig
from jurisfed.auth.pki import TlsFiles
from jurisfed.config import describe, load_config, setting
from jurisfed.errors import ConfigError
from regional.config import RegionalConfig
from silo.config import SiloConfig


@dataclass(frozen=True)
class Limits:
    max_bytes: int = setting("largest message accepted", 1024)
    strict: bool = setting("refuse peers the policy does not name", True)


@dataclass(frozen=True)
class NodeConfig:
    name: str = setting("name of the node")
    data_dir: Path = setting("where the node keeps its data")
    limits: Limits = setting("limits on what peers may send")
    ratio: float = setting("share of the data held out", 0.25)
    peers: tuple[str, ...] = setting("host:port of each peer", ())
    ports: tuple[int, ...] = setting("ports to probe", (1, 2))
    log_file: Path | None = setting("optional log file", None)

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise ValueError("ratio must be in [0, 1)")


TLS_YAML = "tls:\n  ca_cert: pki/ca.crt\n  cert: pki/tls.crt\n  key: pki/tls.key\n"


def write(directory: Path, text: str, name: str = "node.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def load(path: Path | None, environ: dict[str, str] | None = None) -> NodeConfig:
    return load_config(NodeConfig, path, env_prefix="node", environ=environ or {})


# --- values --------------------------------------------------------------------------------


def test_yaml_values_and_nested_mappings_fill_a_frozen_object(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "name: hospital-a\n"
        "data_dir: /srv/data\n"
        "ratio: 0.5\n"
        "peers: [eu.example:443, us.example:443]\n"
        "limits:\n"
        "  max_bytes: 4096\n"
        "  strict: false\n",
    )
    config = load(path)
    assert config == NodeConfig(
        name="hospital-a",
        data_dir=Path("/srv/data"),
        limits=Limits(max_bytes=4096, strict=False),
        ratio=0.5,
        peers=("eu.example:443", "us.example:443"),
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"  # type: ignore[misc]


def test_keys_left_out_take_their_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, "name: a\ndata_dir: /d\n"))
    assert config.limits == Limits()
    assert (config.ratio, config.peers, config.ports, config.log_file) == (0.25, (), (1, 2), None)


def test_without_a_file_every_value_comes_from_defaults_and_environment() -> None:
    config = load(None, {"JURISFED_NODE_NAME": "b", "JURISFED_NODE_DATA_DIR": "/d"})
    assert (config.name, config.data_dir) == ("b", Path("/d"))


def test_an_empty_file_means_defaults(tmp_path: Path) -> None:
    config = load_config(Limits, write(tmp_path, ""), env_prefix="limits", environ={})
    assert config == Limits()


def test_relative_paths_are_resolved_against_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not where the file is: the file's directory must win
    path = write(tmp_path / "etc" / "jurisfed", "name: a\ndata_dir: data/silo\nlog_file: ../logs/a.log\n")
    config = load(path)
    assert config.data_dir == tmp_path / "etc" / "jurisfed" / "data" / "silo"
    assert config.log_file == tmp_path / "etc" / "jurisfed" / ".." / "logs" / "a.log"


def test_absolute_and_home_paths_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = load(write(tmp_path, "name: a\ndata_dir: ~/data\nlog_file: /var/log/a.log\n"))
    assert config.data_dir == tmp_path / "home" / "data"
    assert config.log_file == Path("/var/log/a.log")


POLICY_YAML = "policy: eu.yaml\npolicy_keys: keys\n"
TOKEN_YAML = "token:\n  key: node.key\n  kid: node-1\n"
SERVER_YAML = "token_keys: token-keys\ncrl: crl.pem\n"


def test_the_real_configs_load_from_yaml(tmp_path: Path) -> None:
    regional = load_config(
        RegionalConfig,
        write(
            tmp_path,
            "jurisdiction: EU\nglobal_address: global.example:50051\nstate_dir: state\n"
            + POLICY_YAML
            + TOKEN_YAML
            + SERVER_YAML
            + TLS_YAML,
            "regional.yaml",
        ),
        env_prefix="regional",
        environ={},
    )
    assert regional.tls == TlsFiles(
        tmp_path / "pki/ca.crt", tmp_path / "pki/tls.crt", tmp_path / "pki/tls.key"
    )
    assert (regional.jurisdiction, regional.state_dir, regional.min_silos) == ("EU", tmp_path / "state", 2)
    assert (regional.policy, regional.policy_keys) == (tmp_path / "eu.yaml", tmp_path / "keys")
    assert (regional.token.key, regional.token.kid, regional.crl) == (
        tmp_path / "node.key",
        "node-1",
        tmp_path / "crl.pem",
    )

    silo = load_config(
        SiloConfig,
        write(
            tmp_path,
            "jurisdiction: EU\nregional_address: localhost:50061\ndata: data.npz\nseed: 7\n"
            + "state_dir: silo-state\n"
            + POLICY_YAML
            + TOKEN_YAML
            + TLS_YAML,
            "silo.yaml",
        ),
        env_prefix="silo",
        environ={},
    )
    assert (silo.data, silo.seed, silo.connect_timeout_s) == (tmp_path / "data.npz", 7, 120.0)


# --- environment overrides -----------------------------------------------------------------


def test_environment_variables_override_the_file_also_in_nested_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\ndata_dir: /d\nratio: 0.5\nlimits:\n  max_bytes: 10\n")
    config = load(
        path,
        {
            "JURISFED_NODE_NAME": "from-env",
            "JURISFED_NODE_RATIO": "0.75",
            "JURISFED_NODE_LIMITS_MAX_BYTES": "2048",
            "JURISFED_NODE_LIMITS_STRICT": "no",
            "JURISFED_OTHER_NAME": "ignored: another prefix",
        },
    )
    assert (config.name, config.ratio) == ("from-env", 0.75)
    assert config.limits == Limits(max_bytes=2048, strict=False)


def test_the_global_training_epochs_can_be_overridden_from_the_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "state_dir: state\ntraining:\n  epochs: 3\n  batch_size: 8\n"
        + POLICY_YAML
        + "member_policies: [eu.yaml, us.yaml]\n"
        + SERVER_YAML
        + TLS_YAML,
    )
    config = load_config(
        GlobalConfig, path, env_prefix="global", environ={"JURISFED_GLOBAL_TRAINING_EPOCHS": "5"}
    )
    assert (config.training.epochs, config.training.batch_size) == (5, 8)
    assert config.member_policies == (tmp_path / "eu.yaml", tmp_path / "us.yaml")


def test_an_empty_environment_variable_clears_an_optional_value(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\ndata_dir: /d\nlog_file: a.log\n")
    assert load(path, {"JURISFED_NODE_LOG_FILE": ""}).log_file is None


# --- booleans and lists --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("True", True),
        ("yes", True),
        ("on", True),
        ("1", True),
        ("false", False),
        ("FALSE", False),
        ("no", False),
        ("off", False),
        ("0", False),
    ],
)
def test_booleans_read_the_usual_words(text: str, expected: bool) -> None:
    from_env = load_config(Limits, None, env_prefix="x", environ={"JURISFED_X_STRICT": text})
    assert from_env.strict is expected


def test_yaml_booleans_are_booleans(tmp_path: Path) -> None:
    config = load_config(Limits, write(tmp_path, "strict: false\n"), env_prefix="x", environ={})
    assert config.strict is False


@pytest.mark.parametrize("text", ["maybe", "2", "enabled"])
def test_anything_else_is_not_a_boolean(text: str) -> None:
    with pytest.raises(ConfigError, match=r"strict \(from \$JURISFED_X_STRICT\) must be true or false"):
        load_config(Limits, None, env_prefix="x", environ={"JURISFED_X_STRICT": text})


def test_lists_come_from_yaml_sequences_or_comma_separated_variables(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\ndata_dir: /d\npeers:\n  - a:1\n  - b:2\nports: [80, 443]\n")
    assert load(path).peers == ("a:1", "b:2")
    assert load(path).ports == (80, 443)
    overridden = load(path, {"JURISFED_NODE_PEERS": "x:1, y:2 ,z:3", "JURISFED_NODE_PORTS": "8080, 9090"})
    assert overridden.peers == ("x:1", "y:2", "z:3")
    assert overridden.ports == (8080, 9090)


def test_a_list_item_of_the_wrong_type_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ports must be an integer, not 'http'"):
        load(write(tmp_path, "name: a\ndata_dir: /d\nports: [80, http]\n"))


def test_a_scalar_where_a_list_belongs_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config key ports must be a list"):
        load(write(tmp_path, "name: a\ndata_dir: /d\nports: 80\n"))


# --- mistakes ------------------------------------------------------------------------------


def test_an_unknown_key_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) nmae") as refused:
        load(write(tmp_path, "nmae: a\ndata_dir: /d\n"))
    assert "name" in str(refused.value)  # the known keys are listed, so the typo is easy to spot


def test_an_unknown_nested_key_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) limits\.max_byte\b"):
        load(write(tmp_path, "name: a\ndata_dir: /d\nlimits:\n  max_byte: 1\n"))


def test_a_missing_required_key_names_the_key_and_its_environment_variable(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"config key data_dir is required \(or set \$JURISFED_NODE_DATA_DIR\)"
    ):
        load(write(tmp_path, "name: a\n"))


def test_a_missing_nested_key_of_a_real_config_names_its_variable(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "jurisdiction: EU\nglobal_address: g:1\nstate_dir: s\ntls:\n  ca_cert: ca.crt\n  key: tls.key\n",
    )
    with pytest.raises(
        ConfigError, match=r"config key tls\.cert is required \(or set \$JURISFED_REGIONAL_TLS_CERT\)"
    ):
        load_config(RegionalConfig, path, env_prefix="regional", environ={})


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"ratio": "fast"}, "config key ratio must be a number, not 'fast'"),
        ({"limits": {"max_bytes": "lots"}}, "config key limits.max_bytes must be an integer, not 'lots'"),
        ({"limits": {"max_bytes": True}}, "config key limits.max_bytes must be an integer, not True"),
        ({"name": ["a", "b"]}, "config key name must be a str"),
        ({"limits": 5}, "config key limits must be a mapping"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_by_name(
    tmp_path: Path, override: dict[str, object], words: str
) -> None:
    path = write(tmp_path, yaml.safe_dump({"name": "a", "data_dir": "/d", **override}))
    with pytest.raises(ConfigError, match=re.escape(words)):
        load(path)


def test_a_wrong_type_from_the_environment_names_the_variable() -> None:
    with pytest.raises(
        ConfigError, match=r"limits\.max_bytes \(from \$JURISFED_X_LIMITS_MAX_BYTES\) must be an integer"
    ):
        load_config(
            NodeConfig,
            None,
            env_prefix="x",
            environ={
                "JURISFED_X_NAME": "a",
                "JURISFED_X_DATA_DIR": "/d",
                "JURISFED_X_LIMITS_MAX_BYTES": "2.5",
            },
        )


def test_a_fractional_number_for_an_integer_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_bytes"):
        load(write(tmp_path, "name: a\ndata_dir: /d\nlimits: {max_bytes: 2.5}\n"))


def test_a_list_for_a_number_key_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ratio"):
        load(write(tmp_path, "name: a\ndata_dir: /d\nratio: [0.5]\n"))


def test_values_the_dataclass_itself_refuses_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid configuration: ratio must be in \[0, 1\)"):
        load(write(tmp_path, "name: a\ndata_dir: /d\nratio: 1.5\n"))
    path = write(
        tmp_path,
        "state_dir: s\nrounds: -1\nmember_policies: [eu.yaml]\n" + POLICY_YAML + SERVER_YAML + TLS_YAML,
        "global.yaml",
    )
    with pytest.raises(ConfigError, match="rounds must not be negative"):
        load_config(GlobalConfig, path, env_prefix="global", environ={})


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load(write(tmp_path, "name: [a\ndata_dir: /d\n"))


@pytest.mark.parametrize("text", ["- name: a\n- data_dir: /d\n", "just a sentence\n", "42\n"])
def test_a_file_that_is_not_a_mapping_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="must hold a mapping of keys to values"):
        load(write(tmp_path, text))


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*absent\.yaml"):
        load(tmp_path / "absent.yaml")


# --- describe ------------------------------------------------------------------------------


def test_describe_lists_every_key_with_type_default_variable_and_help() -> None:
    text = describe(NodeConfig, "node")
    for line in [
        "  name (str, required; $JURISFED_NODE_NAME)",
        "      name of the node",
        "  data_dir (Path, required; $JURISFED_NODE_DATA_DIR)",
        "  limits.max_bytes (int, default 1024; $JURISFED_NODE_LIMITS_MAX_BYTES)",
        "      largest message accepted",
        "  limits.strict (bool, default True; $JURISFED_NODE_LIMITS_STRICT)",
        "      refuse peers the policy does not name",
        "  ratio (float, default 0.25; $JURISFED_NODE_RATIO)",
        "      share of the data held out",
        "      host:port of each peer",
        "      optional log file",
    ]:
        assert line in text.splitlines()
    for key, var in [("peers", "PEERS"), ("ports", "PORTS"), ("log_file", "LOG_FILE")]:
        assert re.search(rf"^  {key} \(.*; \$JURISFED_NODE_{var}\)$", text, re.MULTILINE)


def test_describe_shows_the_help_of_a_nested_section() -> None:
    assert "limits on what peers may send" in describe(NodeConfig, "node")


@pytest.mark.parametrize(
    ("cls", "prefix"), [(GlobalConfig, "global"), (RegionalConfig, "regional"), (SiloConfig, "silo")]
)
def test_describe_covers_every_key_of_the_real_configs(cls: type, prefix: str) -> None:
    lines = describe(cls, prefix).splitlines()
    keys = leaf_keys(cls)
    assert len(keys) >= 6
    for key, help_text in keys:
        var = f"$JURISFED_{prefix.upper()}_{key.replace('.', '_').upper()}"
        [position] = [
            i
            for i, line in enumerate(lines)
            if re.fullmatch(rf"  {re.escape(key)} \(.*; {re.escape(var)}\)", line)
        ]
        if help_text:
            assert lines[position + 1] == f"      {help_text}"


def leaf_keys(cls: type, where: str = "") -> list[tuple[str, str]]:
    """(dotted key, help text) of every scalar setting, nested dataclasses walked into."""
    hints = typing.get_type_hints(cls)
    keys: list[tuple[str, str]] = []
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            keys += leaf_keys(kind, f"{where}{field.name}.")  # type: ignore[arg-type]
        else:
            keys.append((f"{where}{field.name}", field.metadata.get("help", "")))
    return keys
