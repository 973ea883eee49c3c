"""The inbox shell: bytes in, decisions applied, bytes out. Shared by the Faust agent and `ksched replay`.

Per inbox record (partition p, offset o):
  1. decode; an undecodable or invalid record goes to the dead-letter topic with the reason and its bytes;
  2. a record in the wrong partition (a client with another partitioner) is forwarded to the right one;
  3. load the job's record; if it already applied offset o (redelivery after a crash), skip it;
  4. `decide`; write the job's new state *together with the outputs* (its outbox) as one table record;
     then publish the outputs.

Why an outbox: Faust commits input offsets only after flushing the producers, so after a crash every
input past the committed offset is delivered again, but the state written for it may already be in the
changelog while its outputs were lost. Each job record keeps the outputs of the inputs it applied past
the committed offset; when a partition is assigned, those are published again. Outputs may therefore
appear twice; they carry derived ids, and every consumer treats a repeat as a no-op. Entries below the
committed offset, or whose outputs the broker has acknowledged (`delivered`), are dropped the next time the
job is written: waiting for the commit alone let a busy job's outbox, and so every write of it, grow with
everything it emitted in the last commit interval.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ksched.config import Settings
from ksched.errors import CodecError
from ksched.partitioning import partition_for
from ksched.schemas.codec import Codec
from ksched.schemas.events import INBOX_TYPES, DeadLetter, JobSpec, Tick
from ksched.schemas.records import from_data, to_compact_data
from ksched.topics import POOL_LABEL, ready_topic

from .core import decide as core
from .core import emit as channels
from .core.due import DueIndex
from .core.model import JobState, Params, Run, Task
from .core.views import current_views
from .metrics import ShellHooks

log = logging.getLogger(__name__)

RESERVED = b"\x01"
FAUST_RESERVED = b"__faust"  # Faust keeps its changelog offset in the same RocksDB
CLOCK_KEY = b"\x01clock"
#: Outbox entries kept per job when the committed offset is not known yet.
OUTBOX_FALLBACK = 64


class Store(Protocol):
    """The table entries of the one partition being processed."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def items(self) -> Iterator[tuple[bytes, bytes]]: ...


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None


