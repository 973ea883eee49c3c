"""Plain-data conversion of the typed records in `ksched.schemas.events` (and of state records).

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
        return _encoder(type(obj), False)(obj)
    if isinstance(obj, list | tuple):
        return [to_data(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_data(v) for k, v in obj.items()}
    return obj


def to_compact_data(obj: Any, leave_out: tuple[str, ...] = ()) -> Any:
    """Like `to_data`, leaving out dataclass fields that hold their default (`from_data` restores them), and the
    fields named in `leave_out` (of `obj` itself, for a caller that writes them its own way)."""
    cls: Any = type(obj)
    return _encoder(cls, True, leave_out)(obj)


_MISSING = object()


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _MISSING


@cache
def _encoder(tp: Any, compact: bool, leave_out: tuple[str, ...] = ()) -> _Convert:
    """A function turning values of type `tp` into plain data, compiled once per type from its hints."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = typing.get_type_hints(tp)
        fields = [(f.name, _encoder(hints[f.name], compact), _default(f)) for f in dataclasses.fields(tp)
                  if f.name not in leave_out]
        if compact:
            return _compact_encoder(fields)
        plain = [name for name, enc, _ in fields if enc is _identity]
        nested = [(name, enc) for name, enc, _ in fields if enc is not _identity]

        def encode(v: Any) -> Any:
            d = {name: getattr(v, name) for name in plain}
            for name, enc in nested:
                d[name] = enc(getattr(v, name))
            return d

        return encode
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        enc = _encoder(inner[0], compact) if len(inner) == 1 else to_data
        return _identity if enc is _identity else (lambda v: None if v is None else enc(v))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        item = _encoder(args[0], compact) if args else to_data
        return (lambda v: list(v)) if item is _identity else (lambda v: [item(x) for x in v])
    if origin is dict:
        val = _encoder(typing.get_args(tp)[1], compact)
        return (lambda v: dict(v)) if val is _identity else (lambda v: {k: val(x) for k, x in v.items()})
    if tp in (str, int, float, bool, bytes, type(None)):
        return _identity
    return to_data


def _compact_encoder(fields: list[tuple[str, _Convert, Any]]) -> _Convert:
    """Generated code: each field read once, and put in the dict unless it holds its default (a field without a
    default always is). A loop over the fields cost about twice as much; a job's definition is encoded this way
    when it is registered."""
    scope: dict[str, Any] = {}
    lines = ["def encode_compact(v):", "    d = {}"]
    for i, (name, enc, default) in enumerate(fields):
        value = "x" if enc is _identity else f"e{i}(x)"
        scope[f"e{i}"], scope[f"d{i}"] = enc, default
        lines.append(f"    x = v.{name}")
        if default is _MISSING:
            lines.append(f"    d[{name!r}] = {value}")
        else:
            lines.append(f"    if x is not d{i} and x != d{i}:")
            lines.append(f"        d[{name!r}] = {value}")
    lines.append("    return d")
    exec("\n".join(lines) + "\n", scope)  # the source is made here from the class's own field names
    encode: _Convert = scope["encode_compact"]
    return encode


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


def slot_setters(cls: type, names: list[str]) -> list[Any]:
    """The `__set__` of each field's slot, if the class can be built by setting them: every field set by its
    __init__ (nothing else to default) and kept in a slot, and no __post_init__ to run. Empty otherwise."""
    if hasattr(cls, "__post_init__") or len(names) != len(dataclasses.fields(cls)):
        return []
    slots = [cls.__dict__.get(name) for name in names]
    if not all(type(s) is types.MemberDescriptorType for s in slots):
        return []
    return [s.__set__ for s in slots]  # type: ignore[union-attr]


class _Factory:
    def __repr__(self) -> str:
        return "<factory>"  # as dataclasses shows a field's factory in the signature


_FACTORY = _Factory()


def set_slots_in_init(namespace: dict[str, Any]) -> None:
    """Give each frozen dataclass defined in `namespace` (a module's globals) an __init__ that sets its slots
    directly. The generated one sets each field through object.__setattr__, about twice the cost, and the
    scheduler builds such records for every event (`dataclasses.replace` goes through __init__ too). Same
    parameters, defaults and factories; a class with anything more (`__post_init__`, `init=False` or keyword-only
    fields) keeps its own."""
    module = namespace["__name__"]
    for cls in list(namespace.values()):
        if (isinstance(cls, type) and cls.__module__ == module and dataclasses.is_dataclass(cls)
                and cls.__dataclass_params__.frozen):  # type: ignore[attr-defined]
            _set_slots_in_init(cls)


