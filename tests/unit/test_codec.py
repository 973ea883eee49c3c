"""The codec: single-object framing, every record type round-trips, errors are named, schemas evolve.

That each class matches its `.avsc` field by field is test_schema_contract.py's business."""

from __future__ import annotations

import io
import json
import typing
from pathlib import Path

import fastavro
import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from ksched.errors import CodecError, UnknownSchemaError
from ksched.schemas.codec import HISTORY_DIR, MAGIC, SCHEMA_DIR, SPEC_CACHE_SIZE, Codec, crc64_avro, default_codec
from ksched.schemas.events import (
    RECORD_TYPES,
    JobAccepted,
    JobDefinition,
    JobSpec,
    SubmitJob,
    SubmitJobs,
    Tick,
    schema_name,
)
from ksched.schemas.records import from_data
from tests.samples import job, sample

CODEC = default_codec()
RECORD_TYPES_BY_NAME = {schema_name(cls): cls for cls in RECORD_TYPES}


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


# --- a spec's bytes kept and written again ------------------------------------------------------------------


def _plain(name: str, event: typing.Any) -> bytes:
    """What fastavro writes for `event` as a whole, with no spliced parts."""
    from ksched.schemas.records import to_data

    return CODEC.encode_data(name, to_data(event))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("cls", [JobAccepted, JobDefinition], ids=lambda c: c.__name__)
def test_a_record_written_with_its_specs_bytes_spliced_in_is_what_fastavro_writes(cls: type, seed: int) -> None:
    event = sample(cls, seed)
    assert CODEC.encode(event) == _plain(schema_name(cls), event)
    assert CODEC.encode(event) == _plain(schema_name(cls), event)  # the second time from the kept bytes


def _fastavro_decoded(data: bytes) -> typing.Any:
    """`data` decoded by fastavro alone (a codec's own reading of specs bypassed)."""
    body = io.BytesIO(data)
    body.seek(10)
    name = CODEC.schema_name(data)
    return from_data(RECORD_TYPES_BY_NAME[name], fastavro.schemaless_reader(body, CODEC.schema(name), None))


@pytest.mark.parametrize("seed", range(5))
def test_a_submission_read_keeping_its_specs_bytes_is_what_fastavro_reads(seed: int) -> None:
    one = SubmitJob(f"c{seed}", sample(JobSpec, seed), 1_700_000_000_000 + seed, "me" * seed)
    many = SubmitJobs(3, [one, SubmitJob("c9", job("other"), -5)])
    for event in (one, many):
        data = CODEC.encode(event)
        assert Codec().decode(data) == _fastavro_decoded(data) == event


def test_a_decoded_specs_bytes_are_written_again_as_they_came() -> None:
    """Avro lets a writer spend more bytes on a number than it needs (Java's block-counted arrays, padded
    varints); the spec's bytes are kept as written, and the record around them is still valid Avro."""
    codec = Codec()
    spec = job("padded")
    spec_raw = codec.spec_bytes(spec)
    head = _plain("ksched.SubmitJob", SubmitJob("c1", spec, 7))
    # the same submission with the job id's length as a two-byte varint (0x8C 0x00 is 6 as much as 0x0C is)
    assert spec_raw[0] == 2 * len("padded")
    padded_spec = bytes([spec_raw[0] | 0x80, 0]) + spec_raw[1:]
    data = head.replace(spec_raw, padded_spec)
    decoded = codec.decode(data)
    assert decoded == SubmitJob("c1", spec, 7)
    accepted = JobAccepted("e", "c1", "padded", 1, decoded.job, 7)
    written = codec.encode(accepted)
    assert padded_spec in written
    assert codec.decode(written) == accepted


def test_an_array_written_in_blocks_with_their_sizes_reads_the_same() -> None:
    """Avro arrays may come as several blocks, each a negative count followed by its size in bytes."""
    subs = [SubmitJob(f"c{i}", job(f"j{i}"), i) for i in range(3)]
    items = [_plain("ksched.SubmitJob", s)[10:] for s in subs]

    def varint(n: int) -> bytes:
        z, out = (n << 1) ^ (n >> 63), b""
        while z > 0x7F:
            out, z = out + bytes([z & 0x7F | 0x80]), z >> 7
        return out + bytes([z])

    blocks = varint(-2) + varint(len(items[0] + items[1])) + items[0] + items[1] + varint(1) + items[2] + varint(0)
    data = CODEC.prefix("ksched.SubmitJobs") + varint(4) + blocks
    assert Codec().decode(data) == _fastavro_decoded(data) == SubmitJobs(4, subs)


