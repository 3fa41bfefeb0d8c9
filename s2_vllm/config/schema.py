"""The config schema's machinery: a key is a dataclass field whose metadata holds a `Key`.

Its type comes from the field's annotation, its default from the field, and everything else
(documentation, choices, range, where it sits in the fingerprint) from the `Key`. One
function, `check_value`, judges every value, whether it came from a TOML file, a flag or code.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from s2_vllm.errors import ConfigError

_NO_DEFAULT = dataclasses.MISSING


@dataclass(frozen=True)
class Key:
    doc: str
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    above: bool = False  # min itself is not allowed: (min, max]
    pattern: str | None = None  # a string value must match it whole
    expect: str | None = None  # what the pattern accepts, in words, for the message and the docs
    fp: str | None = None  # its name in the checkpoint's fingerprint; None = not fingerprinted
    fp_if_set: bool = False  # fingerprinted only when not at its default (added later; old checkpoints resume)
    default_doc: str | None = None  # the default in words, when the value alone says too little


def key(default: Any = _NO_DEFAULT, doc: str = "", *, factory: Any = _NO_DEFAULT, **meta: Any) -> Any:
    """A config key: a dataclass field with its `Key`."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"key": Key(doc, **meta)})


@dataclass(frozen=True)
class Spec:
    """One key of one table, as the checks and the docs see it."""

    table: str
    name: str
    base: type  # bool, int, float, str, list (of strings) or dict (a table)
    optional: bool
    meta: Key
    field: dataclasses.Field

    @property
    def path(self) -> str:
        return f"{self.table}.{self.name}"

    @property
    def default(self) -> Any:
        f = self.field
        return f.default_factory() if f.default_factory is not _NO_DEFAULT else f.default


@functools.cache
def specs(cls: type, table: str) -> dict[str, Spec]:
    """The keys of a table class, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if "key" not in f.metadata:
            continue
        base, optional = _unwrap(hints[f.name])
        out[f.name] = Spec(table, f.name, base, optional, f.metadata["key"], f)
    return out


def _unwrap(hint: Any) -> tuple[type, bool]:
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        return _unwrap(rest[0])[0], True
    return (typing.get_origin(hint) or hint), False


_WORDS = {bool: "bool", int: "int", float: "float", str: "str"}


def _type_error(spec: Spec, value: Any) -> ConfigError:
    if spec.base is list:
        return ConfigError(f"{spec.path} must be a list of strings, not {value!r}")
    if spec.base is dict:
        return ConfigError(f"{spec.path} must be a table, not {type(value).__name__} ({value!r})")
    return ConfigError(f"{spec.path} must be {_WORDS[spec.base]}, not {type(value).__name__} ({value!r})")


def check_value(spec: Spec, value: Any) -> Any:
    """The value as the config stores it (an int given for a float becomes a float), or ConfigError."""
    if value is None:
        if spec.optional:
            return None
        raise ConfigError(f"{spec.path} must be {describe_type(spec, plain=True)}, not null")
    base = spec.base
    if base is bool:
        ok = isinstance(value, bool)
    elif base in (int, float):
        ok = isinstance(value, (int, float) if base is float else int) and not isinstance(value, bool)
    elif base is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, base)
    if not ok:
        raise _type_error(spec, value)
    if base is float:
        value = float(value)
    meta = spec.meta
    if meta.choices is not None and value not in meta.choices:
        raise ConfigError(f"{spec.path} must be one of {', '.join(meta.choices)}, not '{value}'")
    if meta.pattern is not None and not re.fullmatch(meta.pattern, value):
        raise ConfigError(f"{spec.path} must be {meta.expect}, not '{value}'")
    if base in (int, float) and not _in_range(meta, value):
        raise ConfigError(f"{spec.path} must be {describe_range(spec)}")
    return value


def _in_range(meta: Key, value: float) -> bool:
    low_ok = meta.min is None or (value > meta.min if meta.above else value >= meta.min)
    return low_ok and (meta.max is None or value <= meta.max)


def _num(x: float) -> str:
    return f"{x:g}"


def describe_range(spec: Spec) -> str:
    """'at least 1', '>= 0', '> 0', 'in (0, 1]'; '' when the key has no range."""
    meta = spec.meta
    if meta.min is not None and meta.max is not None:
        return f"in {'(' if meta.above else '['}{_num(meta.min)}, {_num(meta.max)}]"
    if meta.min is not None:
        if spec.base is int:
            return f"at least {_num(meta.min + meta.above)}"
        return f"{'>' if meta.above else '>='} {_num(meta.min)}"
    if meta.max is not None:
        return f"at most {_num(meta.max)}"
    return ""


def describe_type(spec: Spec, *, plain: bool = False) -> str:
    """The accepted values in words, for messages (plain) and for the docs' type column."""
    meta = spec.meta
    if meta.choices is not None:
        words = " | ".join(f'`"{c}"`' for c in meta.choices) if not plain else ", ".join(meta.choices)
    elif meta.expect is not None:
        words = meta.expect
    else:
        words = {bool: "bool", int: "int", float: "float", str: "string", list: "list of strings",
                 dict: "table"}[spec.base]
        if (span := describe_range(spec)) and not plain:
            words += f", {span}"
    return words


def unknown_key(name: str, known: typing.Iterable[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown key '{name}' in {where}{hint}")


def checked(obj: Any, table: str, values: dict[str, Any], where: str | None = None) -> Any:
    """A copy of table `obj` with `values` set, each one checked; unknown keys are refused."""
    keys = specs(type(obj), table)
    given = {}
    for name, value in values.items():
        if name not in keys:
            raise unknown_key(name, keys, where or f"[{table}]")
        given[name] = check_value(keys[name], value)
    return dataclasses.replace(obj, **given)


def check_all(obj: Any, table: str) -> None:
    """Every key of table `obj` as it stands (a config built or changed in code)."""
    for spec in specs(type(obj), table).values():
        check_value(spec, getattr(obj, spec.name))
