"""The `.avsc` files are the public contract; the dataclasses of `ksched.schemas.events` must mirror them field
for field: the same names in the same order, types that map onto each other, and equal defaults.

Python to Avro, as the codec (`schemas.records` + fastavro) relies on it:

    str -> string        int -> int | long     float -> double | float     bool -> boolean     bytes -> bytes
    X | None -> a union of null and X          list[X] -> array of X       dict[str, X] -> map of X
    a dataclass with SCHEMA = "ns.Name" -> the named record ns.Name (a reference, or defined inline)
    an Enum subclass -> an Avro enum with the same symbols (ksched uses strings instead, see events.py)
    datetime / date / UUID / Decimal -> the matching logical type; a logical type on any other field is drift
                                        (fastavro would hand the dataclass a datetime where it expects an int)

Python cannot say whether an `int` is an Avro int or long, except that a field ending in `_ms` (epoch or
duration milliseconds, as events.py says) must be a long; everything else is checked exactly. The checker
is tested on deliberately drifted schemas below, so a check that stopped looking would fail here.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import decimal
import enum
import json
import types
import typing
import uuid
from typing import Any

import pytest

from ksched.schemas import events
from ksched.schemas.codec import SCHEMA_DIR

Schema = Any  # JSON of an Avro schema
_PRIMITIVES: dict[Any, tuple[str, ...]] = {
    str: ("string",), int: ("int", "long"), float: ("double", "float"), bool: ("boolean",), bytes: ("bytes",),
}
_LOGICAL: dict[str, Any] = {
    "timestamp-millis": datetime.datetime, "timestamp-micros": datetime.datetime, "date": datetime.date,
    "uuid": uuid.UUID, "decimal": decimal.Decimal,
}
_NO_DEFAULT = object()


def record_classes() -> dict[str, type]:
    """Every record class of `events`, by Avro full name."""
    return {events.schema_name(c): c for c in vars(events).values()
            if isinstance(c, type) and dataclasses.is_dataclass(c) and isinstance(getattr(c, "SCHEMA", None), str)}


def load_named() -> dict[str, Schema]:
    return {path.name.removesuffix(".avsc"): json.loads(path.read_text()) for path in SCHEMA_DIR.glob("*.avsc")}


def full_name(schema: dict[str, Any], namespace: str) -> str:
    name = str(schema["name"])
    return name if "." in name else f"{schema.get('namespace', namespace)}.{name}"


def drift(cls: type, schema: Schema, named: dict[str, Schema]) -> list[str]:
    """Every way `cls` and the record `schema` disagree, one line each (empty: they match)."""
    return _record_drift(cls.__name__, cls, schema, named, "ksched")


def _record_drift(where: str, cls: type, schema: Schema, named: dict[str, Schema], namespace: str) -> list[str]:
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return [f"{where}: avsc is not a record: {json.dumps(schema)}"]
    name = full_name(schema, namespace)
    if name != cls.SCHEMA:  # type: ignore[attr-defined]  # another record: its fields are beside the point
        return [f"{where}: avsc names the record {name}, the class says {cls.SCHEMA}"]  # type: ignore[attr-defined]
    namespace = name.rpartition(".")[0]
    problems = []
    py_fields = dataclasses.fields(cls)
    avro_fields = {f["name"]: f for f in schema["fields"]}
    py_names, avro_names = [f.name for f in py_fields], list(avro_fields)
    for gone in [n for n in avro_names if n not in py_names]:
        problems.append(f"{where}.{gone}: in the avsc, not in the class")
    for extra in [n for n in py_names if n not in avro_names]:
        problems.append(f"{where}.{extra}: in the class, not in the avsc")
    common_py = [n for n in py_names if n in avro_fields]
    common_avro = [n for n in avro_names if n in py_names]
    if common_py != common_avro:
        problems.append(f"{where}: field order differs: avsc {common_avro}, class {common_py}")
    hints = typing.get_type_hints(cls)
    for f in py_fields:
        if f.name in avro_fields:
            at = f"{where}.{f.name}"
            avro_type = avro_fields[f.name]["type"]
            problems += _type_drift(at, hints[f.name], avro_type, named, namespace)
            problems += _default_drift(at, f, avro_fields[f.name], avro_type, named, namespace)
    return problems


def _resolve(avro: Schema, named: dict[str, Schema], namespace: str) -> Schema:
    """A reference to a named type as its definition; `{"type": "long"}` as `"long"`."""
    if isinstance(avro, str) and avro not in _AVRO_PRIMITIVES:
        ref = avro if "." in avro else f"{namespace}.{avro}"
        return named.get(ref, {"type": "unknown reference", "name": ref})
    if isinstance(avro, dict) and isinstance(avro.get("type"), str) and set(avro) <= {"type"}:
        return _resolve(avro["type"], named, namespace)
    return avro


_AVRO_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _py(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp)


def _show(avro: Schema) -> str:
    return json.dumps(avro, separators=(",", ":"))


def _type_drift(where: str, py: Any, avro: Schema, named: dict[str, Schema], namespace: str) -> list[str]:
    record = getattr(py, "SCHEMA", None) if dataclasses.is_dataclass(py) else None
    if isinstance(record, str) and avro in (record, record.rpartition(".")[2]):
        return [] if record in named else [f"{where}: the avsc refers to {avro}, which has no .avsc"]
    # (a named record referred to is checked against its own .avsc; one defined inline is checked here)
    avro = _resolve(avro, named, namespace)
    origin = typing.get_origin(py)
    if origin in (types.UnionType, typing.Union):
        return _union_drift(where, py, avro, named, namespace)
    if isinstance(avro, list):
        return [f"{where}: avsc type is the union {_show(avro)}, the class says {_py(py)} (no | None)"]
    logical = avro.get("logicalType") if isinstance(avro, dict) else None
    if logical is not None:
        expected = _LOGICAL.get(logical)
        ok = expected is not None and py is expected
        return [] if ok else [f"{where}: avsc has logical type {logical} ({_show(avro)}), the class says {_py(py)}"]
    if py in _PRIMITIVES:
        if py is int and where.endswith("_ms") and avro != "long":  # epoch milliseconds overflow an Avro int
            return [f"{where}: avsc type {_show(avro)}, but a time in milliseconds needs long"]
        if avro in _PRIMITIVES[py]:
            return []
        return [f"{where}: avsc type {_show(avro)}, the class says {py.__name__} ({' or '.join(_PRIMITIVES[py])})"]
    return _composite_drift(where, py, avro, named, namespace)


def _composite_drift(where: str, py: Any, avro: Schema, named: dict[str, Schema], namespace: str) -> list[str]:
    origin = typing.get_origin(py)
    if origin is list:
        if not (isinstance(avro, dict) and avro.get("type") == "array"):
            return [f"{where}: avsc type {_show(avro)}, the class says a list"]
        return _type_drift(f"{where}[]", typing.get_args(py)[0], avro["items"], named, namespace)
    if origin is dict:
        key, value = typing.get_args(py)
        if not (isinstance(avro, dict) and avro.get("type") == "map"):
            return [f"{where}: avsc type {_show(avro)}, the class says a dict"]
        keys = [] if key is str else [f"{where}: Avro map keys are strings, the class says {key!r}"]
        return keys + _type_drift(f"{where}{{}}", value, avro["values"], named, namespace)
    if isinstance(py, type) and issubclass(py, enum.Enum):
        if not (isinstance(avro, dict) and avro.get("type") == "enum"):
            return [f"{where}: avsc type {_show(avro)}, the class says the enum {py.__name__}"]
        symbols = [m.value for m in py]
        return [] if avro["symbols"] == symbols else [
            f"{where}: enum symbols differ: avsc {avro['symbols']}, class {symbols}"]
    if dataclasses.is_dataclass(py):
        if not (isinstance(avro, dict) and avro.get("type") == "record"):
            return [f"{where}: avsc type {_show(avro)}, the class says the record {py.SCHEMA}"]  # type: ignore[union-attr]
        return _record_drift(where, py, avro, named, namespace)  # type: ignore[arg-type]
    return [f"{where}: no Avro mapping for the Python type {_py(py)}"]


def _union_drift(where: str, py: Any, avro: Schema, named: dict[str, Schema], namespace: str) -> list[str]:
    args = typing.get_args(py)
    inner = [a for a in args if a is not type(None)]
    if not isinstance(avro, list):
        return [f"{where}: avsc type {_show(avro)} is not a union, the class says {_py(py)}"]
    branches = [b for b in avro if _resolve(b, named, namespace) != "null"]
    problems = []
    if (type(None) in args) != (len(branches) < len(avro)):
        problems.append(f"{where}: null is {'not ' if type(None) in args else ''}in the avsc union {_show(avro)}, "
                        f"the class says {_py(py)}")
    if len(branches) != len(inner):
        return [*problems, f"{where}: avsc union {_show(avro)} has {len(branches)} non-null branches, "
                           f"the class {_py(py)} has {len(inner)}"]
    for py_branch, avro_branch in zip(inner, branches, strict=True):
        problems += _type_drift(where, py_branch, avro_branch, named, namespace)
    return problems


def _default_drift(where: str, f: dataclasses.Field[Any], avro_field: dict[str, Any], avro_type: Schema,
                   named: dict[str, Schema], namespace: str) -> list[str]:
    if f.default is not dataclasses.MISSING:
        py_default: Any = f.default
    elif f.default_factory is not dataclasses.MISSING:
        py_default = f.default_factory()
    else:
        py_default = _NO_DEFAULT
    avro_default = avro_field.get("default", _NO_DEFAULT)
    if py_default is _NO_DEFAULT and avro_default is _NO_DEFAULT:
        return []
    if py_default is _NO_DEFAULT:
        return [f"{where}: the avsc has the default {_show(avro_default)}, the class has none"]
    if avro_default is _NO_DEFAULT:
        return [f"{where}: the class has the default {py_default!r}, the avsc has none"]
    problems = []
    resolved = _resolve(avro_type, named, namespace)
    if isinstance(resolved, list) and resolved:  # Avro: a union's default is a value of its first branch
        first_is_null = _resolve(resolved[0], named, namespace) == "null"
        if first_is_null != (avro_default is None):
            problems.append(f"{where}: the default {_show(avro_default)} does not belong to the first branch of "
                            f"the union {_show(resolved)}")
    if not _same(as_avro_json(py_default), avro_default):
        problems.append(f"{where}: default differs: avsc {_show(avro_default)}, class {py_default!r}")
    return problems


def as_avro_json(value: Any) -> Any:
    """A Python default as the JSON an `.avsc` would hold for it (bytes as code points, as Avro says)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_avro_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [as_avro_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_avro_json(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: `False` is not `0`, `{}` is not `[]`; 2 and 2.0 are the same number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) or isinstance(b, dict):
        return (isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()
                and all(_same(a[k], b[k]) for k in a))
    if isinstance(a, list) or isinstance(b, list):
        return (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b, strict=True)))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


