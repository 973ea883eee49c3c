"""Writers of Avro binary straight from ksched's records (no dicts in between), generated once per schema.

Every output of the scheduler is encoded: a one-task job's life (submission, claim, completion) writes 18
records (decision log, views, offer, grant). fastavro writes from dicts, so each record was first turned into
dicts by `to_data`, then walked again by fastavro against its schema. A writer made here reads the record's
fields and appends their encodings to a bytearray, in code generated from the schema: one statement per field.

`writer` returns None for a schema or class it does not cover (a union other than null-or-one-type, a fixed,
an enum); the codec then writes with fastavro as before. A value Avro cannot hold raises: a TypeError for the
wrong type (a bool where an int is declared, an int where a bool is), a ValueError for an int or long out of its
range (fastavro wrote any int, and a Java reader would then refuse the record).
"""

from __future__ import annotations

import dataclasses
import struct
import typing
from collections.abc import Callable
from typing import Any

from .avroread import nullable

Write = Callable[[Any, bytearray], None]
_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")
_RANGES = {"int": (-(1 << 31), 1 << 31), "long": (-(1 << 63), 1 << 63)}
_PRIMITIVES = ("string", "int", "long", "boolean", "double", "float", "bytes", "null")


def _unrolled() -> Callable[[int], bytes]:
    """A zigzag-encoded (non-negative) value as its varint bytes, by one comparison per length and one `bytes`
    call (a loop appending to a bytearray cost about twice as much; a millisecond timestamp takes 6 bytes)."""
    lines = ["def zigzag_bytes(z):"]
    for size in range(1, 10):
        parts = [f"z >> {7 * i} & 127 | 128" if i else "z & 127 | 128" for i in range(size - 1)]
        parts.append(f"z >> {7 * (size - 1)}" if size > 1 else "z")
        lines += [f"    if z < {1 << (7 * size)}:", f"        return bytes(({', '.join(parts)},))"]
    lines += ["    out = bytearray()", "    while z >= 128:", "        out.append(z & 127 | 128)", "        z >>= 7",
              "    out.append(z)", "    return bytes(out)"]
    scope: dict[str, Any] = {}
    exec("\n".join(lines) + "\n", scope)  # made here from numbers only
    made: Callable[[int], bytes] = scope["zigzag_bytes"]
    return made


zigzag_bytes = _unrolled()


def _wrong(path: str, kind: str, value: Any) -> TypeError:
    return TypeError(f"{path}: expected {kind}, got {type(value).__name__}")


def _integer(value: Any, path: str, kind: str) -> int:
    """An int field's value that is not exactly an int: an int subclass other than bool passes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise _wrong(path, f"an Avro {kind} (an int)", value)


class _Unsupported(Exception):
    pass


@dataclasses.dataclass
class _Gen:
    """The generated source of one record's writer, and the names it refers to."""

    named: dict[str, Any]
    classes: dict[str, type]
    made: dict[type, Write]
    scope: dict[str, Any] = dataclasses.field(default_factory=dict)
    n: int = 0

    def name(self, stem: str, value: Any = None) -> str:
        self.n += 1
        name = f"{stem}{self.n}"
        if value is not None:
            self.scope[name] = value
        return name


def writer(schema: Any, cls: type, classes: dict[str, type]) -> Write | None:
    """A writer of `cls` records as `schema` (parsed by fastavro); the records inside are the classes named in
    `classes` (Avro full name -> dataclass). None if a type is not covered or a record does not match its class
    field for field."""
    try:
        return _record_writer(schema, cls, dict(schema.get("__named_schemas", {})), classes, {})
    except _Unsupported:
        return None


def _record_writer(schema: Any, cls: type, named: dict[str, Any], classes: dict[str, type],
                   made: dict[type, Write]) -> Write:
    if cls in made:
        return made[cls]
    if not dataclasses.is_dataclass(cls):
        raise _Unsupported(cls)
    fields = schema["fields"]
    if [f["name"] for f in fields] != [f.name for f in dataclasses.fields(cls)]:
        raise _Unsupported(cls)  # the contract test holds them equal; anything else is fastavro's to write
    hints = typing.get_type_hints(cls)
    gen = _Gen(named, classes, made)
    gen.scope.update(_integer=_integer, _wrong=_wrong, _zz=zigzag_bytes, _DOUBLE=_DOUBLE, _FLOAT=_FLOAT)
    lines = ["def write(rec, out):"]
    short = cls.__name__
    for f in fields:
        var = gen.name("v")
        lines.append(f"    {var} = rec.{f['name']}")
        _emit(gen, lines, 1, var, f["type"], hints[f["name"]], f"{short}.{f['name']}")
    if len(lines) == 1:
        lines.append("    pass")
    source = "\n".join(lines) + "\n"
    exec(source, gen.scope)  # the source is made here from the schema's and the class's own field names
    write: Write = gen.scope["write"]
    made[cls] = write
    return write


