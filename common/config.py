"""Loading typed configuration: a TOML file, then environment overrides, then command-line overrides.

Every leaf field of a config model can be overridden by an environment variable named after its path:
PREFIX_SECTION_FIELD in capitals (mqtt.tls.ca_file -> DCEM_AGENT_MQTT_TLS_CA_FILE for prefix DCEM_AGENT).
A bad value stops the program with ConfigError naming the field and where the value came from.
"""

from __future__ import annotations

import json
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


def toml_text(data: Mapping[str, Any]) -> str:
    """A config mapping as TOML, for the files the product writes for its own programs: top-level keys, then
    [tables], then [[arrays of tables]], one level deep. Values are strings, numbers, booleans, paths or lists
    of these (a JSON string, number, boolean or array of them is a valid TOML value)."""
    lines = [_toml_pair(key, value) for key, value in data.items() if not _is_tables(value)]
    for name, value in data.items():
        tables = [value] if isinstance(value, dict) else value if _is_tables(value) else []
        for table in tables:
            lines += ["", f"[{name}]" if isinstance(value, dict) else f"[[{name}]]",
                      *(_toml_pair(key, item) for key, item in table.items())]
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_tables(value: Any) -> bool:
    """A table, or an array of tables."""
    return isinstance(value, dict) or (isinstance(value, list) and bool(value) and isinstance(value[0], dict))


def _toml_pair(key: str, value: Any) -> str:
    plain = [str(v) if isinstance(v, Path) else v for v in value] if isinstance(value, list) else value
    return f"{key} = {json.dumps(str(plain) if isinstance(plain, Path) else plain)}"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the field and why."""


def load(model: type[Model], path: Path | None, env_prefix: str, environ: Mapping[str, str],
         overrides: Mapping[str, Any] | None = None) -> Model:
    """Build `model` from a TOML file (optional), environment variables and dotted-path overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    sources: dict[str, str] = {}
    for dotted, value in env_overrides(model, env_prefix, environ).items():
        set_path(data, dotted, value)
        sources[dotted] = f"from environment variable {env_name(env_prefix, dotted)}"
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_path(data, dotted, value)
            sources[dotted] = "from the command line"
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(exc, f"in {path}" if path else "", sources)) from None


def describe(exc: ValidationError, file_source: str, sources: Mapping[str, str]) -> str:
    """One line per invalid field: 'config field a.b (where it was set): why (got value)'.

    Values are shown only for known fields that are not secrets, so a mistyped 'passwd' key never
    echoes the password into a log.
    """
    lines = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "(top level)"
        source = _source_of(field, sources) or file_source
        got = f" (got {error['input']!r})" if _safe_to_show(field, error) else ""
        lines.append(f"config field {field}{' ' + source if source else ''}: {error['msg']}{got}")
    return "\n".join(lines)


def _safe_to_show(field: str, error: Mapping[str, Any]) -> bool:
    """Only plain values of known, non-secret fields; never a whole section (it may hold a secret)."""
    if error["type"] in ("missing", "extra_forbidden") or not isinstance(error.get("input"), (str, int, float, bool)):
        return False
    return not any(word in field for word in ("password", "token", "secret", "url"))


def _source_of(field: str, sources: Mapping[str, str]) -> str | None:
    matches = [dotted for dotted in sources if field == dotted or field.startswith(dotted + ".")]
    return sources[max(matches, key=len)] if matches else None


def env_name(prefix: str, dotted: str) -> str:
    """The environment variable that overrides a dotted field path."""
    return f"{prefix}_{dotted.replace('.', '_')}".upper()


def env_overrides(model: type[BaseModel], prefix: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The dotted field paths set by environment variables, with their (string) values."""
    found = {}
    for dotted in leaf_paths(model):
        name = env_name(prefix, dotted)
        if name in environ:
            found[dotted] = environ[name]
    return found


def leaf_paths(model: type[BaseModel], parent: str = "") -> list[str]:
    """Dotted paths of every non-model field, nested models included."""
    paths = []
    for name, field in model.model_fields.items():
        dotted = f"{parent}{name}"
        nested = _model_in(field.annotation)
        paths += leaf_paths(nested, dotted + ".") if nested else [dotted]
    return paths


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def check_timezone(value: str) -> str:
    """value if it names an IANA time zone, else ValueError saying so."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Asia/Shanghai)") from None
    return value


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """data['a']['b'] = value for dotted 'a.b', creating the sections on the way."""
    *sections, leaf = dotted.split(".")
    for section in sections:
        data = data.setdefault(section, {})
    data[leaf] = value
