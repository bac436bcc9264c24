"""Typed configs from plain dicts: YAML recipes and dotted command-line overrides, checked key by key.

An unknown key or a value of the wrong type is an error that names the dotted key and suggests close matches.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from kiln.errors import KilnError

T = TypeVar("T")


class ConfigKeyError(KilnError):
    """An unknown key, a wrong type or a malformed override in a recipe or on the command line."""


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from `data`, recursing into nested dataclasses and checking every value's type."""
    if not isinstance(data, dict):
        raise ConfigKeyError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigKeyError(f"unknown key {prefix}{key}{_suggest(key, fields, prefix)}")
    values = {key: _coerce(hints[key], value, f"{prefix}{key}") for key, value in data.items()}
    return cls(**values)


def _suggest(key: str, known: typing.Iterable[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(prefix + c for c in close)}?" if close else f"; valid keys: {', '.join(known)}"


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check `value` against the type hint, converting only where lossless (int -> float, list -> tuple)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigKeyError as err:
                errors.append(str(err))
        raise ConfigKeyError(errors[0] if len(errors) == 1 else f"{key}={value!r} matches none of {hint}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key + ".")
    if origin is Literal:
        if value not in args:
            raise ConfigKeyError(f"{key}={value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigKeyError(f"{key} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigKeyError(f"{key} must have {len(args)} items, got {value!r}")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        item = args[0] if args else Any
        return origin(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigKeyError(f"{key} must be a mapping, got {value!r}")
        return value
    return _coerce_scalar(hint, value, key)


def _coerce_scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is Any:
        return value
    if hint in (float, int) and isinstance(value, str):
        value = _number_from_text(value, hint, key)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigKeyError(f"{key} must be true or false, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ConfigKeyError(f"{key} must be an integer, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigKeyError(f"{key} must be of type {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _number_from_text(text: str, hint: type, key: str) -> Any:
    """YAML 1.1 reads `1e-3` (no dot) as a string, in recipes and overrides alike; take it as the number it spells.

    An int field accepts such text only when it spells a whole number (`1e3`)."""
    try:
        number = float(text)
    except ValueError:
        return text  # not a number: the type check that follows names the key
    if hint is int:
        return int(number) if number.is_integer() else text
    return number


def to_dict(obj: Any) -> Any:
    """A dataclass as plain YAML-safe data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`--optim.lr=1e-3` or `--optim.lr 1e-3` -> {"optim": {"lr": 0.001}}; values are parsed as YAML."""
    result: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigKeyError(f"expected an override like --section.key=value, got {arg!r}")
        if "=" in arg:
            dotted, raw = arg[2:].split("=", 1)
        elif i + 1 < len(args):
            dotted, raw = arg[2:], args[i + 1]
            i += 1
        else:
            raise ConfigKeyError(f"override {arg} has no value")
        set_dotted(result, dotted, _parse_value(raw))
        i += 1
    return result


def _parse_value(raw: str) -> Any:
    """A YAML value, as a recipe would hold it; numbers that YAML 1.1 leaves as text are converted by the type check."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = target.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigKeyError(f"cannot set {dotted}: {part} is not a section")
        target = node
    target[leaf] = value


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `update` wins."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KilnError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise KilnError(f"recipe {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise KilnError(f"recipe {path} must hold a mapping of sections, got {type(data).__name__}")
    return data
