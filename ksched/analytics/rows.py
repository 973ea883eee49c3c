"""Flat rows for analytics: what a SQL user expects of runs, tasks, attempts and the decision log.

Pure: views and decisions in, rows out. Each row goes to Kafka as Kafka Connect's JSON with an embedded schema
(`{"schema": ..., "payload": ...}`, what `JsonConverter` with `schemas.enable=true` reads), keyed by a struct
of the table's primary key, so a stock sink (the Debezium JDBC sink) upserts it without a schema registry or a
transform. Instants are Connect `Timestamp`s (epoch milliseconds, a SQL `timestamp` column); durations are
milliseconds. The tables and their columns are documented in docs/ANALYTICS.md.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from ksched.schemas.events import RunView, TaskView
from ksched.schemas.records import to_data

TIMESTAMP = "org.apache.kafka.connect.data.Timestamp"


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # a Connect schema type: string, int32, int64, boolean
    optional: bool = False
    timestamp: bool = False

    def schema(self) -> dict[str, Any]:
        s: dict[str, Any] = {"field": self.name, "type": self.type, "optional": self.optional}
        if self.timestamp:
            s |= {"name": TIMESTAMP, "version": 1}
        return s


def _ts(name: str, optional: bool = True) -> Column:
    return Column(name, "int64", optional, timestamp=True)


@dataclass(frozen=True)
class Table:
    """One analytics topic and the table a sink makes of it: `<prefix>.analytics.<name>`."""

    name: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    doc: str

    def value_schema(self) -> dict[str, Any]:
        return {"type": "struct", "name": f"ksched.analytics.{self.name}", "optional": False,
                "fields": [c.schema() for c in self.columns]}

    def key_schema(self) -> dict[str, Any]:
        by_name = {c.name: c for c in self.columns}
        return {"type": "struct", "name": f"ksched.analytics.{self.name}.Key", "optional": False,
                "fields": [by_name[k].schema() for k in self.key]}


RUNS = Table("runs", ("run_id",), (
    Column("run_id", "string"), Column("job_id", "string"), Column("revision", "int32"),
    Column("trigger", "string"), Column("state", "string"),
    _ts("scheduled_for", optional=False), _ts("created_at", optional=False), _ts("started_at"), _ts("finished_at"),
    Column("duration_ms", "int64", True), Column("start_delay_ms", "int64", True),
    Column("tasks", "int32"), Column("tasks_succeeded", "int32"), Column("tasks_failed", "int32"),
    Column("reason", "string"),
), "one row per run, kept current: its state, instants and task counts")

TASKS = Table("tasks", ("task_id",), (
    Column("task_id", "string"), Column("job_id", "string"), Column("run_id", "string"), Column("task", "string"),
    Column("state", "string"), Column("attempts", "int32"), Column("priority", "string"),
    _ts("started_at"), _ts("finished_at"), Column("duration_ms", "int64", True),
    Column("exit_code", "int32", True), Column("executor_id", "string"), Column("reason", "string"),
), "one row per task of a run, kept current; instants, exit code and executor are its last attempt's")

ATTEMPTS = Table("attempts", ("attempt_id",), (
    Column("attempt_id", "string"), Column("task_id", "string"), Column("job_id", "string"),
    Column("run_id", "string"), Column("task", "string"), Column("attempt", "int32"),
    Column("fencing_token", "int64"), Column("executor_id", "string"), Column("outcome", "string"),
    Column("exit_code", "int32", True), _ts("ready_at"), _ts("started_at"), _ts("finished_at"),
    Column("duration_ms", "int64", True), Column("reason", "string"),
), "one row per attempt (outcome empty while it runs), kept current")

DECISIONS = Table("decisions", ("event_id",), (
    Column("event_id", "string"), Column("job_id", "string"), Column("type", "string"),
    Column("run_id", "string"), Column("task_id", "string"), _ts("at", optional=False),
    Column("log_partition", "int32"), Column("log_offset", "int64"), Column("details", "string"),
), "the decision log, append-only: one row per decision, never updated (its id is derived, so a redelivery "
   "rewrites the same row)")

TABLES = (RUNS, TASKS, ATTEMPTS, DECISIONS)


@dataclass(frozen=True)
class Row:
    table: Table
    values: dict[str, Any]

    @property
    def key(self) -> tuple[Any, ...]:
        return tuple(self.values[k] for k in self.table.key)

    def key_bytes(self) -> bytes:
        return _envelope(_schema_text(self.table, "key"), {k: self.values[k] for k in self.table.key})

    def value_bytes(self) -> bytes:
        return _envelope(_schema_text(self.table, "value"), self.values)


@cache
def _schema_text(table: Table, part: str) -> str:
    """The schema half of a table's keys or values, the same for every row: serialized once."""
    schema = table.key_schema() if part == "key" else table.value_schema()
    return json.dumps(schema, separators=(",", ":"))