@pytest.mark.parametrize("cut", [1, 5, 20, 60])
def test_a_cut_or_padded_submission_is_refused_as_fastavro_refuses_it(cut: int) -> None:
    data = CODEC.encode(SubmitJobs(1, [SubmitJob("c1", job(), 1)]))
    with pytest.raises(CodecError, match=r"not a valid ksched\.SubmitJobs"):
        Codec().decode(data[:-cut])
    with pytest.raises(CodecError, match="trailing bytes"):
        Codec().decode(data + b"\x00")


def test_a_submission_with_bad_text_is_refused_naming_it() -> None:
    data = CODEC.encode(SubmitJob("cc", job(), 1))
    at = data.index(b"cc")
    with pytest.raises(CodecError, match=r"not a valid ksched\.SubmitJob: UnicodeDecodeError"):
        Codec().decode(data[:at] + b"\xff\xfe" + data[at + 2:])


def test_kept_specs_are_bounded() -> None:
    codec = Codec()
    specs = [job(f"j{i}") for i in range(SPEC_CACHE_SIZE + 10)]
    for spec in specs:
        codec.spec_bytes(spec)
    assert len(codec._specs) == SPEC_CACHE_SIZE


@pytest.mark.parametrize(("revision", "at_ms", "text"), [
    (0, 0, ""), (-1, -1, "é\u2028\0"), (63, 64, "x" * 127), (-64, -65, "y" * 128),
    ((1 << 31) - 1, (1 << 63) - 1, "日本" * 100), (-(1 << 31), -(1 << 63), "z"),
])
def test_the_fields_around_a_spliced_spec_are_written_as_fastavro_writes_them(revision: int, at_ms: int,
                                                                                text: str) -> None:
    event = JobAccepted(text, text[::-1], "j", revision, job("j"), at_ms)
    assert CODEC.encode(event) == _plain("ksched.JobAccepted", event)
    assert CODEC.decode(CODEC.encode(event)) == event


@pytest.mark.parametrize(("revision", "at_ms", "error"), [
    (1 << 31, 0, ValueError), (-(1 << 31) - 1, 0, ValueError), (0, 1 << 63, ValueError),
    ("1", 0, TypeError), (True, 0, TypeError), (0, 1.5, TypeError),
])
def test_a_field_around_a_spliced_spec_that_avro_cannot_hold_is_refused(revision: typing.Any, at_ms: typing.Any,
                                                                        error: type) -> None:
    with pytest.raises(error):
        CODEC.encode(JobAccepted("e", "c", "j", revision, job("j"), at_ms))


def test_specs_are_read_by_the_direct_reader() -> None:
    """The codec builds specs from their bytes itself (`schemas.avroread`), not through fastavro's dicts: a
    schema change it does not cover would quietly make registration slower, so this says so."""
    assert CODEC._spec_reader is not None


@pytest.mark.parametrize("seed", range(40))
def test_the_direct_reader_reads_a_spec_as_fastavro_and_from_data_do(seed: int) -> None:
    spec = sample(JobSpec, seed)
    raw = CODEC.spec_bytes(spec)
    direct, end = CODEC._spec_reader(raw, 0)
    assert end == len(raw)
    schema = fastavro.schema.load_schema(str(SCHEMA_DIR / "ksched.JobSpec.avsc"))
    assert direct == from_data(JobSpec, fastavro.schemaless_reader(io.BytesIO(raw), schema, None)) == spec


def test_a_spec_cut_anywhere_is_refused() -> None:
    data = CODEC.encode(SubmitJob("c1", sample(JobSpec, 3), 1))
    for cut in range(1, len(data) - 10):
        with pytest.raises(CodecError):
            CODEC.decode(data[:-cut])


def test_a_spec_with_a_union_branch_out_of_range_is_refused() -> None:
    spec = job("u", "0 * * * *")
    raw = CODEC.spec_bytes(spec)
    assert spec.schedule.cron is not None
    at = raw.index(spec.schedule.cron.encode()) - 2  # the branch index, then the string's length
    assert raw[at] == 2  # branch 1 (zigzag)
    data = CODEC.encode(SubmitJob("c1", spec, 1))
    bad = data.replace(raw, raw[:at] + b"\x04" + raw[at + 1:])
    with pytest.raises(CodecError, match="union branch 2"):
        Codec().decode(bad)


# --- generated writers and readers ----------------------------------------------------------------------------


def _fastavro_bytes(event: typing.Any) -> bytes:
    from ksched.schemas.records import to_data

    name = schema_name(type(event))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, CODEC.schema(name), to_data(event))
    return CODEC.prefix(name) + buf.getvalue()


