"""The job store: what the scheduler keeps per job in its table (the job record with its state, the last inbox
offset applied and its outbox; its definitions and the tasks of large runs under keys of their own), how it is
encoded, and a cache of decoded states in front of the table.

An event rewrites the job record and only the other keys it changed (see "layout" below). Values are JSON spliced
from cached pieces: tasks and specs are immutable and keep their identity from one state to the next.
"""

from __future__ import annotations

import base64
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
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
    """A job record's key (not a task or definition kept apart, nor a reserved key)."""
    return not key.startswith(RESERVED) and not key.startswith(FAUST_RESERVED) and b"\0" not in key


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
    #: The job's next wake-up as the shell computed it when it wrote the record, with the look-ahead it used
    #: (`(wake_ms, lookahead_ms)`): a worker taking the partition over rebuilds its due index from it without
    #: decoding the job (`JobStore.recovery_scan`). Derived from the state, so not part of the record's identity.
    wake: tuple[int | None, int] | None = field(default=None, compare=False)
    #: The input offsets of the outbox entries kept under keys of their own (`outbox_key`), not in the record: how
    #: the entries are stored, so not part of the record's identity either.
    apart: frozenset[int] = field(default=frozenset(), compare=False)


# --- layout -----------------------------------------------------------------------------------------
#
# A job is stored under its id (the *job record*: its cron and lifecycle state, its runs, the inbox offset it
# last applied, its outbox). A definition of more than `SPLIT_TASKS` tasks (each revision still in use) is kept
# under `<job>\0s\0<revision>`, written when the job is submitted; its retired runs under `<job>\0r`, written
# when a run leaves the state; a run with more than `SPLIT_TASKS` tasks keeps each task under a key of its own
# (`<job>\0t\0<run>/<task>`): an event then rewrites the job record and only the tasks it changed, so its cost
# follows the change, not the size of the job. A job holding more than `SPLIT_RUNS` runs (a per-second job whose
# runs queue while executors are busy or the worker catches up) keeps each run under `<job>\0u\0<run>` and only
# their ids in the job record: an event then rewrites the runs it changed, not every run the job holds. A job whose
# outbox holds more than `OUTBOX_INLINE` entries keeps each under `<job>\0x\0<input offset>` (written once,
# deleted when it leaves the outbox) and only their offsets in the record. Small jobs keep everything in the job
# record (one write per event).
#
# Keys no record refers to yet (a new revision's definition, the tasks of a new run) are written first. Then the
# job record, which carries the *journal*: the new value of every other key written for the same input. A crash
# between the job record and those keys leaves a prefix of the writes (one table, one changelog partition: they
# are ordered), and loading lays the journal over what the keys hold, so a job is never read half-written. The
# next write of the job replaces the journal (by then the keys were written after it).

SEP = "\0"
#: Runs and definitions with more tasks than this keep each task (definition) under a key of its own.
SPLIT_TASKS = 8
#: Large definitions are kept under keys of their own (off only to measure the old layout: `bench state_bytes`).
SPLIT_SPECS = True
#: A job with more runs than this keeps each run under a key of its own (the job record keeps their ids).
SPLIT_RUNS = 8
#: A job whose outbox holds more entries than this keeps each entry under a key of its own (the record keeps their
#: offsets). The outbox holds the outputs of every input of the decision log's last linger (about the commit
#: interval): in a 1,002-task fan-out it held 67 entries at the median, and each write of the job rewrote them, a
#: job record of 40 KB (p90 86 KB) per event, to RocksDB and the changelog.
OUTBOX_INLINE = 8
_SPLIT = "$split"


def task_key(job_id: str, run_id: str, name: str) -> str:
    return f"{job_id}{SEP}t{SEP}{run_id}/{name}"


def run_key(job_id: str, run_id: str) -> str:
    return f"{job_id}{SEP}u{SEP}{run_id}"


def spec_key(job_id: str, revision: int) -> str:
    return f"{job_id}{SEP}s{SEP}{revision}"


def outbox_key(job_id: str, offset: int) -> str:
    """An outbox entry of a job whose outbox holds more than `OUTBOX_INLINE` entries: written once, deleted when
    the entry leaves the outbox."""
    return f"{job_id}{SEP}x{SEP}{offset}"


def retired_key(job_id: str) -> str:
    """The job's retired runs (whose views are kept): written when a run leaves the state, not every event."""
    return f"{job_id}{SEP}r"


