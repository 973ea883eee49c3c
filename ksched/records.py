"""Plain-data conversion of the typed records in `ksched.events` (and of state records).

`to_data` turns a dataclass into dicts, lists and scalars; `from_data` builds it back, guided by the
field types. Used by the Avro codec and by the scheduler's state store, so neither hand-writes a mapper.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")
_Convert = Callable[[Any], Any]


def to_data(obj: Any) -> Any:
    """A dataclass (recursively) as dicts and lists; other values pass through."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_data(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_data(v) for k, v in obj.items()}
    return obj


def from_data(cls: type[T], data: Any) -> T:
    """Build `cls` from plain data produced by `to_data` (or by an Avro reader)."""
    result: T = _converter(cls)(data)  # type: ignore[arg-type]  # classes are hashable
    return result


def _identity(v: Any) -> Any:
    return v


@cache
def _converter(tp: Any) -> _Convert:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass_converter(tp)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        conv = _converter(inner[0]) if len(inner) == 1 else _identity
        return lambda v: None if v is None else conv(v)
    if origin is list:
        item = _converter(typing.get_args(tp)[0])
        return _identity if item is _identity else (lambda v: [item(x) for x in v])
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        val = _converter(val_tp)
        if key_tp is int:  # JSON turns int keys into strings
            return lambda v: {int(k): val(x) for k, x in v.items()}
        return _identity if val is _identity else (lambda v: {k: val(x) for k, x in v.items()})
    if origin is tuple:
        args = typing.get_args(tp)
        item = _converter(args[0]) if args else _identity
        return lambda v: tuple(item(x) for x in v)
    return _identity


def _dataclass_converter(cls: type) -> _Convert:
    hints = typing.get_type_hints(cls)
    fields = [(f.name, _converter(hints[f.name])) for f in dataclasses.fields(cls) if f.init]

    def convert(v: Any) -> Any:
        if isinstance(v, cls):
            return v
        kwargs = {name: conv(v[name]) for name, conv in fields if name in v}
        return cls(**kwargs)

    return convert
