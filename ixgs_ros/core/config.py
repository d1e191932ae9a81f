"""Typed configuration objects from untyped data: nested dataclasses filled from dicts, YAML/JSON files and
``key=value`` overrides, every value checked against the field's annotation.

One place for what the CLI (``--config``, ``--engine KEY=VALUE``), the ROS nodes (``engine_config``,
``engine_overrides``) and the experiments all do, so that a typo fails at start with the key's dotted path,
not in the middle of a reconstruction.

Accepted annotations: ``int``, ``float`` (an int is accepted and converted), ``bool`` (only a bool), ``str``,
``None`` in a union (``float | None``), ``typing.Literal[...]`` (one of its values) and nested dataclasses.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Literal, Union

__all__ = ["ConfigError", "from_mapping", "to_mapping", "flatten", "set_dotted", "parse_overrides", "read_file"]


class ConfigError(ValueError):
    """A configuration value of the wrong type, an unknown key or an unreadable configuration file."""


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check(value, hint, where: str):
    """``value`` converted to what ``hint`` allows, or ConfigError naming ``where``."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {hint.__name__} fields, got {value!r}")
        return from_mapping(hint, value, where)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin is Union or type(hint).__name__ == "UnionType":
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, where)
            except ConfigError as exc:
                errors.append(str(exc))
        names = " | ".join("None" if a is type(None) else getattr(a, "__name__", str(a)) for a in args)
        raise ConfigError(f"{where} must be {names}, got {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value  # an annotation this module does not check: the dataclass's own validation decides


def from_mapping(cls, data: dict, where: str = ""):
    """An instance of dataclass ``cls`` from ``data`` (nested dicts for nested dataclasses); missing fields keep
    their defaults, unknown keys and wrongly typed values raise :class:`ConfigError` naming the dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        path = f"{where}." if where else ""
        raise ConfigError(f"unknown configuration key(s) {', '.join(path + k for k in unknown)}; known: "
                          f"{', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _check(value, hints[name], f"{where}.{name}" if where else name)
    return cls(**kwargs)


def to_mapping(obj) -> dict:
    """A dataclass instance as nested plain dicts (JSON-ready)."""
    return dataclasses.asdict(obj)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b": value}``."""
    out = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(data: dict, key: str, value) -> None:
    """``data["a"]["b"] = value`` for ``key = "a.b"``, creating the intermediate dicts."""
    parts = key.split(".")
    d = data
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{key}: {p} is a value, not a section")
        d = nxt
    d[parts[-1]] = value


def parse_overrides(items, what: str = "override") -> dict[str, Any]:
    """``KEY=VALUE`` strings as ``{KEY: value}``: values parsed as JSON (numbers, true/false, null, lists),
    else kept as strings; blank items are ignored."""
    out = {}
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what}: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def read_file(path, section: str | None = None) -> dict:
    """A YAML (``.yaml``/``.yml``, safe loader) or JSON file as a dict; with ``section``, that top-level key's
    mapping when the file has it (e.g. ``engine:``), else the whole file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml.YAMLError, json.JSONDecodeError: one clear line
        raise ConfigError(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: {exc}") \
            from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    if section and isinstance(data.get(section), dict):
        return data[section]
    return data