def _split_spec(spec: JobSpec) -> bool:
    """A large definition is kept apart, so that no event but a submission rewrites it. A small one stays in the
    job record: a submission is then one write (the changelog's producer is the worker's bottleneck when jobs
    are registered in bulk; a definition under a key of its own cost 14 % of the registration rate)."""
    return SPLIT_SPECS and len(spec.tasks) > SPLIT_TASKS


def _split_run(run: Run) -> bool:
    return len(run.tasks) > SPLIT_TASKS


def _split_runs(runs: dict[str, Run]) -> bool:
    return len(runs) > SPLIT_RUNS


def _specs(state: JobState) -> dict[int, JobSpec]:
    return {**state.revisions, state.revision: state.spec}


def changes(before: JobState | None, after: JobState) -> dict[str, str | None]:
    """The keys other than the job record that `after` writes (new JSON) or deletes (None), found by identity:
    records are immutable, so an unchanged task or definition is the same object as before."""
    fresh, updates = split_changes(before, after)
    return {**fresh, **updates}


def split_changes(before: JobState | None,
                  after: JobState) -> tuple[dict[str, str], dict[str, str | None]]:
    """`changes`, as (fresh, updates): fresh keys are ones the state before did not refer to (a new revision's
    definition, the tasks of a new run); they may be written before the job record, without a journal, since no
    record that refers to them exists before it (a crash leaves them unreferenced until the input is decided
    again, the same way). Updates and deletions of keys the record already refers to go in its journal."""
    fresh: dict[str, str] = {}
    out: dict[str, str | None] = {}
    job = after.job_id
    old_specs = _specs(before) if before is not None else {}
    new_specs = _specs(after)
    for rev, spec in new_specs.items():
        if _split_spec(spec) and old_specs.get(rev) is not spec:
            (out if rev in old_specs else fresh)[spec_key(job, rev)] = _cached_json(spec)
    for rev, spec in old_specs.items():
        if _split_spec(spec) and rev not in new_specs:
            out[spec_key(job, rev)] = None
    old_retired = before.retired if before is not None else ()
    if after.retired is not old_retired and after.retired != old_retired:
        out[retired_key(job)] = _json(after.retired) if after.retired else None
    old_runs = before.runs if before is not None else {}
    _run_changes(job, old_runs, after.runs, fresh, out)
    _task_changes(job, old_runs, after.runs, fresh, out)
    return fresh, out


def _run_changes(job: str, old_runs: dict[str, Run], new_runs: dict[str, Run], fresh: dict[str, str],
                 out: dict[str, str | None]) -> None:
    """The run keys of a job holding many runs: a run the record did not refer to is fresh (a new run, or every
    run when the job starts keeping them apart); a changed one is updated; one no longer kept apart deleted."""
    old = old_runs if _split_runs(old_runs) else {}
    new = new_runs if _split_runs(new_runs) else {}
    for rid, run in new.items():
        was = old.get(rid)
        if was is None:
            fresh[run_key(job, rid)] = _run_json(run)
        elif was is not run:
            out[run_key(job, rid)] = _run_json(run)
    for rid in old:
        if rid not in new:
            out[run_key(job, rid)] = None


def _task_changes(job: str, old_runs: dict[str, Run], new_runs: dict[str, Run], fresh: dict[str, str],
                  out: dict[str, str | None]) -> None:
    """The task keys of large runs: a new run's all fresh; a known run's changed tasks; a dropped run's deleted."""
    for rid, run in new_runs.items():
        if not _split_run(run):
            continue
        old = old_runs.get(rid)
        if old is None:
            fresh.update((task_key(job, rid, name), _cached_json(task)) for name, task in run.tasks.items())
            continue
        old_tasks = old.tasks if _split_run(old) else {}
        for name, task in run.tasks.items():
            if old_tasks.get(name) is not task:
                out[task_key(job, rid, name)] = _cached_json(task)
    for rid, run in old_runs.items():
        if rid not in new_runs and _split_run(run):
            out.update((task_key(job, rid, name), None) for name in run.tasks)


# --- encoding -------------------------------------------------------------------------------------


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode()


def _unb64(s: str | None) -> bytes | None:
    return None if s is None else base64.b64decode(s)


_SEP = (",", ":")


