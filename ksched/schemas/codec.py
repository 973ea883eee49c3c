"""The one codec between ksched's typed events and bytes on Kafka.

Framing: Avro single-object encoding (Avro 1.8+ specification), registry-free:

    0xC3 0x01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's
                Parsing Canonical Form | Avro binary encoding of the record

Any Kafka client that has the `.avsc` files can produce and read these bytes (Java's
`BinaryMessageEncoder` writes exactly this). The fingerprint names the writer schema; the codec knows
the current version of every schema (`schemas/*.avsc`) and every earlier one (`schemas/history/`), and
resolves old writers to the current reader by Avro's schema-resolution rules.

A job's spec is most of the bytes of a submission and of the two records its acceptance writes (`JobAccepted`,
`JobDefinition`), and encoding or decoding it most of their cost. An Avro record is its fields' encodings one
after the other, so the codec keeps the bytes of recently read or written specs (by identity: a spec is
immutable) and writes them again as they are: a submission's spec is decoded once and never encoded.
"""

from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import load_schema, parse_schema, to_parsing_canonical_form

from ksched.errors import CodecError, UnknownSchemaError
from ksched.schemas import events
from ksched.schemas.avroread import PRIMITIVE_READERS, read_long, reader
from ksched.schemas.avrowrite import writer
from ksched.schemas.events import RECORD_TYPES, JobSpec, schema_name
from ksched.schemas.records import from_data, to_data

MAGIC = b"\xc3\x01"
HEADER_LEN = 10
SCHEMA_DIR = Path(__file__).resolve().parent
HISTORY_DIR = SCHEMA_DIR / "history"

_EMPTY = 0xC15D213AA4D7A795
_TABLE = []
for _i in range(256):
    _fp = _i
    for _ in range(8):
        _fp = (_fp >> 1) ^ (_EMPTY & -(_fp & 1))
    _TABLE.append(_fp)


def crc64_avro(data: bytes) -> int:
    """The CRC-64-AVRO fingerprint (Rabin) from the Avro specification."""
    fp = _EMPTY
    for b in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ b) & 0xFF]
    return fp


def fingerprint(parsed_schema: Any) -> bytes:
    """The 8 bytes that follow the magic in single-object encoding."""
    return crc64_avro(to_parsing_canonical_form(parsed_schema).encode()).to_bytes(8, "little")


@dataclass(frozen=True)
class _Writer:
    name: str
    schema: Any
    current: bool


SPEC = schema_name(JobSpec)
_PRIMITIVES = ("string", "int", "long", "boolean")
#: Specs whose bytes a codec keeps: the jobs being worked on (a spec is read, decided and written within one
#: inbox record), not every job (that would pin every registered job's spec).
SPEC_CACHE_SIZE = 4_096


@dataclass(frozen=True)
class _Splice:
    """A record holding a spec among primitive fields, written as the fields before it, the spec's bytes, and the
    fields after it (Avro encodes a record as its fields' encodings one after the other). The primitive fields
    are written here, as (name, Avro type): two fastavro calls cost about as much as the rest of the record."""

    before: tuple[tuple[str, str], ...]
    field: str
    after: tuple[tuple[str, str], ...]


_RANGES = {"int": (-(1 << 31), 1 << 31), "long": (-(1 << 63), 1 << 63)}


def _varint(n: int) -> bytes:
    """`n` zigzag-encoded as Avro writes an int or long."""
    z = (n << 1) ^ (n >> 63)
    if z < 0x80:
        return bytes((z,))
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _write_fields(out: list[bytes], event: Any, fields: tuple[tuple[str, str], ...]) -> None:
    for name, kind in fields:
        value = getattr(event, name)
        if kind == "string":
            if not isinstance(value, str):
                raise TypeError(f"{name}: expected a string, got {type(value).__name__}")
            raw = value.encode()
            out.append(_varint(len(raw)))
            out.append(raw)
        elif kind == "boolean":
            if not isinstance(value, bool):
                raise TypeError(f"{name}: expected a boolean, got {type(value).__name__}")
            out.append(b"\x01" if value else b"\x00")
        else:
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name}: expected an {kind}, got {type(value).__name__}")
            low, high = _RANGES[kind]
            if not low <= value < high:
                raise ValueError(f"{name}: {value} is out of the range of an Avro {kind}")
            out.append(_varint(value))


def _primitive(kind: str, data: bytes, pos: int) -> tuple[Any, int]:
    return PRIMITIVE_READERS[kind](data, pos)


class _Unfit(Exception):
    """A spec read from its bytes does not fit its class (what `from_data` raised is its argument)."""


def _is_spec(schema: Any) -> bool:
    """A reference to the spec's schema, or its definition (where a schema first names it)."""
    return schema == SPEC or (isinstance(schema, dict) and schema.get("name") == SPEC)