def test_every_current_schema_is_written_by_a_generated_writer_and_read_by_a_generated_reader() -> None:
    # So that a schema change these do not cover fails here, instead of quietly slowing every output down.
    assert set(CODEC._write) == set(CODEC._schemas)
    assert CODEC._spec_write is not None
    spliced_or_planned = set(CODEC._plans) | {"ksched.DeadLetter"}  # bytes are read by fastavro
    assert set(CODEC._direct) == set(CODEC._schemas) - spliced_or_planned


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda c: c.__name__)
def test_a_generated_writer_writes_what_fastavro_writes_and_reads_back_what_fastavro_reads(cls: type,
                                                                                            seed: int) -> None:
    import random

    from tests.samples import random_sample

    event = random_sample(cls, random.Random(seed * 1000 + len(cls.__name__)))
    data = CODEC.encode(event)
    assert data == _fastavro_bytes(event)
    assert CODEC.decode(data) == event
    assert CODEC.decode(data) == _fastavro_decoded(data)


@pytest.mark.parametrize("value", [0, -1, 63, -64, 64, (1 << 31) - 1, -(1 << 31), (1 << 63) - 1, -(1 << 63)])
def test_a_long_is_written_as_fastavro_writes_it_to_the_edges_of_its_range(value: int) -> None:
    tick = Tick(7, value, "t", value)
    assert CODEC.encode(tick) == _fastavro_bytes(tick)
    assert CODEC.decode(CODEC.encode(tick)) == tick


@pytest.mark.parametrize(("change", "error"), [
    ({"partition": 1 << 31}, "out of the range of an Avro int"),
    ({"partition": -(1 << 31) - 1}, "out of the range of an Avro int"),
    ({"now_ms": 1 << 63}, "out of the range of an Avro long"),
    ({"partition": True}, "expected an Avro int"),
    ({"partition": "3"}, "expected an Avro int"),
    ({"partition": 3.0}, "expected an Avro int"),
    ({"ticker": None}, "expected a string"),
    ({"ticker": b"t"}, "expected a string"),
    ({"resumed_from_ms": "soon"}, "expected an Avro long"),
])
def test_a_value_avro_cannot_hold_is_refused_naming_the_field(change: dict[str, typing.Any], error: str) -> None:
    from dataclasses import replace

    tick = replace(Tick(7, 1_700_000_000_000, "t"), **change)
    with pytest.raises((TypeError, ValueError), match=error) as raised:
        CODEC.encode(tick)
    assert "Tick." in str(raised.value)


def test_a_bool_field_takes_only_a_bool_and_nested_records_only_their_class() -> None:
    from dataclasses import replace

    from ksched.schemas.events import ClaimTask, TaskReady

    with pytest.raises(TypeError, match="expected a boolean"):
        CODEC.encode(ClaimTask("c", "j", "r", "t", 1, "e", 5, renewal=1))  # type: ignore[arg-type]
    ready = sample(TaskReady)
    with pytest.raises(TypeError, match=r"TaskReady\.artifact"):
        CODEC.encode(replace(ready, artifact={"digest": "x"}))
    with pytest.raises(TypeError, match="expected a list"):
        CODEC.encode(replace(ready, args="a b"))


def test_a_record_cut_or_padded_anywhere_is_refused_by_the_generated_reader() -> None:
    from ksched.schemas.events import TaskReady

    data = CODEC.encode(sample(TaskReady))
    for cut in range(10, len(data)):
        with pytest.raises(CodecError):
            CODEC.decode(data[:cut])
    with pytest.raises(CodecError, match="trailing bytes"):
        CODEC.decode(data + b"\x00")


def test_an_int_past_its_range_is_refused_where_the_record_comes_in() -> None:
    # fastavro writes any value; a submission holding one is refused on reading, naming it, so no job is stored
    # with a value that every later write of it (which checks ranges) would refuse.
    from ksched.schemas.events import Limits, TaskSpec
    from ksched.schemas.records import to_data

    spec = job("big")
    spec = JobSpec(spec.job_id, [TaskSpec("main", spec.tasks[0].artifact, limits=Limits(cpu_seconds=1 << 31))])
    raw = CODEC.encode_data("ksched.SubmitJob", to_data(SubmitJob("c1", spec, 5)))
    with pytest.raises(CodecError, match="out of the range of an Avro int"):
        CODEC.decode(raw)
    tick = CODEC.encode_data("ksched.Tick", {"partition": -(1 << 31) - 1, "now_ms": 5, "ticker": "t",
                                             "resumed_from_ms": None})
    with pytest.raises(CodecError, match="out of the range of an Avro int"):
        CODEC.decode(tick)
    past_long = CODEC.prefix("ksched.Tick") + b"\x02" + b"\xff" * 9 + b"\x7f" + b"\x00\x00"
    with pytest.raises(CodecError, match="range of an Avro long"):
        CODEC.decode(past_long)
