"""One configuration file per process, validated at start-up into a frozen dataclass.

Every field of the dataclass is a key of the YAML file; nested dataclasses are nested
mappings. Any key may be overridden by an environment variable named after its path:
`JURISFED_<PREFIX>_<FIELD>[_<NESTED FIELD>]`, upper case (e.g. JURISFED_REGIONAL_LISTEN,
JURISFED_GLOBAL_TRAINING_EPOCHS). Unknown keys, missing required keys and values of the
wrong type are ConfigErrors that name the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from jurisfed.errors import ConfigError, InvalidInput

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def setting(help: str, default: Any = dataclasses.MISSING) -> Any:
    """A config field with the sentence `--help` and the configuration reference show for it."""
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def load_config(cls: type[T], path: Path | None, *, env_prefix: str, environ: Mapping[str, str]) -> T:
    """Read `path` (YAML; None means defaults only), apply environment overrides, validate."""
    raw: object = {}
    if path is not None:
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except OSError as error:
            raise ConfigError(f"cannot read config file {path}: {error.strerror}") from error
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    base = path.parent if path is not None else Path.cwd()
    prefix = f"JURISFED_{env_prefix.upper()}"
    known = set(_env_names(cls, prefix))
    misspelt = sorted(name for name in environ if name.startswith(prefix + "_") and name not in known)
    if misspelt:
        raise ConfigError(f"unknown environment variable(s) {', '.join(misspelt)}; known: {sorted(known)}")
    return _build(cls, raw, prefix, environ, "", base)


def config_from_mapping(cls: type[T], raw: Mapping[str, Any], *, base: Path | None = None) -> T:
    """Validate a mapping already parsed (from JSON, say) into `cls`, with the same checks and
    key-naming errors as `load_config` and no environment overrides. Relative paths are taken
    from `base` (default: the working directory)."""
    return _build(cls, dict(raw), "JURISFED", {}, "", base if base is not None else Path.cwd())


def config_from_json(cls: type[T], data: bytes, *, what: str) -> T:
    """`config_from_mapping` of a JSON object a peer sent, `what` naming it in the
    InvalidInput (never ConfigError: the bad input is the peer's, not this node's config)."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInput(f"{what} is not UTF-8 JSON: {error}") from None
    if not isinstance(raw, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    try:
        return config_from_mapping(cls, raw)
    except ConfigError as error:
        raise InvalidInput(f"{what} is invalid: {error}") from None


def _env_names(cls: type[Any], prefix: str) -> list[str]:
    """Every environment variable that overrides a key of `cls`."""
    hints = typing.get_type_hints(cls)
    names: list[str] = []
    for field in dataclasses.fields(cls):
        name = f"{prefix}_{field.name.upper()}"
        nested = hints[field.name]
        names += (
            _env_names(nested, name)
            if isinstance(nested, type) and dataclasses.is_dataclass(nested)
            else [name]
        )
    return names


def _build(
    cls: type[T], raw: dict[str, Any], env_key: str, environ: Mapping[str, str], where: str, base: Path
) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; known: {sorted(fields)}"
        )
    values: dict[str, Any] = {}
    for name, field in fields.items():
        key = f"{where}{name}"
        field_type = hints[name]
        var = f"{env_key}_{name.upper()}"
        if dataclasses.is_dataclass(field_type):
            nested = raw.get(name, {})
            if not isinstance(nested, dict):
                raise ConfigError(f"config key {key} must be a mapping")
            values[name] = _build(field_type, nested, var, environ, f"{key}.", base)  # type: ignore[arg-type]
        elif var in environ:
            values[name] = _parse(field_type, environ[var], f"{key} (from ${var})", base)
        elif name in raw:
            values[name] = _parse(field_type, raw[name], key, base)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config key {key} is required (or set ${var})")
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"invalid configuration{' in ' + where.rstrip('.') if where else ''}: {error}"
        ) from error


def _parse(field_type: Any, value: Any, key: str, base: Path) -> Any:
    origin = typing.get_origin(field_type)
    if origin in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(field_type) if t is not type(None)]
        if value is None or value == "":
            return None
        return _parse(options[0], value, key, base)
    if origin is tuple:
        (item_type, _) = typing.get_args(field_type)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"config key {key} must be a list")
        return tuple(
            _parse(item_type, item.strip() if isinstance(item, str) else item, key, base) for item in items
        )
    if field_type is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in _TRUE | _FALSE:
            return str(value).lower() in _TRUE
        raise ConfigError(f"config key {key} must be true or false, not {value!r}")
    if field_type is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config key {key} must be a path, not {value!r}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path
    if field_type is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"config key {key} must be a string, not {value!r}")
        return str(value)
    if field_type in (int, float):
        return _number(field_type, value, key)
    raise ConfigError(f"config key {key} has an unsupported type {field_type}")


def _number(kind: type[int] | type[float], value: Any, key: str) -> int | float:
    """An int or float from YAML or an environment string; 2.5 is no int, and True no number."""
    wrong = ConfigError(
        f"config key {key} must be {'an integer' if kind is int else 'a number'}, not {value!r}"
    )
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise wrong
    try:
        number = float(value) if kind is float else _whole(value)
    except ValueError:
        raise wrong from None
    return number


def _whole(value: str | int | float) -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    return int(value)


def describe(cls: type[Any], env_prefix: str) -> str:
    """A plain listing of every key, its type, default and environment variable, for --help."""
    lines: list[str] = []

    def walk(kind: type[Any], where: str, var: str) -> None:
        hints = typing.get_type_hints(kind)
        for field in dataclasses.fields(kind):
            field_type = hints[field.name]
            key, env = f"{where}{field.name}", f"{var}_{field.name.upper()}"
            if dataclasses.is_dataclass(field_type):
                if field.metadata.get("help"):
                    lines.append(f"  {key}: {field.metadata['help']}")
                walk(field_type, f"{key}.", env)  # type: ignore[arg-type]
                continue
            if field.default is not dataclasses.MISSING:
                default = f"default {field.default!r}"
            elif field.default_factory is not dataclasses.MISSING:
                default = f"default {field.default_factory()!r}"
            else:
                default = "required"
            type_name = _type_name(field_type)
            lines.append(f"  {key} ({type_name}, {default}; ${env})")
            if field.metadata.get("help"):
                lines.append(f"      {field.metadata['help']}")

    walk(cls, "", f"JURISFED_{env_prefix.upper()}")
    return "\n".join(lines)


def _type_name(field_type: Any) -> str:
    """'int', 'Path', 'Path, optional', 'tuple of str' — for people, not for Python."""
    arguments = [t for t in typing.get_args(field_type) if t is not type(None) and t is not Ellipsis]
    if typing.get_origin(field_type) in (typing.Union, types.UnionType):
        return f"{_type_name(arguments[0])}, optional"
    if typing.get_origin(field_type) is tuple:
        return f"tuple of {_type_name(arguments[0])}"
    return str(getattr(field_type, "__name__", field_type))