def _envelope(schema_text: str, payload: dict[str, Any]) -> bytes:
    return ('{"schema":' + schema_text + ',"payload":' + json.dumps(payload, separators=(",", ":")) + "}").encode()


def _duration(start: int | None, end: int | None) -> int | None:
    return None if start is None or end is None else max(0, end - start)


def run_row(view: RunView) -> Row:
    """A run view as a row. `started_at` is its first attempt's start; the duration runs from there to its end."""
    counts = view.task_counts
    started = view.started_at_ms
    return Row(RUNS, {
        "run_id": view.run_id, "job_id": view.job_id, "revision": view.revision, "trigger": view.trigger,
        "state": view.state, "scheduled_for": view.scheduled_for_ms, "created_at": view.created_at_ms,
        "started_at": started, "finished_at": view.finished_at_ms,
        "duration_ms": _duration(started, view.finished_at_ms),
        "start_delay_ms": None if started is None else started - view.scheduled_for_ms,
        "tasks": sum(counts.values()), "tasks_succeeded": counts.get("SUCCEEDED", 0),
        "tasks_failed": counts.get("FAILED", 0) + counts.get("UPSTREAM_FAILED", 0), "reason": view.reason,
    })


def task_rows(view: TaskView) -> list[Row]:
    """A task view as its task row and one row per attempt."""
    last = view.attempts[-1] if view.attempts else None
    rows = [Row(TASKS, {
        "task_id": view.task_id, "job_id": view.job_id, "run_id": view.run_id, "task": view.name,
        "state": view.state, "attempts": view.attempt, "priority": view.priority,
        "started_at": last.started_at_ms if last else None, "finished_at": last.finished_at_ms if last else None,
        "duration_ms": _duration(last.started_at_ms, last.finished_at_ms) if last else None,
        "exit_code": last.exit_code if last else None, "executor_id": last.executor_id if last else "",
        "reason": view.reason,
    })]
    for a in view.attempts:
        rows.append(Row(ATTEMPTS, {
            "attempt_id": f"{view.task_id}#{a.attempt}", "task_id": view.task_id, "job_id": view.job_id,
            "run_id": view.run_id, "task": view.name, "attempt": a.attempt, "fencing_token": a.fencing_token,
            "executor_id": a.executor_id, "outcome": a.outcome, "exit_code": a.exit_code,
            "ready_at": a.ready_at_ms, "started_at": a.started_at_ms, "finished_at": a.finished_at_ms,
            "duration_ms": _duration(a.started_at_ms, a.finished_at_ms), "reason": a.reason,
        }))
    return rows


def decision_row(event: Any, partition: int, offset: int) -> Row | None:
    """A decision-log record as an audit row (None for a record without an event id)."""
    event_id = getattr(event, "event_id", None)
    if not event_id:
        return None
    details = json.dumps(to_data(event), separators=(",", ":"), sort_keys=True,
                         default=lambda b: base64.b64encode(b).decode())
    return Row(DECISIONS, {
        "event_id": event_id, "job_id": getattr(event, "job_id", ""), "type": type(event).__name__,
        "run_id": getattr(event, "run_id", "") or "", "task_id": getattr(event, "task_id", "") or "",
        "at": int(getattr(event, "at_ms", 0)), "log_partition": partition, "log_offset": offset,
        "details": details,
    })


def rows_for(topic_kind: str, event: Any, partition: int, offset: int) -> list[Row]:
    """The rows one record of a view topic ("runs", "tasks") or of the decision log ("events") makes."""
    if topic_kind == "runs" and isinstance(event, RunView):
        return [run_row(event)]
    if topic_kind == "tasks" and isinstance(event, TaskView):
        return task_rows(event)
    if topic_kind == "events":
        row = decision_row(event, partition, offset)
        return [row] if row is not None else []
    return []


def coalesce(rows: list[Row]) -> list[Row]:
    """The last row per table and key, in first-seen order: a batch writes each changed row once."""
    last: dict[tuple[str, tuple[Any, ...]], Row] = {}
    for r in rows:
        last.pop((r.table.name, r.key), None)
        last[(r.table.name, r.key)] = r
    return list(last.values())
