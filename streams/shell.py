"""The inbox shell: bytes in, decisions applied, bytes out. Shared by the Faust agent and `ksched replay`.

Per inbox record (partition p, offset o):
  1. decode; an undecodable or invalid record goes to the dead-letter topic with the reason and its bytes;
  2. a record in the wrong partition (a client with another partitioner) is forwarded to the right one;
  3. load the job's state; if it already applied offset o (redelivery after a crash), skip it;
  4. `decide`; write the outputs to the partition's outbox, then the new state; then publish the outputs.

Why an outbox: Faust commits input offsets only after flushing its producer, so after a crash every
input past the committed offset is delivered again, but state written for it may already be in the
changelog while its outputs were lost. The outbox entry is written before the state, in the same
changelog partition (so in order), and is published again when the partition is next assigned. Outputs
may therefore appear twice; they carry derived ids, and every consumer treats a repeat as a no-op.
Entries older than the committed offset are deleted on ticks.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ksched.config import Settings
from ksched.errors import CodecError
from ksched.events import INBOX_TYPES, DeadLetter, Tick
from ksched.partitioning import partition_for
from ksched.records import from_data, to_data
from ksched.topics import ready_topic
from schemas.codec import Codec

from .core import decide as core
from .core.due import DueIndex
from .core.model import JobState, Params

log = logging.getLogger(__name__)

RESERVED = b"\x01"
FAUST_RESERVED = b"__faust"  # Faust keeps its changelog offset in the same RocksDB
CLOCK_KEY = b"\x01clock"
OUTBOX = b"\x01outbox/"


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


def encode_state(offset: int, state: JobState) -> bytes:
    return json.dumps({"o": offset, "s": to_data(state)}, separators=(",", ":")).encode()


def decode_state(raw: bytes) -> tuple[int, JobState]:
    data = json.loads(raw)
    return int(data["o"]), from_data(JobState, data["s"])


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode()


def _unb64(s: str | None) -> bytes | None:
    return None if s is None else base64.b64decode(s)


def encode_outbox(messages: list[Message]) -> bytes:
    return json.dumps([[m.topic, _b64(m.key), _b64(m.value), m.partition] for m in messages]).encode()


def decode_outbox(raw: bytes) -> list[Message]:
    return [Message(t, _unb64(k), _unb64(v), p) for t, k, v, p in json.loads(raw)]


def outbox_key(offset: int) -> bytes:
    return OUTBOX + b"%020d" % offset


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

    def __post_init__(self) -> None:
        s = self.settings
        self._due: dict[int, DueIndex] = {}
        self._clock: dict[int, int | None] = {}
        self._recover: set[int] = set()
        self._outbox: dict[int, deque[int]] = {}
        self.inbox = s.topic("inbox")
        self._topics = {
            core.EVENTS: s.topic("events"), core.CONTROL: s.topic("control"), core.CATALOG: s.topic("jobs"),
            core.RUNS: s.topic("runs"), core.TASKS: s.topic("tasks"), core.DLQ: s.topic("dlq"),
        }

    # --- partition lifecycle ---------------------------------------------------------------

    def assigned(self, partitions: set[int]) -> None:
        """These partitions (re)joined this worker: rebuild their index and republish their outbox first."""
        self._recover |= partitions

    def revoked(self, partitions: set[int]) -> None:
        for p in partitions:
            self._due.pop(p, None)
            self._clock.pop(p, None)
            self._outbox.pop(p, None)
            self._recover.discard(p)

    def due_index(self, partition: int) -> DueIndex:
        return self._due.setdefault(partition, DueIndex())

    def _recover_partition(self, store: Store, partition: int) -> list[Message]:
        self._recover.discard(partition)
        index = DueIndex()
        republish: list[Message] = []
        pending: deque[int] = deque()
        for key, raw in store.items():
            if key.startswith(OUTBOX):
                pending.append(int(key[len(OUTBOX):]))
                republish.extend(decode_outbox(raw))
            elif key == CLOCK_KEY:
                self._clock[partition] = int(raw)
            elif not key.startswith(RESERVED) and not key.startswith(FAUST_RESERVED):
                _, state = decode_state(raw)
                index.set(state.job_id, core.next_wakeup(state))
        self._due[partition] = index
        self._outbox[partition] = deque(sorted(pending))
        self.counters.republished += len(republish)
        if republish:
            log.info("partition %d: republished %d outputs from the outbox", partition, len(republish))
        return republish

    # --- processing ---------------------------------------------------------------------------

    def process(self, store: Store, partition: int, offset: int, key: bytes | None, value: bytes | None,
                committed: int | None = None) -> list[Message]:
        """Apply one inbox record; return the messages to publish (already recorded in the outbox).

        `committed` is the partition's committed input offset, if known; ticks use it to trim the outbox.
        """
        out: list[Message] = []
        if partition in self._recover or partition not in self._due:
            out.extend(self._recover_partition(store, partition))
        self.counters.processed += 1
        try:
            event = self.codec.decode(value)
        except CodecError as err:
            return [*out, self._dead_letter(partition, offset, key, value, str(err))]
        if not isinstance(event, INBOX_TYPES):
            why = f"{type(event).SCHEMA} is not an inbox record"
            return [*out, self._dead_letter(partition, offset, key, value, why)]
        if isinstance(event, Tick):
            out += self._tick(store, partition, offset, event)
            if committed is not None:
                self.trim_outbox(store, partition, committed)
            return out
        job_id = core.event_job_id(event)  # type: ignore[arg-type]  # an INBOX_TYPES instance
        owner = partition_for(job_id, self.settings.partitions)
        if owner != partition:
            self.counters.forwarded += 1
            return [*out, Message(self.inbox, job_id.encode(), value, owner)]
        writes: list[tuple[bytes, bytes]] = []
        msgs: list[Message] = []
        self._apply(store, partition, offset, job_id, event, key, value, writes, msgs)
        return out + self._commit(store, partition, offset, writes, msgs)

    def _tick(self, store: Store, partition: int, offset: int, tick: Tick) -> list[Message]:
        clock = self._clock.get(partition)
        now = tick.now_ms if clock is None else max(clock, tick.now_ms)
        if now != clock:
            self._clock[partition] = now
            store.put(CLOCK_KEY, str(now).encode())
        writes: list[tuple[bytes, bytes]] = []
        msgs: list[Message] = []
        for job_id in self.due_index(partition).pop_due(now):
            self._apply(store, partition, offset, job_id, tick, None, None, writes, msgs)
        return self._commit(store, partition, offset, writes, msgs)

    def _apply(self, store: Store, partition: int, offset: int, job_id: str, event: Any, key: bytes | None,
               value: bytes | None, writes: list[tuple[bytes, bytes]], msgs: list[Message]) -> None:
        jkey = job_id.encode()
        raw = store.get(jkey)
        state: JobState | None = None
        if raw is not None:
            applied, state = decode_state(raw)
            if offset <= applied:
                self.counters.duplicates += 1
                self.due_index(partition).set(job_id, core.next_wakeup(state))
                return
        step = core.decide(state, event, self._clock.get(partition), self.params)
        for emit in step.emits:
            msgs.append(self._message(partition, offset, emit, key, value))
        if step.state is not None:
            writes.append((jkey, encode_state(offset, step.state)))
        self.due_index(partition).set(job_id, core.next_wakeup(step.state))

    def _commit(self, store: Store, partition: int, offset: int, writes: list[tuple[bytes, bytes]],
                msgs: list[Message]) -> list[Message]:
        if msgs:
            store.put(outbox_key(offset), encode_outbox(msgs))
            pending = self._outbox.setdefault(partition, deque())
            if not pending or pending[-1] != offset:
                pending.append(offset)
        for k, v in writes:
            store.put(k, v)
        return msgs

    def trim_outbox(self, store: Store, partition: int, committed_offset: int) -> int:
        """Delete outbox entries below the committed input offset: their outputs were flushed before it."""
        pending = self._outbox.get(partition)
        trimmed = 0
        while pending and pending[0] < committed_offset:
            store.delete(outbox_key(pending.popleft()))
            trimmed += 1
        return trimmed

    # --- output -------------------------------------------------------------------------------

    def _message(self, partition: int, offset: int, emit: core.Emit, key: bytes | None,
                 value: bytes | None) -> Message:
        if emit.channel == core.READY:
            return Message(ready_topic(self.settings, emit.record.priority), emit.key.encode(),
                           self.codec.encode(emit.record))
        if emit.channel == core.CONTROL:
            return Message(self._topics[core.CONTROL], emit.key.encode(), self.codec.encode(emit.record))
        if emit.channel == core.DLQ:
            return self._dead_letter(partition, offset, key, value, str(emit.record), count=True)
        record = None if emit.record is None else self.codec.encode(emit.record)
        # State topics and the decision log are co-partitioned with the inbox: same partition as the job.
        return Message(self._topics[emit.channel], emit.key.encode(), record, partition)

    def _dead_letter(self, partition: int, offset: int, key: bytes | None, value: bytes | None, reason: str,
                     count: bool = True) -> Message:
        if count:
            self.counters.dead_lettered += 1
        log.warning("dead-lettered %s[%d]@%d: %s", self.inbox, partition, offset, reason)
        at = self._clock.get(partition) or 0
        record = DeadLetter(self.inbox, partition, offset, reason, at, key, value)
        return Message(self._topics[core.DLQ], key, self.codec.encode(record), partition)
