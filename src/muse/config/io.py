"""Nested dicts (YAML, CLI overrides) to config dataclasses and back.

Generic over any dataclass so that each section's fields are the single source of the valid keys
and their types: unknown keys are refused with the valid ones listed, values are checked against
the field's annotation, and :func:`flat_keys` gives the dotted keys the CLI is derived from.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from typing import Any

from .checks import ConfigError


def _unwrap_optional(tp):
    """``int | None`` -> (int, True); other types -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(path: str, tp, value):
    """Check a YAML/CLI value against a field type (ints stay ints; bools are not ints)."""
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path} may not be null")
    if dataclasses.is_dataclass(base):
        return from_dict(base, value, path)
    if typing.get_origin(base) in (typing.Union, types.UnionType):  # e.g. bool | str: the first that fits
        for member in typing.get_args(base):
            try:
                return _coerce(path, member, value)
            except ConfigError:
                pass
        names = " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(base))
        raise ConfigError(f"{path} must be of type {names}; got {value!r}")
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif base is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        if isinstance(value, (list, tuple)):
            return [_coerce(f"{path}[{i}]", item, v) for i, v in enumerate(value)]
    else:  # pragma: no cover - only reached if a new field type is added without support here
        raise ConfigError(f"{path}: unsupported field type {tp!r}")
    raise ConfigError(f"{path} must be of type {getattr(base, '__name__', base)}; got {value!r}")


def from_dict(cls, data: Any, path: str = ""):
    """Build dataclass ``cls`` from a nested dict; unknown keys name the valid ones."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__} must be a mapping; got {data!r}")
    hints = field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {where!r}; valid keys{' under ' + path if path else ''}: {', '.join(names)}")
        kwargs[key] = _coerce(where, hints[key], value)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{path or cls.__name__}: {e}") from None


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict (``to_dict``) as {dotted key: value}."""
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def flat_keys(cls, prefix: str = "") -> dict[str, Any]:
    """All leaf keys of a dataclass as dotted paths -> type (used to derive the CLI)."""
    out = {}
    for f in dataclasses.fields(cls):
        tp = field_types(cls)[f.name]
        base, _ = _unwrap_optional(tp)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(base):
            out.update(flat_keys(base, key + "."))
        else:
            out[key] = tp
    return out


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def set_dotted(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value