def _emit(gen: _Gen, lines: list[str], depth: int, var: str, schema: Any, hint: Any, path: str) -> None:
    """Statements appending the encoding of `var` (declared as `hint`) as `schema` to `out`."""
    pad = "    " * depth
    if isinstance(schema, dict) and schema.get("type") in _PRIMITIVES:
        schema = schema["type"]
    if isinstance(schema, str) and schema in _PRIMITIVES:
        _primitive(gen, lines, pad, var, schema, path)
        return
    if isinstance(schema, str):
        if schema not in gen.named:
            raise _Unsupported(schema)
        schema = gen.named[schema]
    if isinstance(schema, list):
        _union(gen, lines, depth, var, schema, hint, path)
        return
    kind = schema.get("type")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if kind == "record":
        cls = gen.classes.get(schema.get("name", ""))
        if cls is None or cls is not hint:
            raise _Unsupported(schema.get("name"))
        sub = gen.name("w", _record_writer(schema, cls, gen.named, gen.classes, gen.made))
        c = gen.name("C", cls)
        lines += [f"{pad}if type({var}) is not {c}:", f"{pad}    raise _wrong({path!r}, {cls.__name__!r}, {var})",
                  f"{pad}{sub}({var}, out)"]
        return
    if kind == "array" and origin in (list, tuple):
        item = gen.name("i")
        lines += [f"{pad}if not isinstance({var}, (list, tuple)):",
                  f"{pad}    raise _wrong({path!r}, 'a list', {var})",
                  f"{pad}if {var}:"]
        _length(lines, pad + "    ", f"len({var})")
        lines.append(f"{pad}    for {item} in {var}:")
        _emit(gen, lines, depth + 2, item, schema["items"], args[0], f"{path}[]")
        lines.append(f"{pad}out.append(0)")
        return
    if kind == "map" and origin is dict and args[0] is str:
        key, value = gen.name("k"), gen.name("m")
        lines += [f"{pad}if not isinstance({var}, dict):", f"{pad}    raise _wrong({path!r}, 'a dict', {var})",
                  f"{pad}if {var}:"]
        _length(lines, pad + "    ", f"len({var})")
        lines.append(f"{pad}    for {key}, {value} in {var}.items():")
        _primitive(gen, lines, pad + "        ", key, "string", f"{path} key")
        _emit(gen, lines, depth + 2, value, schema["values"], args[1], f"{path}[value]")
        lines.append(f"{pad}out.append(0)")
        return
    raise _Unsupported(schema, hint)


def _union(gen: _Gen, lines: list[str], depth: int, var: str, schema: list[Any], hint: Any, path: str) -> None:
    """`null` or one other type, written from an optional field (the branch index, then the value)."""
    shape = nullable(schema, hint)
    if shape is None:
        raise _Unsupported(schema, hint)
    null_at, inner = shape
    pad = "    " * depth
    lines += [f"{pad}if {var} is None:", f"{pad}    out.append({null_at << 1})", f"{pad}else:",
              f"{pad}    out.append({(1 - null_at) << 1})"]
    _emit(gen, lines, depth + 1, var, schema[1 - null_at], inner, path)


def _length(lines: list[str], pad: str, expr: str) -> None:
    """A non-negative count (an array's or map's block, a string's size): zigzag is twice it."""
    lines += [f"{pad}n = {expr}", f"{pad}if n < 64:", f"{pad}    out.append(n << 1)", f"{pad}else:",
              f"{pad}    out += _zz(n << 1)"]


def _primitive(gen: _Gen, lines: list[str], pad: str, var: str, kind: str, path: str) -> None:
    if kind == "string":
        lines += [f"{pad}if not isinstance({var}, str):", f"{pad}    raise _wrong({path!r}, 'a string', {var})",
                  f"{pad}b = {var}.encode()"]
        _length(lines, pad, "len(b)")
        lines.append(f"{pad}out += b")
    elif kind == "bytes":
        lines += [f"{pad}if not isinstance({var}, (bytes, bytearray)):",
                  f"{pad}    raise _wrong({path!r}, 'bytes', {var})"]
        _length(lines, pad, f"len({var})")
        lines.append(f"{pad}out += {var}")
    elif kind in ("int", "long"):
        low, high = _RANGES[kind]
        lines += [f"{pad}if type({var}) is not int:", f"{pad}    {var} = _integer({var}, {path!r}, {kind!r})",
                  f"{pad}if not {low} <= {var} < {high}:",
                  f"{pad}    raise ValueError({path!r} + f': {{{var}}} is out of the range of an Avro {kind}')",
                  f"{pad}z = ({var} << 1) ^ ({var} >> 63)", f"{pad}if z < 128:", f"{pad}    out.append(z)",
                  f"{pad}else:", f"{pad}    out += _zz(z)"]
    elif kind == "boolean":
        lines += [f"{pad}if {var} is True:", f"{pad}    out.append(1)", f"{pad}elif {var} is False:",
                  f"{pad}    out.append(0)", f"{pad}else:", f"{pad}    raise _wrong({path!r}, 'a boolean', {var})"]
    elif kind in ("double", "float"):
        packer = "_DOUBLE" if kind == "double" else "_FLOAT"
        lines += [f"{pad}if not isinstance({var}, (int, float)) or isinstance({var}, bool):",
                  f"{pad}    raise _wrong({path!r}, 'a number', {var})", f"{pad}out += {packer}.pack({var})"]
    else:  # null
        lines += [f"{pad}if {var} is not None:", f"{pad}    raise _wrong({path!r}, 'None', {var})"]
