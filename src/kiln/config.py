"""Typed configs from plain dicts: YAML recipes and dotted command-line overrides, checked key by key.

An unknown key or a value of the wrong type is an error that names the dotted key and suggests close matches.
Each field's doc is the `# comment` trailing its line in the dataclass, read by `field_docs`, so the docs stay
beside the fields and `kiln train --print-config` can show them.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from kiln.errors import KilnError

T = TypeVar("T")


class ConfigKeyError(KilnError):
    """An unknown key, a wrong type, a value out of range or a malformed override, in a recipe or on the command
    line; the CLI prints it as one line."""


OVERRIDE_WORD = re.compile(r"[A-Za-z_]\w*(\.\w+)+=.*", re.DOTALL)  # `trainer.steps=10`: an override missing its --


def require(ok: bool, key: str, value: Any, valid: str) -> None:
    """Refuse `key=value` unless `ok`, saying what would be valid."""
    if not ok:
        raise ConfigKeyError(f"{key}={value!r}: must be {valid}")


def require_positive(section: Any, prefix: str, *names: str) -> None:
    """Each named field must be > 0; None (where the type allows it) means unset and passes."""
    for name in names:
        value = getattr(section, name)
        require(value is None or value > 0, f"{prefix}.{name}", value, "greater than 0")


def require_non_negative(section: Any, prefix: str, *names: str) -> None:
    """Each named field must be >= 0 (for counts and intervals where 0 means off or all); None means unset."""
    for name in names:
        value = getattr(section, name)
        require(value is None or value >= 0, f"{prefix}.{name}", value, "0 or more")


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
    """`--optim.lr=1e-3` or `--optim.lr 1e-3` -> {"optim": {"lr": 0.001}}; values are parsed as YAML.

    A flag followed by another flag has no value (rather than taking the next flag as its value)."""
    result: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            hint = f"; did you mean --{arg}?" if OVERRIDE_WORD.fullmatch(arg) else ""
            raise ConfigKeyError(f"expected an override like --section.key=value, got {arg!r}{hint}")
        if "=" in arg:
            dotted, raw = arg[2:].split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            dotted, raw = arg[2:], args[i + 1]
            i += 1
        else:
            raise ConfigKeyError(f"{arg} has no value; write {arg}=VALUE")
        set_dotted(result, dotted, _parse_value(raw))
        i += 1
    return result


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(other arguments, overrides): take `--section.key=value` and `--section.key value` out of a command line.

    argparse alone would give a separate value ("5" in `--trainer.steps 5`, "-1", "[Hello there]") to the
    recipe positional. Each override comes back as one `--key=value` word; a flag with no value (the end of the
    line or another flag next) stays alone for `parse_overrides` to refuse. Words after `--` are left as they are.
    """
    rest: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        if not (arg.startswith("--") and "." in arg[2:].split("=", 1)[0]):
            rest.append(arg)
        elif "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            overrides.append(f"{arg}={argv[i + 1]}")
            i += 1
        else:
            overrides.append(arg)
        i += 1
    return rest, overrides


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
        hint = f"; did you mean the override --{path}?" if OVERRIDE_WORD.fullmatch(str(path)) else ""
        raise KilnError(f"recipe {path} does not exist{hint}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise KilnError(f"recipe {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise KilnError(f"recipe {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field of dataclass `cls` that has a doc: the `# comment` trailing its line (base classes' included)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_trailing_comments(klass))
    return {f.name: docs[f.name] for f in dataclasses.fields(cls) if f.name in docs}


def _trailing_comments(cls: type) -> dict[str, str]:
    """{field: comment} for annotated lines `name: type = default  # comment` directly in the class body."""
    tokens = list(tokenize.generate_tokens(io.StringIO(textwrap.dedent(inspect.getsource(cls))).readline))
    docs: dict[str, str] = {}
    depth, line_start, name = 0, True, None
    for tok, following in zip(tokens, tokens[1:]):
        if tok.type == tokenize.COMMENT and name:
            docs[name] = f"{docs.get(name, '')} {tok.string.lstrip('#').strip()}".strip()
        elif line_start and depth == 1 and tok.type == tokenize.NAME and following.string == ":":
            name = tok.string
        depth += {tokenize.INDENT: 1, tokenize.DEDENT: -1}.get(tok.type, 0)
        if tok.type == tokenize.NEWLINE:
            name = None
        if tok.type not in (tokenize.COMMENT, tokenize.NL):
            line_start = tok.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    return docs


def documented_rows(section: Any) -> list[tuple[str, Any, str]]:
    """(key, plain value, doc) of each field of a dataclass instance, in declaration order."""
    docs = field_docs(type(section))
    return [(f.name, to_dict(getattr(section, f.name)), docs.get(f.name, "")) for f in dataclasses.fields(section)]


def commented_section(name: str, doc: str, rows: list[tuple[str | None, Any, str]]) -> list[str]:
    """YAML lines `name:` then `  key: value  # doc`, the comments aligned; a row with key None is a comment line."""
    lines = [f"{name}:" + (f"  # {doc}" if doc else "")]
    cells = [(f"  {key}: {yaml_value(value)}" if key is not None else f"  # {value}", doc) for key, value, doc in rows]
    width = max(len(cell) for cell, _ in cells) + 2
    return lines + [f"{cell:<{width}}# {doc}" if doc else cell for cell, doc in cells]


def yaml_value(value: Any) -> str:
    """One value as YAML on one line (flow style for lists and mappings)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()
