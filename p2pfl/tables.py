"""Typed TOML tables: a table becomes a frozen dataclass, or an error that names the key.

Shared by scenario files, the node configuration and the training plan. A key the dataclass
does not know is an error naming the key, where it was found and the keys
that are known; a value of the wrong type names the key, the type wanted and
the value given. Nested dataclass fields are sub-tables.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, TypeVar

from p2pfl.errors import ConfigError

T = TypeVar("T")


def check_type(value: Any, hint: Any, where: str) -> Any:
    """``value`` if it fits ``hint`` (ints widen to floats), else ``ConfigError``."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return check_type(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not a valid {_name(hint)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        if dataclasses.is_dataclass(item):  # an array of tables: [[name]]
            return [
                build(typing.cast(type, item), v, f"{where} [{i}]") for i, v in enumerate(value)
            ]
        return [check_type(v, item, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


@functools.cache
def _fields(cls: type) -> tuple[dict[str, Any], frozenset[str]]:
    """The field types and names of dataclass ``cls``, resolved once (it takes ~0.1 ms a class)."""
    assert dataclasses.is_dataclass(cls)
    return typing.get_type_hints(cls), frozenset(f.name for f in dataclasses.fields(cls))


def build(cls: type[T], table: Any, where: str, *, skip: frozenset[str] = frozenset()) -> T:
    """Build dataclass ``cls`` from a TOML table; ``skip`` names fields a table may not set."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    hints, fields = _fields(cls)
    names = fields - skip
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"{where}: unknown key {key!r} (known: {known})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build(typing.cast(type, hint), value, f"{where} [{key}]")
        else:
            kwargs[key] = check_type(value, hint, f"{where}: key {key!r}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where}: {exc}") from None
