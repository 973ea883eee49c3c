"""Readers of Avro binary that build ksched's records directly (no dicts in between), made once per schema.

A worker registering jobs in bulk decodes one spec per job. fastavro reads it into dicts and `from_data` turns
them into records: 191,000 instructions for a one-task cron job, against 158,000 here (valgrind; about 30 against
22 us). `reader` returns None for any schema or class it does not cover, and the codec then reads with fastavro
as before. Malformed input raises (an index or value error, or a decode error for bad text); the codec turns that
into a `CodecError`.
"""

from __future__ import annotations

import dataclasses
import struct
import typing
from collections.abc import Callable
from typing import Any

from .records import slot_setters

Read = Callable[[bytes, int], tuple[Any, int]]
_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")


def read_long(data: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint (Avro's int and long)."""
    b = data[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    pos += 1
    n, shift = b & 0x7F, 7
    while b & 0x80:
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    if n >> 64:
        raise ValueError("a varint past the range of an Avro long")
    return (n >> 1) ^ -(n & 1), pos


def _read_int(data: bytes, pos: int) -> tuple[int, int]:
    """An Avro int: a long in 32 bits. A larger value is refused here, where the record comes in, not when a
    decision writes it again (the writers check ranges too: a job holding one could then never fire)."""
    value, pos = read_long(data, pos)
    if not -0x80000000 <= value < 0x80000000:
        raise ValueError(f"{value} is out of the range of an Avro int")
    return value, pos


def read_string(data: bytes, pos: int) -> tuple[str, int]:
    size, pos = read_long(data, pos)
    end = pos + size
    if size < 0 or end > len(data):
        raise ValueError(f"a string of {size} bytes at {pos}, past the record's end")
    return data[pos:end].decode(), end


def _read_double(data: bytes, pos: int) -> tuple[float, int]:
    return _DOUBLE.unpack_from(data, pos)[0], pos + 8


def _read_float(data: bytes, pos: int) -> tuple[float, int]:
    return _FLOAT.unpack_from(data, pos)[0], pos + 4


def _read_boolean(data: bytes, pos: int) -> tuple[bool, int]:
    b = data[pos]
    if b > 1:
        raise ValueError(f"a boolean of byte {b}")
    return b == 1, pos + 1


def _read_null(data: bytes, pos: int) -> tuple[None, int]:
    return None, pos


PRIMITIVE_READERS: dict[str, Read] = {
    "string": read_string, "long": read_long, "int": _read_int, "double": _read_double, "float": _read_float,
    "boolean": _read_boolean, "null": _read_null,
}
#: Python types a primitive is read as (what a record's field must be declared as).
_PY = {"string": str, "long": int, "int": int, "double": float, "float": float, "boolean": bool, "null": type(None)}


class _Unsupported(Exception):
    pass


def reader(schema: Any, cls: type, classes: dict[str, type]) -> Read | None:
    """A reader of `schema` (parsed by fastavro) building `cls`, the records inside it the classes named in
    `classes` (Avro full name -> dataclass); None if a type is not covered or a record does not match its class
    field for field."""
    named = dict(schema.get("__named_schemas", {}))
    try:
        return _record(schema, cls, named, classes)
    except _Unsupported:
        return None


def _record(schema: Any, cls: type, named: dict[str, Any], classes: dict[str, type]) -> Read:
    if not dataclasses.is_dataclass(cls):
        raise _Unsupported(cls)
    hints = typing.get_type_hints(cls)
    names = [f["name"] for f in schema["fields"]]
    setters = slot_setters(cls, names)
    if not setters or len(names) != len(dataclasses.fields(cls)):
        raise _Unsupported(cls)
    readers = [_reader(f["type"], hints[f["name"]], named, classes) for f in schema["fields"]]
    # Generated, one statement per field (a loop over (setter, reader) pairs took 6 % more instructions).
    scope: dict[str, Any] = {"new": object.__new__, "cls": cls}
    lines = ["def read(data, pos):", "    obj = new(cls)"]
    for i, (setter, read_field) in enumerate(zip(setters, readers, strict=True)):
        scope[f"s{i}"], scope[f"r{i}"] = setter, read_field
        lines += [f"    value, pos = r{i}(data, pos)", f"    s{i}(obj, value)"]
    lines.append("    return obj, pos")
    exec("\n".join(lines) + "\n", scope)  # the source is made here from the class's own fields
    read: Read = scope["read"]
    return read


def _reader(schema: Any, hint: Any, named: dict[str, Any], classes: dict[str, type]) -> Read:
    """A reader of a value of `schema` into the type `hint`: the value must come out as the field declares it, as
    `from_data` would build it (no conversion here: a tuple, or a dict with int keys, is not covered)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(schema, str) and schema in PRIMITIVE_READERS:
        if hint is not _PY[schema] and not (hint is float and schema in ("int", "long")):
            raise _Unsupported(schema, hint)
        return PRIMITIVE_READERS[schema]
    if isinstance(schema, str):
        if schema not in named or schema not in classes or classes[schema] is not hint:
            raise _Unsupported(schema)
        return _record(named[schema], classes[schema], named, classes)
    if isinstance(schema, list):
        return _union(schema, hint, named, classes)
    kind = schema.get("type")
    if kind == "record":
        name = schema.get("name")
        if name not in classes or classes[name] is not hint:
            raise _Unsupported(name)
        return _record(schema, hint, named, classes)
    if kind == "array" and origin is list:
        return _array(_reader(schema["items"], args[0], named, classes))
    if kind == "map" and origin is dict and args[0] is str:
        return _map(_reader(schema["values"], args[1], named, classes))
    raise _Unsupported(schema, hint)


def nullable(schema: list[Any], hint: Any) -> tuple[int, Any] | None:
    """For a union of `null` and one other type, held in an optional field (`hint`): the index of the null branch
    and the other type's hint. None for any other union, or a field that is not optional."""
    if len(schema) != 2 or "null" not in schema:
        return None
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(inner) != 1 or type(None) not in typing.get_args(hint):
        return None
    return schema.index("null"), inner[0]


def _union(schema: list[Any], hint: Any, named: dict[str, Any], classes: dict[str, type]) -> Read:
    """`null` or one other type, read into an optional field."""
    shape = nullable(schema, hint)
    if shape is None:
        raise _Unsupported(schema, hint)
    null_at, inner = shape
    other = _reader(schema[1 - null_at], inner, named, classes)

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        branch, pos = read_long(data, pos)
        if branch == null_at:
            return None, pos
        if branch == 1 - null_at:
            return other(data, pos)
        raise ValueError(f"union branch {branch} of 2")

    return read


def _blocks(data: bytes, pos: int) -> tuple[int, int]:
    """The item count of the next block of an array or map (a negative count is followed by the block's size)."""
    count, pos = read_long(data, pos)
    if count < 0:
        count = -count
        _, pos = read_long(data, pos)
    return count, pos


def _array(item: Read) -> Read:
    def read(data: bytes, pos: int) -> tuple[Any, int]:
        items: list[Any] = []
        count, pos = _blocks(data, pos)
        while count:
            for _ in range(count):
                value, pos = item(data, pos)
                items.append(value)
            count, pos = _blocks(data, pos)
        return items, pos

    return read


def _map(value_read: Read) -> Read:
    def read(data: bytes, pos: int) -> tuple[Any, int]:
        out: dict[str, Any] = {}
        count, pos = _blocks(data, pos)
        while count:
            for _ in range(count):
                key, pos = read_string(data, pos)
                out[key], pos = value_read(data, pos)
            count, pos = _blocks(data, pos)
        return out, pos

    return read
