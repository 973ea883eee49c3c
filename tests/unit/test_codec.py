"""The codec: single-object framing, every record type round-trips, errors are named, schemas evolve.

That each class matches its `.avsc` field by field is test_schema_contract.py's business."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from ksched.errors import CodecError, UnknownSchemaError
from ksched.schemas.codec import HISTORY_DIR, MAGIC, Codec, crc64_avro, default_codec
from ksched.schemas.events import RECORD_TYPES, SubmitJob, Tick, schema_name
from tests.samples import job, sample

CODEC = default_codec()


@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda c: c.__name__)
def test_every_record_type_round_trips(cls: type) -> None:
    event = sample(cls)
    data = CODEC.encode(event)
    assert data[:2] == MAGIC
    assert CODEC.decode(data) == event


def test_framing_is_avro_single_object_encoding_with_a_little_endian_crc64_fingerprint() -> None:
    schema = CODEC.schema("ksched.Tick")
    canonical = to_parsing_canonical_form(schema)
    fp = crc64_avro(canonical.encode())
    data = CODEC.encode(Tick(3, 1_700_000_000_000, "t"))
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == fp.to_bytes(8, "little")
    # fastavro agrees on the fingerprint (it prints the bytes in the same order).
    assert fastavro_fingerprint(canonical, "CRC-64-AVRO") == data[2:10].hex()


def test_crc64_avro_matches_the_specification_for_the_empty_string() -> None:
    assert crc64_avro(b"") == 0xC15D213AA4D7A795


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "no value"),
        (b"", "not single-object Avro"),
        (b"\x00\x01garbage-garbage", "expected magic C3 01"),
        (b"\xc3\x01" + b"\x00" * 8 + b"body", "unknown schema fingerprint"),
    ],
)
def test_undecodable_bytes_raise_a_codec_error_naming_the_problem(data: bytes | None, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        CODEC.decode(data)


def test_unknown_fingerprint_is_its_own_error() -> None:
    with pytest.raises(UnknownSchemaError):
        CODEC.decode(b"\xc3\x01" + b"\x01" * 8)


def test_a_body_that_does_not_fit_the_schema_is_rejected() -> None:
    good = CODEC.encode(SubmitJob("c1", job(), 1))
    with pytest.raises(CodecError, match=r"not a valid ksched\.SubmitJob"):
        CODEC.decode(good[:-5])
    with pytest.raises(CodecError, match="trailing bytes"):
        CODEC.decode(good + b"\x00\x00")


def _history() -> list[Path]:
    return sorted(HISTORY_DIR.glob("*.avsc"))


def test_there_is_a_previous_version_to_evolve_from() -> None:
    assert _history(), "schemas/history holds the earlier versions of evolved schemas"


@pytest.mark.parametrize("path", _history(), ids=lambda p: p.name)
def test_a_record_written_with_the_previous_schema_reads_with_the_current_one(path: Path) -> None:
    old = json.loads(path.read_text())
    name = f"{old['namespace']}.{old['name']}" if "." not in old["name"] else old["name"]
    cls = next(c for c in RECORD_TYPES if schema_name(c) == name)
    from fastavro import parse_schema

    parsed = parse_schema(old)
    record = _old_record(parsed, sample(cls))
    decoded = CODEC.decode(CODEC.encode_data(name, record, parsed))
    assert isinstance(decoded, cls)


@pytest.mark.parametrize("path", _history(), ids=lambda p: p.name)
def test_a_record_written_with_the_current_schema_reads_with_the_previous_one(path: Path) -> None:
    import io

    from fastavro import parse_schema, schemaless_reader

    old = parse_schema(json.loads(path.read_text()))
    name = old["name"]
    cls = next(c for c in RECORD_TYPES if schema_name(c) == name)
    data = CODEC.encode(sample(cls))
    record = schemaless_reader(io.BytesIO(data[10:]), CODEC.schema(name), old)
    assert set(record) == {f["name"] for f in old["fields"]}


def _old_record(schema: typing.Any, event: typing.Any) -> dict[str, typing.Any]:
    """`event` as plain data restricted to the fields `schema` (an older version) knows."""
    from ksched.schemas.records import to_data

    def restrict(s: typing.Any, value: typing.Any) -> typing.Any:
        if isinstance(s, dict) and s.get("type") == "record" and isinstance(value, dict):
            return {f["name"]: restrict(f["type"], value.get(f["name"])) for f in s["fields"]}
        if isinstance(s, dict) and s.get("type") == "array":
            return [restrict(s["items"], v) for v in value]
        if isinstance(s, list):
            for branch in s:
                if branch != "null" and value is not None:
                    return restrict(branch, value)
            return value
        return value

    return typing.cast(dict[str, typing.Any], restrict(schema, to_data(event)))


def test_codec_refuses_a_history_schema_without_a_current_version(tmp_path: Path) -> None:
    (tmp_path / "ksched.Gone.avsc").write_text(json.dumps(
        {"type": "record", "name": "Gone", "namespace": "ksched", "fields": []}))
    with pytest.raises(CodecError, match="no current version"):
        Codec(history_dir=tmp_path)
