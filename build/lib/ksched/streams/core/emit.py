"""What a decision emits: a record for a channel, keyed; the shell maps channels to topics and keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Where an emitted record goes; the shell maps channels to topics and keys.
EVENTS = "events"  # the decision log, key: job id
READY = "ready"  # the ready topic of the task's priority, key: task id
CONTROL = "control"  # executor control, key: executor id
CATALOG = "catalog"  # compacted job catalog, key: job id (record None: tombstone)
RUNS = "runs"  # compacted run views, key: run id
TASKS = "tasks"  # compacted task views, key: task id
DLQ = "dlq"  # dead-letter the input event, with `record` as the reason


@dataclass(frozen=True, slots=True)
class Emit:
    channel: str
    key: str
    record: Any