def _set_slots_in_init(cls: type) -> None:
    fields = dataclasses.fields(cls)
    if any(not f.init or f.kw_only for f in fields):
        return
    setters = slot_setters(cls, [f.name for f in fields])
    if not setters:
        return
    scope: dict[str, Any] = {"__factory": _FACTORY}
    params, body = [], []
    for i, (f, setter) in enumerate(zip(fields, setters, strict=True)):
        scope[f"__set{i}"] = setter
        value = f.name
        if f.default is not dataclasses.MISSING:
            scope[f"__default{i}"] = f.default
            params.append(f"{f.name}=__default{i}")
        elif f.default_factory is not dataclasses.MISSING:
            scope[f"__make{i}"] = f.default_factory
            params.append(f"{f.name}=__factory")
            value = f"__make{i}() if {f.name} is __factory else {f.name}"
        else:
            params.append(f.name)
        body.append(f"    __set{i}(self, {value})")
    exec(f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body or ["    pass"]) + "\n", scope)
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = {**{f.name: f.type for f in fields}, "return": None}
    cls.__init__ = init  # type: ignore[misc]


_REPLACERS: dict[type, Callable[[Any, dict[str, Any]], Any]] = {}


def replace(obj: T, /, **changes: Any) -> T:
    """`dataclasses.replace`, by code generated per class: the scheduler replaces about two dozen records per task
    it runs (a task, its attempt, its run, the job), and the standard one walks the class's fields, checks each and
    calls __init__ with keywords, about five times what setting the new record's slots costs. A class whose
    records are not built from their slots alone (`slot_setters`) goes through `dataclasses.replace`."""
    make = _REPLACERS.get(type(obj))
    if make is None:
        make = _REPLACERS[type(obj)] = _replacer(type(obj))
    result: T = make(obj, changes)
    return result


def _replacer(cls: type) -> Callable[[Any, dict[str, Any]], Any]:
    fields = dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ()
    setters = slot_setters(cls, [f.name for f in fields]) if fields and all(f.init for f in fields) else []
    if not setters:
        return lambda obj, changes: dataclasses.replace(obj, **changes)
    names = frozenset(f.name for f in fields)
    scope: dict[str, Any] = {"new": object.__new__, "cls": cls, "names": names, "_unknown": _unknown}
    lines = ["def make(obj, changes):", "    if not changes.keys() <= names:", "        _unknown(cls, changes, names)",
             "    get = changes.get", "    o = new(cls)"]
    for i, (f, setter) in enumerate(zip(fields, setters, strict=True)):
        scope[f"s{i}"] = setter
        lines.append(f"    s{i}(o, get({f.name!r}, obj.{f.name}))")
    lines.append("    return o")
    exec("\n".join(lines) + "\n", scope)  # the source is made here from the class's own field names
    make: Callable[[Any, dict[str, Any]], Any] = scope["make"]
    return make


def _unknown(cls: type, changes: dict[str, Any], names: frozenset[str]) -> None:
    bad = sorted(set(changes) - names)
    raise TypeError(f"{cls.__name__}.__init__() got an unexpected keyword argument {bad[0]!r}")


def _dataclass_converter(cls: type) -> _Convert:
    """Built from data holding every field (what an Avro reader gives) by generated code, and from data leaving
    some out (compact data) field by field, the missing ones taking their defaults."""
    hints = typing.get_type_hints(cls)
    fields = [(f.name, _converter(hints[f.name])) for f in dataclasses.fields(cls) if f.init]

    def partial(v: Any) -> Any:
        kwargs = {name: conv(v[name]) for name, conv in fields if name in v}
        return cls(**kwargs)

    scope: dict[str, Any] = {"cls": cls, "partial": partial, "KeyError": KeyError, "new": object.__new__}
    values = []
    for i, (name, conv) in enumerate(fields):
        value = f"v[{name!r}]"
        if conv is not _identity:
            scope[f"c{i}"] = conv
            value = f"c{i}({value})"
        values.append((name, value))
    setters = slot_setters(cls, [name for name, _ in fields])
    if setters:
        # A frozen dataclass's __init__ sets each field through object.__setattr__, about twice what setting
        # its slot directly costs; decoding a submission builds about a dozen of them.
        scope.update({f"s{i}": setter for i, setter in enumerate(setters)})
        build = "o = new(cls)\n" + "".join(f"            s{i}(o, {value})\n" for i, (_, value) in enumerate(values))
        build += "            return o"
    else:
        build = f"return cls({', '.join(f'{name}={value}' for name, value in values)})"
    source = (f"def convert(v):\n"
              f"    if isinstance(v, cls):\n"
              f"        return v\n"
              f"    if len(v) == {len(fields)}:\n"
              f"        try:\n"
              f"            {build}\n"
              f"        except KeyError:\n"
              f"            pass\n"
              f"    return partial(v)\n")
    exec(source, scope)  # the source is made here from the class's own field names
    convert: _Convert = scope["convert"]
    return convert