Outbox = list[tuple[int, list[Message]]]


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One table value: the state, the last inbox offset applied to it, and its unconfirmed outputs."""

    applied: int
    state: JobState
    outbox: Outbox


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode()


def _unb64(s: str | None) -> bytes | None:
    return None if s is None else base64.b64decode(s)


_SEP = (",", ":")
#: JSON of recently encoded tasks, by identity. Tasks are immutable and an unchanged task keeps its identity
#: from one state to the next, so a 1,000-task run re-encodes only what changed. The entry holds the task,
#: so its id cannot be reused while cached.
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


@dataclass
class Counters:
    processed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    forwarded: int = 0
    republished: int = 0


@dataclass
class InboxShell:
    settings: Settings
    codec: Codec
    params: Params = field(default_factory=Params)
    counters: Counters = field(default_factory=Counters)
    state_cache_size: int = 20_000
    hooks: ShellHooks = field(default_factory=ShellHooks)

    def __post_init__(self) -> None:
        s = self.settings
        self._due: dict[int, DueIndex] = {}
        self._clock: dict[int, int | None] = {}
        self._recover: set[int] = set()
        # Decoded records of recently used jobs. This worker is the only writer of its partitions' keys, so
        # the cache cannot go stale; it is dropped with the partition.
        self._records: OrderedDict[tuple[int, str], JobRecord] = OrderedDict()
        self.inbox = s.topic("inbox")
        self._topics = {
            channels.EVENTS: s.topic("events"), channels.CONTROL: s.topic("control"), channels.CATALOG: s.topic("jobs"),
            channels.RUNS: s.topic("runs"), channels.TASKS: s.topic("tasks"), channels.DLQ: s.topic("dlq"),
        }
        self._view_topics = {self._topics[c] for c in (channels.CATALOG, channels.RUNS, channels.TASKS)}

    # --- partition lifecycle ---------------------------------------------------------------

    def assigned(self, partitions: set[int]) -> None:
        """These partitions (re)joined this worker: rebuild their index and republish their outbox first."""
        self._recover |= partitions

    def revoked(self, partitions: set[int]) -> None:
        self.hooks.revoked(partitions)
        for p in partitions:
            self._due.pop(p, None)
            self._clock.pop(p, None)
            self._recover.discard(p)
        self._forget(partitions)

    def _forget(self, partitions: set[int]) -> None:
        for cached in [k for k in self._records if k[0] in partitions]:
            del self._records[cached]

    def due_index(self, partition: int) -> DueIndex:
        return self._due.setdefault(partition, DueIndex())

    def _recover_partition(self, store: Store, partition: int, replay_from: int) -> list[Message]:
        """Rebuild the due index; publish again every output of inputs at or after `replay_from` (the
        position consumption restarts from: outputs of earlier inputs were flushed before the commit)."""
        self._recover.discard(partition)
        self._forget({partition})
        index = DueIndex()
        republish: list[Message] = []
        for key, raw in store.items():
            if key == CLOCK_KEY:
                self._clock[partition] = int(raw)
            elif not key.startswith(RESERVED) and not key.startswith(FAUST_RESERVED):
                rec = decode_record(raw)
                index.set(rec.state.job_id, core.next_wakeup(rec.state, self.params))
                replayed = [m for offset, msgs in rec.outbox if offset >= replay_from for m in msgs]
                if replayed:
                    # Decisions again (their ids make repeats harmless), then the views as they are now:
                    # an old snapshot republished last would overwrite a newer one in a compacted topic.
                    republish += [m for m in replayed if m.topic not in self._view_topics]
                    republish += [self._message(partition, rec.applied, e, None, None)
                                  for e in current_views(rec.state)]
        self._due[partition] = index
        self.counters.republished += len(republish)
        if republish:
            log.info("partition %d: republished %d outputs from the outbox", partition, len(republish))
        return republish

    # --- processing ---------------------------------------------------------------------------

    def process(self, store: Store, partition: int, offset: int, key: bytes | None, value: bytes | None,
                committed: int | None = None, delivered: int | None = None) -> list[Message]:
        """Apply one inbox record; return the messages to publish (already recorded in the outbox).

        `committed` is the partition's committed input offset, if known: outbox entries below it are done.
        `delivered`, if known: the outputs of every input of this partition up to that offset were delivered
        (by this worker since it was assigned the partition), so those entries are done too.
        """
        out: list[Message] = []
        if partition in self._recover or partition not in self._due:
            replay_from = offset if committed is None else min(offset, committed)
            out.extend(self._recover_partition(store, partition, replay_from))
        self.counters.processed += 1
        self.hooks.processed()
        try:
            event = self.codec.decode(value)
        except CodecError as err:
            return [*out, self._dead_letter(partition, offset, key, value, str(err))]
        if not isinstance(event, INBOX_TYPES):
            why = f"{type(event).SCHEMA} is not an inbox record"
            return [*out, self._dead_letter(partition, offset, key, value, why)]
        if isinstance(event, Tick):
            return out + self._tick(store, partition, offset, event, _settled(committed, delivered))
        job_id = core.event_job_id(event)  # type: ignore[arg-type]  # an INBOX_TYPES instance
        owner = partition_for(job_id, self.settings.partitions)
        if owner != partition:
            self.counters.forwarded += 1
            return [*out, Message(self.inbox, job_id.encode(), value, owner)]
        return out + self._apply(store, partition, offset, job_id, event, key, value,
                                 _settled(committed, delivered))

    def _tick(self, store: Store, partition: int, offset: int, tick: Tick, committed: int | None) -> list[Message]:
        clock = self._clock.get(partition)
        now = tick.now_ms if clock is None else max(clock, tick.now_ms)
        if now != clock:
            self._clock[partition] = now
            store.put(CLOCK_KEY, str(now).encode())
        horizon = now
        if clock is not None and now - clock > self.params.resume_gap_ms:
            # The scheduler was away: the reports sent meanwhile were read with a stale clock, and grants made
            # while catching up reached their executors only now. Every job with a lease that would lapse
            # within a lease from now is visited, and its leases renewed rather than lapsed.
            tick = replace(tick, resumed_from_ms=clock)
            horizon = now + self.params.lease_ms
        msgs: list[Message] = []
        for job_id in self.due_index(partition).pop_due(horizon):
            msgs += self._apply(store, partition, offset, job_id, tick, None, None, committed)
        return msgs

    def _apply(self, store: Store, partition: int, offset: int, job_id: str, event: Any, key: bytes | None,
               value: bytes | None, committed: int | None) -> list[Message]:
        rec = self._load(store, partition, job_id)
        if rec is not None and offset <= rec.applied:
            self.counters.duplicates += 1
            self.due_index(partition).set(job_id, core.next_wakeup(rec.state, self.params))
            return []
        before = rec.state if rec else None
        step = core.decide(before, event, self._clock.get(partition), self.params)
        self.hooks.applied(event, before, step.state, step.emits)
        msgs = [self._message(partition, offset, emit, key, value) for emit in step.emits]
        if step.state is not None:
            outbox = _trim(rec.outbox if rec else [], committed)
            # Views are not kept: after a crash the job's current views are published instead.
            kept = [m for m in msgs if m.topic not in self._view_topics]
            if kept:
                outbox.append((offset, kept))
            new = JobRecord(offset, step.state, outbox)
            store.put(job_id.encode(), encode_record(new))  # state and outputs in one record, atomically
            self._remember(partition, job_id, new)
        self.due_index(partition).set(job_id, core.next_wakeup(step.state, self.params))
        return msgs

    def _load(self, store: Store, partition: int, job_id: str) -> JobRecord | None:
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

    def _remember(self, partition: int, job_id: str, rec: JobRecord) -> None:
        self._records[(partition, job_id)] = rec
        self._records.move_to_end((partition, job_id))
        while len(self._records) > self.state_cache_size:
            self._records.popitem(last=False)

    # --- output -------------------------------------------------------------------------------

    def _message(self, partition: int, offset: int, emit: channels.Emit, key: bytes | None,
                 value: bytes | None) -> Message:
        if emit.channel == channels.READY:
            pool = emit.record.labels.get(POOL_LABEL, "")
            return Message(ready_topic(self.settings, emit.record.priority, pool), emit.key.encode(),
                           self.codec.encode(emit.record))
        if emit.channel == channels.CONTROL:
            return Message(self._topics[channels.CONTROL], emit.key.encode(), self.codec.encode(emit.record))
        if emit.channel == channels.DLQ:
            return self._dead_letter(partition, offset, key, value, str(emit.record))
        record = None if emit.record is None else self.codec.encode(emit.record)
        # State topics and the decision log are co-partitioned with the inbox: same partition as the job.
        return Message(self._topics[emit.channel], emit.key.encode(), record, partition)

    def _dead_letter(self, partition: int, offset: int, key: bytes | None, value: bytes | None,
                     reason: str) -> Message:
        self.counters.dead_lettered += 1
        self.hooks.dead_lettered()
        log.warning("dead-lettered %s[%d]@%d: %s", self.inbox, partition, offset, reason)
        at = self._clock.get(partition) or 0
        record = DeadLetter(self.inbox, partition, offset, reason, at, key, value)
        return Message(self._topics[channels.DLQ], key, self.codec.encode(record), partition)


def _settled(committed: int | None, delivered: int | None) -> int | None:
    """The input offset below which every output is known to be out: committed, or delivered."""
    if delivered is None:
        return committed
    return delivered + 1 if committed is None else max(committed, delivered + 1)


def _trim(outbox: Outbox, committed: int | None) -> Outbox:
    """The entries whose outputs may not have been flushed yet (at or after the committed offset)."""
    if committed is None:
        return list(outbox[-OUTBOX_FALLBACK:])
    return [(o, msgs) for o, msgs in outbox if o >= committed]