# --- the real schemas ---------------------------------------------------------------------------------------

NAMED = load_named()
CLASSES = record_classes()


def test_every_avsc_has_a_class_and_every_record_class_an_avsc() -> None:
    assert sorted(NAMED) == sorted(CLASSES)
    assert set(map(events.schema_name, events.RECORD_TYPES)) <= set(CLASSES)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_each_record_class_matches_its_avsc_field_by_field(name: str) -> None:
    assert drift(CLASSES[name], NAMED[name], NAMED) == []


# --- the checker finds drift ------------------------------------------------------------------------------


def drifted(name: str, change: typing.Callable[[list[dict[str, Any]]], None]) -> list[str]:
    """The checker's report on `name`'s avsc after `change` was made to a copy of its fields."""
    schema = copy.deepcopy(NAMED[name])
    change(schema["fields"])
    return drift(CLASSES[name], schema, NAMED)


def field_of(fields: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(f for f in fields if f["name"] == name)


def test_a_renamed_field_is_reported_on_both_sides() -> None:
    report = drifted("ksched.TaskFailed", lambda fs: field_of(fs, "message").update(name="msg"))
    assert report == ["TaskFailed.msg: in the avsc, not in the class",
                      "TaskFailed.message: in the class, not in the avsc"]


def test_a_missing_field_is_reported() -> None:
    report = drifted("ksched.TaskFailed", lambda fs: fs.remove(field_of(fs, "log_ref")))
    assert report == ["TaskFailed.log_ref: in the class, not in the avsc"]


def test_swapped_fields_are_reported() -> None:
    def swap(fs: list[dict[str, Any]]) -> None:
        fs[0], fs[1] = fs[1], fs[0]

    (report,) = drifted("ksched.TaskFailed", swap)
    assert report.startswith("TaskFailed: field order differs: avsc ['run_id', 'job_id',")


@pytest.mark.parametrize(("name", "field", "avro_type", "expected"), [
    ("ksched.TaskFailed", "retryable", "string", "TaskFailed.retryable: avsc type \"string\", the class says bool"),
    ("ksched.TaskFailed", "attempt", "double", "TaskFailed.attempt: avsc type \"double\", the class says int (int "
                                               "or long)"),
    ("ksched.TaskFailed", "finished_at_ms", "int", "TaskFailed.finished_at_ms: avsc type \"int\", but a time in "
                                                   "milliseconds needs long"),
    ("ksched.Schedule", "at_ms", ["null", "int"], "Schedule.at_ms: avsc type \"int\", but a time in milliseconds"),
    ("ksched.TaskFailed", "message", {"type": "string", "logicalType": "uuid"},
     "TaskFailed.message: avsc has logical type uuid"),
    ("ksched.Tick", "now_ms", {"type": "long", "logicalType": "timestamp-millis"},
     "Tick.now_ms: avsc has logical type timestamp-millis"),
    ("ksched.TaskFailed", "exit_code", "int", "TaskFailed.exit_code: avsc type \"int\" is not a union"),
    ("ksched.TaskFailed", "exit_code", ["null", "string"], "TaskFailed.exit_code: avsc type \"string\", the class "
                                                          "says int"),
    ("ksched.TaskFailed", "exit_code", ["null", "int", "string"], "TaskFailed.exit_code: avsc union "
                                                                  "[\"null\",\"int\",\"string\"] has 2 non-null"),
    ("ksched.TaskFailed", "job_id", ["null", "string"], "TaskFailed.job_id: avsc type is the union"),
    ("ksched.DeadLetter", "key", ["null", "string"], "DeadLetter.key: avsc type \"string\", the class says bytes"),
    ("ksched.TaskReady", "args", {"type": "array", "items": "long"}, "TaskReady.args[]: avsc type \"long\", the "
                                                                     "class says str"),
    ("ksched.TaskReady", "args", {"type": "map", "values": "string"}, "TaskReady.args: avsc type"),
    ("ksched.TaskReady", "env", {"type": "map", "values": "int"}, "TaskReady.env{}: avsc type \"int\""),
    ("ksched.TaskReady", "env", {"type": "array", "items": "string"}, "TaskReady.env: avsc type"),
    ("ksched.TaskReady", "artifact", "ksched.Limits", "TaskReady.artifact: avsc names the record ksched.Limits"),
    ("ksched.TaskReady", "artifact", "string", "TaskReady.artifact: avsc type \"string\", the class says the record"),
    ("ksched.TaskReady", "priority", {"type": "enum", "name": "Priority", "symbols": ["high", "normal", "low"]},
     "TaskReady.priority: avsc type {\"type\":\"enum\""),
    ("ksched.TaskView", "attempts", {"type": "array", "items": "ksched.TaskView"},
     "TaskView.attempts[]: avsc names the record ksched.TaskView"),
])
def test_a_changed_type_is_reported(name: str, field: str, avro_type: Schema, expected: str) -> None:
    report = drifted(name, lambda fs: field_of(fs, field).update(type=avro_type))
    assert len(report) == 1 and report[0].startswith(expected), report


def test_a_changed_field_inside_an_inline_nested_record_is_reported() -> None:
    inline = copy.deepcopy(NAMED["ksched.ArtifactRef"])
    field_of(inline["fields"], "size")["type"] = "string"
    report = drifted("ksched.TaskReady", lambda fs: field_of(fs, "artifact").update(type=inline))
    assert report == ["TaskReady.artifact.size: avsc type \"string\", the class says int (int or long)"]


@pytest.mark.parametrize(("name", "field", "default", "expected"), [
    ("ksched.TaskFailed", "log_ref", "none", "TaskFailed.log_ref: default differs: avsc \"none\", class ''"),
    ("ksched.TaskFailed", "exit_code", 0, "TaskFailed.exit_code: the default 0 does not belong to the first branch"),
    ("ksched.ClaimTask", "renewal", 0, "ClaimTask.renewal: default differs: avsc 0, class False"),
    ("ksched.ClaimTask", "renewal", True, "ClaimTask.renewal: default differs: avsc true, class False"),
    ("ksched.TaskStarted", "pid", 1, "TaskStarted.pid: default differs: avsc 1, class 0"),
    ("ksched.RetryPolicy", "jitter", 0.2, "RetryPolicy.jitter: default differs: avsc 0.2, class 0.1"),
    ("ksched.RetryPolicy", "no_retry_exit_codes", [1], "RetryPolicy.no_retry_exit_codes: default differs: avsc [1]"),
    ("ksched.TaskReady", "labels", [], "TaskReady.labels: default differs: avsc [], class {}"),
    ("ksched.TaskSpec", "limits", {"cpu_seconds": 0, "memory_mb": 0, "open_files": 1024, "processes": 0,
                                   "log_bytes": 1},
     "TaskSpec.limits: default differs"),
    ("ksched.JobSpec", "schedule", {"cron": None, "at_ms": None, "timezone": "UTC", "misfire": "once",
                                    "misfire_grace_ms": 60000, "catchup_window_ms": 86400000, "overlap": "allow"},
     "JobSpec.schedule: default differs"),
    ("ksched.DeadLetter", "value", "", "DeadLetter.value: the default \"\" does not belong"),
    ("ksched.TaskFailed", "message", "", "TaskFailed.message: the avsc has the default \"\", the class has none"),
])
def test_a_changed_or_added_default_is_reported(name: str, field: str, default: Any, expected: str) -> None:
    report = drifted(name, lambda fs: field_of(fs, field).update(default=default))
    assert report and report[0].startswith(expected), report


def test_a_dropped_default_is_reported() -> None:
    report = drifted("ksched.Schedule", lambda fs: field_of(fs, "timezone").pop("default"))
    assert report == ["Schedule.timezone: the class has the default 'UTC', the avsc has none"]


def test_a_union_whose_null_moved_behind_its_default_is_reported() -> None:
    report = drifted("ksched.AttemptView", lambda fs: field_of(fs, "exit_code").update(type=["int", "null"]))
    assert report == ["AttemptView.exit_code: the default null does not belong to the first branch of the union "
                      "[\"int\",\"null\"]"]


def test_drift_on_the_python_side_is_reported_too() -> None:
    @dataclasses.dataclass(frozen=True)
    class Tick:
        SCHEMA: typing.ClassVar[str] = "ksched.Tick"
        partition: int
        now_ms: int
        ticker: str = "leader"
        resumed_from_ms: int | None = None

    assert drift(Tick, NAMED["ksched.Tick"], NAMED) == ["Tick.ticker: default differs: avsc \"\", class 'leader'"]


class Colour(enum.Enum):
    RED = "RED"
    BLUE = "BLUE"


@dataclasses.dataclass(frozen=True)
class Paint:
    SCHEMA: typing.ClassVar[str] = "ksched.Paint"
    colour: Colour = Colour.RED


def test_an_enum_maps_to_an_avro_enum_with_the_same_symbols() -> None:
    def schema(symbols: list[str], default: str = "RED") -> Schema:
        return {"type": "record", "name": "Paint", "namespace": "ksched", "fields": [
            {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": symbols}, "default": default}]}

    assert drift(Paint, schema(["RED", "BLUE"]), NAMED) == []
    assert drift(Paint, schema(["RED", "GREEN"]), NAMED) == [
        "Paint.colour: enum symbols differ: avsc ['RED', 'GREEN'], class ['RED', 'BLUE']"]
    assert drift(Paint, schema(["RED", "BLUE"], "BLUE"), NAMED) == [
        "Paint.colour: default differs: avsc \"BLUE\", class <Colour.RED: 'RED'>"]


def test_a_record_of_another_name_is_reported() -> None:
    schema = copy.deepcopy(NAMED["ksched.Tick"])
    schema["name"] = "Tock"
    assert drift(CLASSES["ksched.Tick"], schema, NAMED) == ["Tick: avsc names the record ksched.Tock, the class says "
                                                            "ksched.Tick"]


def test_a_reference_to_a_record_without_an_avsc_is_reported() -> None:
    without = {n: s for n, s in NAMED.items() if n != "ksched.ArtifactRef"}
    assert drift(CLASSES["ksched.TaskReady"], NAMED["ksched.TaskReady"], without) == [
        "TaskReady.artifact: the avsc refers to ksched.ArtifactRef, which has no .avsc"]
