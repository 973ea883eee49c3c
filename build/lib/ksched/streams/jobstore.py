"""The job store: one table value per job (its state, the last inbox offset applied to it, and its outbox),
how that value is encoded, and a cache of decoded values in front of the table.

The value is JSON spliced from cached pieces: tasks and specs are immutable and keep their identity from one
state to the next, so a 1,000-task run re-encodes only what changed.
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

from ksched.schemas.events import JobSpec
from ksched.schemas.records import from_data, to_compact_data

from .core.model import JobState, Run, Task

#: Keys that are not jobs start with one of these: ksched's own (the partition clock) and Faust's (it keeps
#: its changelog offset in the same RocksDB).
RESERVED = b"\x01"
FAUST_RESERVED = b"__faust"


class Store(Protocol):
    """The table entries of the one partition being processed."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def items(self) -> Iterator[tuple[bytes, bytes]]: ...


def is_job_key(key: bytes) -> bool:
    return not key.startswith(RESERVED) and not key.startswith(FAUST_RESERVED)


@dataclass(frozen=True, slots=True)
class Message:
    """One output record, ready to produce (partition None: the producer's partitioner decides)."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None


#: Outputs of the inputs applied to a job and not yet known to be delivered: (input offset, its outputs).
Outbox = list[tuple[int, list[Message]]]


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One table value: the state, the last inbox offset applied to it, and its unconfirmed outputs."""

    applied: int
    state: JobState
    outbox: Outbox


# --- encoding -------------------------------------------------------------------------------------


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode()


def _unb64(s: str | None) -> bytes | None:
    return None if s is None else base64.b64decode(s)


_SEP = (",", ":")
#: JSON of recently encoded tasks, by identity. The entry holds the task, so its id cannot be reused while
#: cached.
_JSON: OrderedDict[int, tuple[Any, str]] = OrderedDict()
_JSON_SIZE = 200_000
_NO_SPEC = JobSpec("", [])


def _cached_json(obj: Task | JobSpec) -> str:
    hit = _JSON.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    text = json.dumps(to_compact_data(obj), separators=_SEP)
    _JSON[id(obj)] = (obj, text)
    if len(_JSON) > _JSON_SIZE:
        for _ in range(_JSON_SIZE // 10):
            _JSON.popitem(last=False)
    return text


def _with(head: dict[str, Any] | str, name: str, body: str) -> str:
    """`head` (a dict, or an object already as JSON) with one more member whose value is already JSON."""
    text = head if isinstance(head, str) else json.dumps(head, separators=_SEP)
    return f'{text[:-1]}{"," if len(text) > 2 else ""}"{name}":{body}}}'


def _run_json(run: Run) -> str:
    head = to_compact_data(replace(run, tasks={}))
    head.pop("tasks", None)
    tasks = ",".join(f"{json.dumps(n)}:{_cached_json(t)}" for n, t in run.tasks.items())
    return _with(head, "tasks", "{" + tasks + "}")


def encode_record(rec: JobRecord) -> bytes:
    outbox = [[o, [[m.topic, _b64(m.key), _b64(m.value), m.partition] for m in msgs]] for o, msgs in rec.outbox]
    st = rec.state
    state = to_compact_data(replace(st, runs={}, spec=_NO_SPEC, revisions={}))
    del state["spec"]
    runs = ",".join(f"{json.dumps(rid)}:{_run_json(r)}" for rid, r in st.runs.items())
    revisions = ",".join(f'"{rev}":{_cached_json(spec)}' for rev, spec in st.revisions.items())
    body = _with(_with(state, "spec", _cached_json(st.spec)), "runs", "{" + runs + "}")
    if revisions:
        body = _with(body, "revisions", "{" + revisions + "}")
    head = json.dumps({"o": rec.applied, "x": outbox}, separators=_SEP)
    return f'{head[:-1]},"s":{body}}}'.encode()


def decode_record(raw: bytes) -> JobRecord:
    data = json.loads(raw)
    outbox = [(int(o), [Message(t, _unb64(k), _unb64(v), p) for t, k, v, p in msgs])
              for o, msgs in data.get("x", [])]
    return JobRecord(int(data["o"]), from_data(JobState, data["s"]), outbox)


def decode_state(raw: bytes) -> tuple[int, JobState]:
    rec = decode_record(raw)
    return rec.applied, rec.state


# --- the store with its cache -----------------------------------------------------------------------


class JobStore:
    """Loads and saves job records of this worker's partitions, keeping recently used ones decoded.

    This worker is the only writer of its partitions' keys, so the cache cannot go stale; a partition's
    entries are dropped when it is revoked or recovered.
    """

    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = capacity
        self._records: OrderedDict[tuple[int, str], JobRecord] = OrderedDict()

    def load(self, store: Store, partition: int, job_id: str) -> JobRecord | None:
        cached = self._records.get((partition, job_id))
        if cached is not None:
            self._records.move_to_end((partition, job_id))
            return cached
        raw = store.get(job_id.encode())
        if raw is None:
            return None
        rec = decode_record(raw)
        self._remember(partition, job_id, rec)
        return rec

    def save(self, store: Store, partition: int, job_id: str, rec: JobRecord) -> None:
        store.put(job_id.encode(), encode_record(rec))  # state and outputs in one record, atomically
        self._remember(partition, job_id, rec)

    def scan(self, store: Store) -> Iterator[JobRecord]:
        """Every job record of the partition, decoded (recovery reads them all once)."""
        for key, raw in store.items():
            if is_job_key(key):
                yield decode_record(raw)

    def forget(self, partitions: set[int]) -> None:
        for cached in [k for k in self._records if k[0] in partitions]:
            del self._records[cached]

    def _remember(self, partition: int, job_id: str, rec: JobRecord) -> None:
        self._records[(partition, job_id)] = rec
        self._records.move_to_end((partition, job_id))
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)