def _splice(schema: Any) -> _Splice | None:
    fields = schema["fields"]
    at = [i for i, f in enumerate(fields) if _is_spec(f["type"])]
    if len(at) != 1 or any(f["type"] not in _PRIMITIVES for i, f in enumerate(fields) if i != at[0]):
        return None
    before, after = fields[:at[0]], fields[at[0] + 1:]
    return _Splice(tuple((f["name"], f["type"]) for f in before), fields[at[0]]["name"],
                   tuple((f["name"], f["type"]) for f in after))


def _plan(schema: Any, named: dict[str, Any]) -> Any:
    """How `_read` reads a value of `schema` keeping its specs' bytes: primitives by name, a spec as "spec", a
    record as its fields' plans, an array as [plan]; None if the schema holds anything else (read by fastavro)."""
    if _is_spec(schema):
        return SPEC
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return schema
        return _plan(named[schema], named) if schema in named else None
    if isinstance(schema, dict) and schema.get("type") == "record":
        fields = [(f["name"], _plan(f["type"], named)) for f in schema["fields"]]
        return None if any(p is None for _, p in fields) else tuple(fields)
    if isinstance(schema, dict) and schema.get("type") == "array":
        item = _plan(schema["items"], named)
        return None if item is None else [item]
    return None


def _holds_spec(plan: Any) -> bool:
    if plan == SPEC:
        return True
    if isinstance(plan, list):
        return _holds_spec(plan[0])
    return isinstance(plan, tuple) and any(_holds_spec(p) for _, p in plan)