def _unserializable(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


#: The C encoder `json.dumps` builds on every call, built once (the stored records are trees, so it needs no
#: check for cycles): a call costs about half of `json.dumps`, and a job's write makes three or four.
_C_ENCODER = (None if json.encoder.c_make_encoder is None else  # type: ignore[attr-defined]
              json.encoder.c_make_encoder(None, _unserializable,  # type: ignore[attr-defined]
                                          json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True))


def _json(obj: Any) -> str:
    """`obj` as compact JSON, as `json.dumps(obj, separators=(",", ":"))` writes it."""
    if _C_ENCODER is None:
        return json.dumps(obj, separators=_SEP)
    return "".join(_C_ENCODER(obj, 0))
#: JSON of recently encoded tasks and definitions, by identity. The entry holds the object, so its id cannot be
#: reused while cached. It serves the jobs being worked on (their unchanged parts are not encoded again), so it
#: is about twice the store's cache of decoded records: it pins what it holds (200,000 entries held
#: 1.9 KiB per registered job).
_JSON: OrderedDict[int, tuple[Any, str]] = OrderedDict()
_JSON_SIZE = 8_192
#: The fields of a job's state that `encode_record` writes itself (or under other keys).
_WRITTEN_APART = ("runs", "spec", "revisions", "retired")


def _cached_json(obj: Task | JobSpec) -> str:
    hit = _JSON.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    text = _json(to_compact_data(obj))
    _JSON[id(obj)] = (obj, text)
    if len(_JSON) > _JSON_SIZE:
        for _ in range(_JSON_SIZE // 10):
            _JSON.popitem(last=False)
    return text


#: JSON of recent outbox entries, by identity (as `_JSON`). A busy job keeps the outputs of every input of the last
#: linger of the decision log's producer in its outbox, and each write of it wrote them all again: in a
#: 1,002-task fan-out, encoding the outbox was a fifth of the worker's samples (py-spy).
_OUTBOX_JSON: OrderedDict[int, tuple[tuple[int, list[Message]], str]] = OrderedDict()


def _outbox_apart(job_id: str, rec: JobRecord, fresh: dict[str, str], updates: dict[str, str | None]) -> JobRecord:
    """`rec` with the outbox entries to keep apart: those already apart and still in the outbox, and, once the
    outbox holds more than `OUTBOX_INLINE`, every entry (each written once, in `fresh`). An entry apart that left
    the outbox is deleted (in `updates`, the journal)."""
    kept = {entry[0] for entry in rec.outbox}
    apart = {o for o in rec.apart if o in kept}
    for o in rec.apart:
        if o not in kept:
            updates[outbox_key(job_id, o)] = None
    if len(rec.outbox) > OUTBOX_INLINE:
        for entry in rec.outbox:
            if entry[0] not in apart:
                fresh[outbox_key(job_id, entry[0])] = _outbox_entry_json(entry)
                apart.add(entry[0])
    return rec if apart == rec.apart else replace(rec, apart=frozenset(apart))


def _outbox_entry_json(entry: tuple[int, list[Message]]) -> str:
    hit = _OUTBOX_JSON.get(id(entry))
    if hit is not None and hit[0] is entry:
        return hit[1]
    o, msgs = entry
    text = _json([o, [[m.topic, _b64(m.key), _b64(m.value), m.partition] for m in msgs]])
    _OUTBOX_JSON[id(entry)] = (entry, text)
    if len(_OUTBOX_JSON) > _JSON_SIZE:
        for _ in range(_JSON_SIZE // 10):
            _OUTBOX_JSON.popitem(last=False)
    return text


def _with(head: dict[str, Any] | str, name: str, body: str) -> str:
    """`head` (a dict, or an object already as JSON) with one more member whose value is already JSON."""
    text = head if isinstance(head, str) else _json(head)
    return f'{text[:-1]}{"," if len(text) > 2 else ""}"{name}":{body}}}'


#: JSON of each recent run's latest version, by run id (it names its job), valid while the run is that same object:
#: an unchanged run is not encoded again. One entry per run, not per version as `_JSON` kept them: each version of a
#: 1,000-task run pins its own dict of tasks (about 36 KB), and up to 8,192 of them could be held.
_RUN_JSON: OrderedDict[str, tuple[Run, str]] = OrderedDict()
_RUN_JSON_SIZE = 4_096


def _run_json(run: Run) -> str:
    hit = _RUN_JSON.get(run.run_id)
    if hit is not None and hit[0] is run:
        return hit[1]
    text = _encode_run(run)
    _RUN_JSON.pop(run.run_id, None)
    _RUN_JSON[run.run_id] = (run, text)
    if len(_RUN_JSON) > _RUN_JSON_SIZE:
        for _ in range(_RUN_JSON_SIZE // 10):
            _RUN_JSON.popitem(last=False)
    return text


def _encode_run(run: Run) -> str:
    head = to_compact_data(run, ("tasks",))
    if _split_run(run):
        return _with(head, "tasks", json.dumps(_SPLIT))
    tasks = ",".join(f"{json.dumps(n)}:{_cached_json(t)}" for n, t in run.tasks.items())
    return _with(head, "tasks", "{" + tasks + "}")


def _spec_json(spec: JobSpec) -> str:
    return json.dumps(_SPLIT) if _split_spec(spec) else _cached_json(spec)


def encode_record(rec: JobRecord, journal: dict[str, str | None] | None = None) -> bytes:
    """The job record; runs and definitions over `SPLIT_TASKS` tasks are left out (see `changes`), and `journal`
    holds what this write puts under those other keys."""
    outbox = "[" + ",".join(str(entry[0]) if entry[0] in rec.apart else _outbox_entry_json(entry)
                            for entry in rec.outbox) + "]"
    st = rec.state
    state = to_compact_data(st, _WRITTEN_APART)
    if st.retired:
        state["retired"] = _SPLIT
    if _split_runs(st.runs):
        runs = ",".join(f'{json.dumps(rid)}:"{_SPLIT}"' for rid in st.runs)
    else:
        runs = ",".join(f"{json.dumps(rid)}:{_run_json(r)}" for rid, r in st.runs.items())
    revisions = ",".join(f'"{rev}":{_spec_json(spec)}' for rev, spec in st.revisions.items())
    body = _with(_with(state, "spec", _spec_json(st.spec)), "runs", "{" + runs + "}")
    if revisions:
        body = _with(body, "revisions", "{" + revisions + "}")
    head = _with(_json({"o": rec.applied, **({"w": rec.wake[0], "l": rec.wake[1]} if rec.wake else {})}), "x", outbox)
    text = f'{head[:-1]},"s":{body}}}'
    if journal:
        entries = ",".join(f"{json.dumps(k)}:{'null' if v is None else v}" for k, v in journal.items())
        text = _with(text, "j", "{" + entries + "}")
    return text.encode()


Fetch = Callable[[bytes], "bytes | None"]
#: The head of a job record: the input offset it applied, its wake-up and look-ahead (as `encode_record` writes it).
_HEAD = re.compile(rb'\{"o":(-?\d+),"w":(null|-?\d+),"l":(-?\d+),')


def _no_fetch(key: bytes) -> bytes | None:
    raise ValueError(f"the job record refers to {key!r}, and no store was given to read it from")


def decode_record(raw: bytes, fetch: Fetch = _no_fetch) -> JobRecord:
    """A job record, with what it keeps under other keys read through `fetch` (the journal first)."""
    return _decode(raw, fetch)[0]


def _decode(raw: bytes, fetch: Fetch) -> tuple[JobRecord, dict[str, Any]]:
    data = json.loads(raw)
    s = data["s"]
    journal: dict[str, Any] = data.get("j", {})
    job = s["job_id"]

    def part(key: str) -> Any:
        if key in journal:
            return journal[key]
        found = fetch(key.encode())
        if found is None:
            raise ValueError(f"job {job!r}: the key {key!r} its record refers to is missing")
        return json.loads(found)

    outbox, apart = _decode_outbox(data.get("x", []), lambda o: part(outbox_key(job, o)))

    if s.get("retired") == _SPLIT:
        s["retired"] = part(retired_key(job))
    current = s.get("revision", 1)
    if s.get("spec") == _SPLIT:
        s["spec"] = part(spec_key(job, current))
    revisions = s.get("revisions", {})
    for rev, spec in revisions.items():
        if spec == _SPLIT:
            revisions[rev] = part(spec_key(job, int(rev)))
    runs = s.get("runs", {})
    for rid, run in runs.items():
        if run == _SPLIT:
            run = runs[rid] = dict(part(run_key(job, rid)))  # a copy: the journal keeps the value it wrote
        if run.get("tasks") == _SPLIT:
            rev = run["revision"]
            spec = s["spec"] if rev == current else revisions.get(str(rev), s["spec"])
            run["tasks"] = {t["name"]: part(task_key(job, rid, t["name"])) for t in spec["tasks"]}
    wake = (data["w"], int(data["l"])) if "l" in data else None
    return JobRecord(int(data["o"]), from_data(JobState, s), outbox, wake, apart), journal


def _decode_outbox(entries: list[Any], part: Callable[[int], Any]) -> tuple[Outbox, frozenset[int]]:
    """The outbox, with the entries kept under keys of their own (an offset in the record) read through `part`."""
    outbox: Outbox = []
    apart: set[int] = set()
    for entry in entries:
        if isinstance(entry, int):
            apart.add(entry)
            entry = part(entry)
        o, msgs = entry
        outbox.append((int(o), [Message(t, _unb64(k), _unb64(v), p) for t, k, v, p in msgs]))
    return outbox, frozenset(apart)


def decode_state(raw: bytes, fetch: Fetch = _no_fetch) -> tuple[int, JobState]:
    rec = decode_record(raw, fetch)
    return rec.applied, rec.state


# --- the store with its cache -----------------------------------------------------------------------


class JobStore:
    """Loads and saves job records of this worker's partitions, keeping recently used ones decoded.

    This worker is the only writer of its partitions' keys, so the cache cannot go stale; a partition's
    entries are dropped when it is revoked or recovered.
    """

    def __init__(self, capacity: int = 4_096) -> None:
        self.capacity = capacity
        self._records: OrderedDict[tuple[int, str], JobRecord] = OrderedDict()
        #: Journals of job records read from the store, carried into their job's next write.
        self._pending: dict[tuple[int, str], dict[str, str | None]] = {}

    def load(self, store: Store, partition: int, job_id: str) -> JobRecord | None:
        cached = self._records.get((partition, job_id))
        if cached is not None:
            self._records.move_to_end((partition, job_id))
            return cached
        raw = store.get(job_id.encode())
        if raw is None:
            return None
        rec, journal = _decode(raw, store.get)
        if journal:  # its keys may not all have been written (a crash): the next write writes them again
            self._pending[(partition, job_id)] = {
                k: None if v is None else _json(v) for k, v in journal.items()}
        self._remember(partition, job_id, rec)
        return rec

    def save(self, store: Store, partition: int, job_id: str, rec: JobRecord, before: JobState | None,
             cache: bool = True) -> None:
        """Write the job record (state, outputs and the journal of this write, atomically), then the other keys
        that changed since `before` (the state the decision started from); keep it decoded if `cache`."""
        fresh, updates = split_changes(before, rec.state)
        rec = _outbox_apart(job_id, rec, fresh, updates)
        for key, text in fresh.items():  # keys no record refers to yet: safe ahead of it, no journal needed
            store.put(key.encode(), text.encode())
        journal = {**self._pending.pop((partition, job_id), {}), **updates}
        store.put(job_id.encode(), encode_record(rec, journal))
        for key, value in journal.items():
            if value is None:
                store.delete(key.encode())
            else:
                store.put(key.encode(), value.encode())
        if cache:
            self._remember(partition, job_id, rec)
        else:
            self._records.pop((partition, job_id), None)

    def scan(self, store: Store) -> Iterator[JobRecord]:
        """Every job record of the partition, decoded."""
        for key, raw in store.items():
            if is_job_key(key):
                yield decode_record(raw, store.get)

    def recovery_scan(self, store: Store, replay_from: int,
                      lookahead_ms: int) -> Iterator[tuple[str, int | None, JobRecord | None]]:
        """Every job of the partition as (job id, next wake-up, record). A job last written for an input before
        `replay_from` (so its outbox holds nothing to publish again: its entries are of that input or earlier)
        with a wake-up computed with this look-ahead is not decoded (record None): recovery needs only its
        wake-up, read from the record's head. Decoding every job was most of what taking a partition over cost
        (57 us a job: 6 s for 100,000). The others come decoded, with the wake-up None for the caller to
        compute."""
        for key, raw in store.items():
            if not is_job_key(key):
                continue
            head = _HEAD.match(raw)
            if head is not None and int(head[1]) < replay_from and int(head[3]) == lookahead_ms:
                yield key.decode(), None if head[2] == b"null" else int(head[2]), None
            else:
                rec = decode_record(raw, store.get)
                yield rec.state.job_id, None, rec

    def rewrite(self, store: Store, job_id: str, state: JobState, apart: Iterable[int] = ()) -> int:
        """Write the job's record and every other key it has again, as they are (so that they reach the changelog:
        `streams.localstate`), its outbox entries kept apart (`apart`) too. Returns how many keys."""
        keys = [job_id, *changes(None, state), *(outbox_key(job_id, o) for o in apart)]
        for key in keys:
            raw = store.get(key.encode())
            if raw is not None:
                store.put(key.encode(), raw)
        return len(keys)

    def forget(self, partitions: set[int]) -> None:
        for cached in [k for k in self._records if k[0] in partitions]:
            del self._records[cached]
        for pending in [k for k in self._pending if k[0] in partitions]:
            del self._pending[pending]

    def _remember(self, partition: int, job_id: str, rec: JobRecord) -> None:
        self._records[(partition, job_id)] = rec
        self._records.move_to_end((partition, job_id))
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)
