"""Typed, documented configuration.

Every config in dtrl is a dataclass whose fields are declared with :func:`doc`, so each field
carries its documentation next to its default. :func:`from_dict` builds a dataclass from a plain
mapping (a YAML section), rejecting unknown keys and wrong types with one message that names the
key path and what would have been valid, so a typo fails before any compute starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid. The message names the key path and the fix."""


def doc(default: Any, text: str) -> Any:
    """Declare a config field with a default and its documentation.

    Mutable defaults (lists, dicts, dataclass instances) are copied per instance.
    """
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        import copy

        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"doc": text})
    return dataclasses.field(default=default, metadata={"doc": text})


def field_default(f: dataclasses.Field) -> Any:
    """The default a config field takes when it is not given (a fresh copy of a mutable one);
    ``dataclasses.MISSING`` for a field without one."""
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def with_defaults(cls: type, data: Any) -> Any:
    """``data``, a config of ``cls`` as :func:`to_dict` recorded it (perhaps by an older dtrl), with each field it
    lacks set to that field's default, through nested sections too: a field added after the record was made
    defaults to what the record's run computed (a new switch defaults to the old behaviour), so a record made
    before it compares equal to one made after. Anything but a mapping is returned as it is."""
    if not isinstance(data, Mapping) or not dataclasses.is_dataclass(cls):
        return data
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for f in dataclasses.fields(cls):
        if f.name in out:
            out[f.name] = with_defaults(hints.get(f.name), out[f.name])
        elif (default := field_default(f)) is not dataclasses.MISSING:
            out[f.name] = to_dict(default)
    return out


def field_docs(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        out = [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        ktp, vtp = args if args else (Any, Any)
        return {_convert(k, ktp, path): _convert(v, vtp, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads 1e-4 (no dot) as a string; accept numeric strings.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad types raise :class:`ConfigError`."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in data if k not in names]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        where = f"{path}.{k}" if path else str(k)
        raise ConfigError(f"unknown config key '{where}'.{hint} Valid keys here: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{path}.{name}" if path else name)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ConfigError as e:  # name where the section lives (methods.<name>: ...) unless the message does
            msg = str(e)
            if path and not msg.startswith(path):
                raise ConfigError(f"{path}: {msg}") from None
            raise
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data (YAML/JSON-safe) form of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; give a YAML file")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {path}: not valid YAML{where} ({problem}); fix the file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text file; give a YAML config") from None
    if data is None:  # an empty file would otherwise silently mean the built-in defaults
        raise ConfigError(f"config file {path} is empty; give a YAML mapping of config keys (see `dtrl config "
                          "--doc`), or leave --config out to use the built-in defaults")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)
