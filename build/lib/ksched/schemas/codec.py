"""The one codec between ksched's typed events and bytes on Kafka.

Framing: Avro single-object encoding (Avro 1.8+ specification), registry-free:

    0xC3 0x01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's
                Parsing Canonical Form | Avro binary encoding of the record

Any Kafka client that has the `.avsc` files can produce and read these bytes (Java's
`BinaryMessageEncoder` writes exactly this). The fingerprint names the writer schema; the codec knows
the current version of every schema (`schemas/*.avsc`) and every earlier one (`schemas/history/`), and
resolves old writers to the current reader by Avro's schema-resolution rules.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import load_schema, parse_schema, to_parsing_canonical_form

from ksched.errors import CodecError, UnknownSchemaError
from ksched.schemas.events import RECORD_TYPES, schema_name
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


class Codec:
    """Encodes the dataclasses of `ksched.schemas.events` and decodes any known version back to them."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR, history_dir: Path = HISTORY_DIR) -> None:
        self._classes: dict[str, type] = {schema_name(cls): cls for cls in RECORD_TYPES}
        self._schemas: dict[str, Any] = {}
        self._prefix: dict[str, bytes] = {}
        self._writers: dict[bytes, _Writer] = {}
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
        buf = io.BytesIO()
        buf.write(self._prefix[name])
        fastavro.schemaless_writer(buf, self._schemas[name], to_data(event))
        return buf.getvalue()

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
        body = io.BytesIO(data)
        body.seek(HEADER_LEN)
        reader = None if writer.current else self._schemas[writer.name]
        try:
            record = fastavro.schemaless_reader(body, writer.schema, reader)
        except Exception as exc:
            raise CodecError(f"body is not a valid {writer.name}: {type(exc).__name__}: {exc}") from None
        if body.tell() != len(data):
            raise CodecError(f"body is not a valid {writer.name}: {len(data) - body.tell()} trailing bytes")
        try:
            return from_data(self._classes[writer.name], record)
        except (TypeError, KeyError, ValueError) as exc:
            raise CodecError(f"{writer.name} record does not fit its class: {exc}") from None

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