class Codec:
    """Encodes the dataclasses of `ksched.schemas.events` and decodes any known version back to them."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR, history_dir: Path = HISTORY_DIR) -> None:
        self._classes: dict[str, type] = {schema_name(cls): cls for cls in RECORD_TYPES}
        self._schemas: dict[str, Any] = {}
        self._prefix: dict[str, bytes] = {}
        self._writers: dict[bytes, _Writer] = {}
        self._specs: OrderedDict[int, tuple[JobSpec, bytes]] = OrderedDict()
        self._specs_lock = threading.Lock()  # one codec serves a process's threads (an executor has several)
        for name in self._classes:
            path = schema_dir / f"{name}.avsc"
            if not path.exists():
                raise CodecError(f"{path}: schema file missing for {name}")
            current: Any = load_schema(str(path))
            self._schemas[name] = current
            fp = fingerprint(current)
            self._prefix[name] = MAGIC + fp
            self._writers[fp] = _Writer(name, current, current=True)
        if history_dir.exists():
            for path in sorted(history_dir.glob("*.avsc")):
                old: Any = parse_schema(json.loads(path.read_text()))
                old_name = str(old["name"])
                if old_name not in self._schemas:
                    raise CodecError(f"{path}: history schema {old_name} has no current version")
                self._writers.setdefault(fingerprint(old), _Writer(old_name, old, current=False))
        self._spec = load_schema(str(schema_dir / f"{SPEC}.avsc"))
        records = {c.SCHEMA: c for c in vars(events).values() if isinstance(c, type) and hasattr(c, "SCHEMA")}
        self._spec_reader = reader(self._spec, JobSpec, records)  # None: fastavro reads specs
        self._spec_write = writer(self._spec, JobSpec, records)  # None: fastavro writes specs
        #: Generated writers of the current schemas (`avrowrite`); a schema they do not cover is fastavro's.
        self._write = {n: w for n, sc in self._schemas.items() if (w := writer(sc, self._classes[n], records))}
        self._splices = {n: sp for n, sc in self._schemas.items() if (sp := _splice(sc)) is not None}
        self._plans = {n: p for n, sc in self._schemas.items()
                       if n != SPEC and (p := _plan(sc, sc.get("__named_schemas", {}))) is not None and _holds_spec(p)}
        #: Generated readers of the other current schemas (`avroread`): a record built from its bytes, no dicts.
        self._direct = {n: r for n, sc in self._schemas.items()
                        if n not in self._plans and (r := reader(sc, self._classes[n], records)) is not None}

    @property
    def names(self) -> list[str]:
        return sorted(self._schemas)

    def schema(self, name: str) -> Any:
        return self._schemas[name]

    def prefix(self, name: str) -> bytes:
        """Magic and fingerprint of the current version of `name`."""
        return self._prefix[name]

    def encode(self, event: Any) -> bytes:
        name = schema_name(type(event))
        splice = self._splices.get(name)
        if splice is not None:
            out = [self._prefix[name]]
            _write_fields(out, event, splice.before)
            out.append(self.spec_bytes(getattr(event, splice.field)))
            _write_fields(out, event, splice.after)
            return b"".join(out)
        write = self._write.get(name)
        if write is not None:
            raw = bytearray(self._prefix[name])
            write(event, raw)
            return bytes(raw)
        buf = io.BytesIO()
        buf.write(self._prefix[name])
        fastavro.schemaless_writer(buf, self._schemas[name], to_data(event))
        return buf.getvalue()

    def spec_bytes(self, spec: JobSpec) -> bytes:
        """The Avro encoding of `spec` (the current schema's), kept for the specs seen last."""
        with self._specs_lock:
            hit = self._specs.get(id(spec))
            if hit is not None and hit[0] is spec:
                self._specs.move_to_end(id(spec))
                return hit[1]
        if self._spec_write is not None:
            raw = bytearray()
            self._spec_write(spec, raw)
            return self._keep(spec, bytes(raw))
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self._spec, to_data(spec))
        return self._keep(spec, buf.getvalue())

    def _keep(self, spec: JobSpec, raw: bytes) -> bytes:
        with self._specs_lock:
            self._specs[id(spec)] = (spec, raw)  # the entry holds the spec, so its id is not reused while kept
            if len(self._specs) > SPEC_CACHE_SIZE:
                self._specs.popitem(last=False)
        return raw

    def encode_data(self, name: str, record: dict[str, Any], schema: Any | None = None) -> bytes:
        """Encode plain data with `schema` (default: the current one); used to test old writers."""
        schema = self._schemas[name] if schema is None else schema
        buf = io.BytesIO()
        buf.write(MAGIC + fingerprint(schema))
        fastavro.schemaless_writer(buf, schema, record)
        return buf.getvalue()

    def schema_name(self, data: bytes) -> str:
        """The record name in the header of `data`, without decoding the body."""
        return self._writer_for(data).name

    def decode(self, data: bytes | None) -> Any:
        """Bytes → event. Raises CodecError naming what is wrong, never anything else."""
        writer = self._writer_for(data)
        assert data is not None
        direct = self._direct.get(writer.name) if writer.current else None
        if direct is not None:
            try:
                event, end = direct(data, HEADER_LEN)
            except Exception as exc:
                raise CodecError(f"body is not a valid {writer.name}: {type(exc).__name__}: {exc}") from None
            if end != len(data):
                raise CodecError(f"body is not a valid {writer.name}: {len(data) - end} trailing bytes")
            return event
        body = io.BytesIO(data)
        body.seek(HEADER_LEN)
        reader = None if writer.current else self._schemas[writer.name]
        plan = self._plans.get(writer.name) if writer.current else None
        try:
            if plan is None:
                record = fastavro.schemaless_reader(body, writer.schema, reader)
                end = body.tell()
            else:
                record, end = self._read(plan, data, HEADER_LEN, body)
        except _Unfit as unfit:
            raise CodecError(f"{writer.name} record does not fit its class: {unfit.args[0]}") from None
        except Exception as exc:
            raise CodecError(f"body is not a valid {writer.name}: {type(exc).__name__}: {exc}") from None
        if end != len(data):
            raise CodecError(f"body is not a valid {writer.name}: {len(data) - end} trailing bytes")
        try:
            return from_data(self._classes[writer.name], record)
        except (TypeError, KeyError, ValueError) as exc:
            raise CodecError(f"{writer.name} record does not fit its class: {exc}") from None

    def _read(self, plan: Any, data: bytes, pos: int, body: io.BytesIO) -> tuple[Any, int]:
        """A value of a current schema at `pos` (its plan from `_plan`), and where it ends; each spec in it built
        here and its bytes kept, so that writing it again costs nothing."""
        if plan == SPEC and self._spec_reader is not None:
            spec, end = self._spec_reader(data, pos)
            self._keep(spec, data[pos:end])
            return spec, end
        if plan == SPEC:
            body.seek(pos)
            spec_data = fastavro.schemaless_reader(body, self._spec, None)
            end = body.tell()
            try:
                spec = from_data(JobSpec, spec_data)
            except (TypeError, KeyError, ValueError) as exc:
                raise _Unfit(exc) from None
            self._keep(spec, data[pos:end])
            return spec, end
        if isinstance(plan, str):
            return _primitive(plan, data, pos)
        if isinstance(plan, list):
            items: list[Any] = []
            count, pos = read_long(data, pos)
            while count:
                if count < 0:
                    count = -count
                    _, pos = read_long(data, pos)  # the block's size in bytes
                for _ in range(count):
                    item, pos = self._read(plan[0], data, pos, body)
                    items.append(item)
                count, pos = read_long(data, pos)
            return items, pos
        record: dict[str, Any] = {}
        for name, field_plan in plan:
            record[name], pos = self._read(field_plan, data, pos, body)
        return record, pos

    def _writer_for(self, data: bytes | None) -> _Writer:
        if data is None:
            raise CodecError("record has no value (null); expected single-object Avro")
        if len(data) < HEADER_LEN or data[:2] != MAGIC:
            raise CodecError(
                f"not single-object Avro: expected magic C3 01, got {data[:2].hex(' ').upper() or 'nothing'}"
            )
        fp = data[2:HEADER_LEN]
        writer = self._writers.get(fp)
        if writer is None:
            raise UnknownSchemaError(f"unknown schema fingerprint {fp.hex()} (little-endian CRC-64-AVRO)")
        return writer


_default: Codec | None = None


def default_codec() -> Codec:
    """The process-wide codec over the installed schemas (loading them costs a few milliseconds)."""
    global _default
    if _default is None:
        _default = Codec()
    return _default
