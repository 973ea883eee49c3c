"""The inbox shell: bytes in, decisions applied, bytes out. Shared by the Faust agent and `ksched replay`.

Per inbox record (partition p, offset o):
  1. decode; an undecodable or invalid record goes to the dead-letter topic with the reason and its bytes;
  2. a record in the wrong partition (a client with another partitioner) is forwarded to the right one;
  3. load the job's record; if it already applied offset o (redelivery after a crash), skip it;
  4. `decide`; write the job's new state *together with the outputs* (its outbox, `outbox.py`) as one table
     record; then publish the outputs.

The rooms around it: `jobstore` (the table value, its encoding and cache), `clock` (the partition clock),
`outbox` (which outputs may still be unpublished), `router` (channels to topics, dead letters, forwarding),
and the pure `core` that decides.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ksched.config import Settings
from ksched.errors import CodecError
from ksched.partitioning import partition_for
from ksched.schemas.codec import Codec
from ksched.schemas.events import INBOX_TYPES, ClaimTasks, ExecutorHeartbeat, SubmitJobs, Tick
from ksched.topics import MAX_RECORD_BYTES

from . import outbox
from .clock import CLOCK_KEY, PartitionClocks
from .core import decide as core
from .core import emit as channels
from .core.due import DueIndex
from .core.model import JobState, Params
from .core.views import current_views
from .jobstore import JobRecord, JobStore, Message, Store
from .metrics import ShellHooks
from .router import Router

log = logging.getLogger(__name__)

#: A job with no active run stays decoded in the state cache only if it wakes within this long (a per-second or
#: per-minute job); one that sleeps longer is read again from the table when it wakes (`core.keep_warm`).
KEEP_WARM_MS = 60_000
#: An input's bytes as a dead letter keeps them, or how to encode them if one is needed.
Original = bytes | Callable[[], bytes] | None


def decision_params(settings: Settings) -> Params:
    """The decisions' parameters from the settings (the same for the workers and for replay)."""
    return Params(lease_ms=int(settings.lease_s * 1000), lookahead_ms=int(settings.lookahead_s * 1000),
                  keep_run_views=settings.keep_run_views)


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
    #: Decoded job records kept (most recently used): the jobs being worked on, not every registered job.
    state_cache_size: int = 4_096
    hooks: ShellHooks = field(default_factory=ShellHooks)

    def __post_init__(self) -> None:
        self._due: dict[int, DueIndex] = {}
        self._clock = PartitionClocks()
        self._recover: set[int] = set()
        self.jobs = JobStore(self.state_cache_size)
        self.router = Router(self.settings, self.codec)
        self.inbox = self.router.inbox

    # --- partition lifecycle ---------------------------------------------------------------

    def assigned(self, partitions: set[int]) -> None:
        """These partitions (re)joined this worker: rebuild their index and republish their outbox first."""
        self._recover |= partitions

    def revoked(self, partitions: set[int]) -> None:
        self.hooks.revoked(partitions)
        for p in partitions:
            self._due.pop(p, None)
            self._clock.forget(p)
            self._recover.discard(p)
        self.jobs.forget(partitions)

    def due_index(self, partition: int) -> DueIndex:
        return self._due.setdefault(partition, DueIndex())

    def _recover_partition(self, store: Store, partition: int, replay_from: int) -> list[Message]:
        """Rebuild the due index; publish again every output of inputs at or after `replay_from` (the
        position consumption restarts from: outputs of earlier inputs were flushed before the commit)."""
        self._recover.discard(partition)
        self.jobs.forget({partition})
        raw_clock = store.get(CLOCK_KEY)
        if raw_clock is not None:
            self._clock.restore(partition, raw_clock)
        index = DueIndex()
        republish: list[Message] = []
        rewritten = 0
        for job_id, wake, rec in self.jobs.recovery_scan(store, replay_from, self.params.lookahead_ms):
            if rec is None:  # nothing to do for this job but to know when to wake it
                index.set(job_id, wake)
                continue
            index.set(rec.state.job_id, core.next_wakeup(rec.state, self.params))
            if rec.applied >= replay_from:
                # Written for an input past the committed offset: after a crash, a store kept locally may hold it
                # while the changelog does not (`localstate`). Writing it again sends it; otherwise a no-op.
                rewritten += self.jobs.rewrite(store, rec.state.job_id, rec.state, rec.apart)
            replayed = outbox.unpublished(rec.outbox, replay_from)
            republish += [m for m in replayed if self._in_outbox(m)]  # again: their ids make repeats harmless
            if replayed or rec.applied >= replay_from:
                # Then the views as they are now (the publisher holds views until the commit, so those of a job
                # decided past the committed offset may not have gone out; an old snapshot republished last would
                # overwrite a newer one in a compacted topic).
                republish += [self.router.message(partition, e) for e in current_views(rec.state)]
        if raw_clock is not None:
            store.put(CLOCK_KEY, raw_clock)
        self._due[partition] = index
        self.counters.republished += len(republish)
        if rewritten:
            log.info("partition %d: wrote %d keys of jobs decided past the committed offset again", partition,
                     rewritten)
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
        if value is not None and len(value) > MAX_RECORD_BYTES:
            why = f"a record of {len(value)} bytes is over the inbox's maximum of {MAX_RECORD_BYTES}"
            return [*out, self._dead_letter(partition, offset, key, value, why)]
        try:
            event = self.codec.decode(value)
        except CodecError as err:
            return [*out, self._dead_letter(partition, offset, key, value, str(err))]
        if not isinstance(event, INBOX_TYPES):
            why = f"{type(event).SCHEMA} is not an inbox record"
            return [*out, self._dead_letter(partition, offset, key, value, why)]
        settled = outbox.settled(committed, delivered)
        if isinstance(event, Tick):
            return out + self._tick(store, partition, offset, event, settled)
        if isinstance(event, ExecutorHeartbeat):
            return out + self._heartbeats(store, partition, offset, event, key, value, settled)
        if isinstance(event, SubmitJobs):
            return out + self._batch(store, partition, offset, core.submissions_of(event), SubmitJobs, settled)
        if isinstance(event, ClaimTasks):
            return out + self._batch(store, partition, offset, core.claims_of(event), ClaimTasks, settled)
        job_id = core.event_job_id(event)  # type: ignore[arg-type]  # an INBOX_TYPES instance
        owner = partition_for(job_id, self.settings.partitions)
        if owner != partition:
            self.counters.forwarded += 1
            return [*out, self.router.forward(job_id, value, owner)]
        return out + self._apply(store, partition, offset, job_id, [event], key, value, settled)

    def _in_outbox(self, m: Message) -> bool:
        """Decisions and the tombstones of retired runs' views; other views are republished from the state."""
        return m.topic not in self.router.view_topics or (m.value is None and m.topic in self.router.run_views)

    def _tick(self, store: Store, partition: int, offset: int, tick: Tick, settled: int | None) -> list[Message]:
        advance = self._clock.advance(store, partition, tick, self.params.resume_gap_ms, self.params.lease_ms)
        msgs: list[Message] = []
        for job_id in self.due_index(partition).pop_due(advance.horizon_ms):
            msgs += self._apply(store, partition, offset, job_id, [advance.tick], None, None, settled)
        return msgs

    def _heartbeats(self, store: Store, partition: int, offset: int, beat: ExecutorHeartbeat, key: bytes | None,
                    value: bytes | None, settled: int | None) -> list[Message]:
        """Each attempt's heartbeat, a job's together (its record written once); an attempt of a job another
        partition owns (an executor that counts partitions differently) is forwarded there on its own."""
        msgs: list[Message] = []
        by_job: dict[str, list[Any]] = {}
        for hb in core.heartbeats_of(beat):
            owner = partition_for(hb.job_id, self.settings.partitions)
            if owner != partition:
                self.counters.forwarded += 1
                msgs.append(self.router.forward(hb.job_id, self.codec.encode(hb), owner))
            else:
                by_job.setdefault(hb.job_id, []).append(hb)
        for job_id, beats in by_job.items():
            msgs += self._apply(store, partition, offset, job_id, beats, key, value, settled)
        return msgs

    def _batch(self, store: Store, partition: int, offset: int, by_job: dict[str, list[Any]], kind: type,
               settled: int | None) -> list[Message]:
        """Each job's records of a batch (a bulk submission, a transaction's claims) decided as if they had come
        alone: their own key and bytes (what a dead letter of them keeps), the job's record written once; one whose
        job another partition owns is forwarded."""
        msgs: list[Message] = []
        for job_id, records in by_job.items():
            owner = partition_for(job_id, self.settings.partitions)
            if owner != partition:
                self.counters.forwarded += len(records)
                msgs += [self.router.forward(job_id, self.codec.encode(r), owner) for r in records]
                continue
            # Encoded alone only if it is dead-lettered (an encoding costs about what deciding a submission does).
            alone = partial(self.codec.encode, records[0] if len(records) == 1 else kind(partition, records))
            msgs += self._apply(store, partition, offset, job_id, list(records), job_id.encode(), alone, settled)
        return msgs

    def _apply(self, store: Store, partition: int, offset: int, job_id: str, events: list[Any],
               key: bytes | None, value: Original, settled: int | None) -> list[Message]:
        """Decide `events` (those of one inbox record about this job, in order) and write the job once."""
        rec = self.jobs.load(store, partition, job_id)
        if rec is not None and offset <= rec.applied:
            self.counters.duplicates += 1
            self.due_index(partition).set(job_id, core.next_wakeup(rec.state, self.params))
            return []
        before = rec.state if rec else None
        state, msgs, applied = before, [], []
        for event in events:
            try:
                step = core.decide(state, event, self._clock.get(partition), self.params)
                msgs += [self._dead_letter(partition, offset, key, value, str(e.record)) if e.channel == channels.DLQ
                         else self.router.message(partition, e) for e in step.emits]
            except Exception as exc:  # no record may stop the partition: this one is dead-lettered, the rest go on
                return self._undecidable(partition, offset, job_id, event, before, key, value, exc)
            applied.append((event, state, step))
            state = step.state
        for event, was, step in applied:
            self.hooks.applied(event, was, step.state, step.emits)
        wake = core.next_wakeup(state, self.params)
        if state is not None:
            kept = [m for m in msgs if self._in_outbox(m)]
            new = JobRecord(offset, state, outbox.record(rec.outbox if rec else [], offset, kept, settled),
                            (wake, self.params.lookahead_ms), rec.apart if rec else frozenset())
            warm = core.keep_warm(state, wake, self._clock.get(partition), KEEP_WARM_MS)
            self.jobs.save(store, partition, job_id, new, before, cache=warm)
        self.due_index(partition).set(job_id, wake)
        return msgs

    def _undecidable(self, partition: int, offset: int, job_id: str, event: Any, before: JobState | None,
                     key: bytes | None, value: Original, exc: Exception) -> list[Message]:
        """A decision raised (a bug, or a state no rule foresaw). The job's state stays as it was and the record
        goes to the dead-letter topic with the reason. A tick is not bad input: the job is taken out of the due
        index instead, so it is not retried (and dead-lettered) every second; its next command puts it back."""
        log.exception("partition %d offset %d: deciding %s for job %r failed", partition, offset,
                      type(event).__name__, job_id)
        self.due_index(partition).set(job_id, None if isinstance(event, Tick) else
                                      core.next_wakeup(before, self.params))
        reason = f"deciding {type(event).__name__} for job {job_id!r} failed: {type(exc).__name__}: {exc}"
        return [self._dead_letter(partition, offset, key, value, reason)]

    def _dead_letter(self, partition: int, offset: int, key: bytes | None, value: Original,
                     reason: str) -> Message:
        if callable(value):
            value = value()
        self.counters.dead_lettered += 1
        self.hooks.dead_lettered()
        return self.router.dead_letter(partition, offset, key, value, reason, self._clock.get(partition) or 0)
