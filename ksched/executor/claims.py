"""Claiming ready attempts: the ready topics' consumer, flow control, and the claim transactions.

Owns the consumer of the ready topics (high before normal before low; one group per pool) and the transactional
producer. Records are buffered per partition, a partition with a long backlog is paused until it drains, and the
records that fit the free slots and staging places are claimed in one Kafka transaction together with their
offsets and the consumer group metadata, so a fenced (zombie) executor cannot claim. A failed transaction
forgets its claims and rewinds their partitions, so the records are delivered again. A transactional call that
outlives its own timeout (librdkafka can wait forever for a group coordinator that restarted) is given up: its
producer is abandoned and a new one with the same transactional id fences it. Which records to take and which
partitions to pause are pure functions below.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Set
from functools import partial
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from ksched import kafka
from ksched.bulk import BulkRecord, packed
from ksched.config import Settings
from ksched.errors import CodecError
from ksched.schemas.codec import default_codec
from ksched.schemas.events import PRIORITIES, ClaimTask, ClaimTasks, DeadLetter, TaskReady
from ksched.topics import ready_topic

from .ledger import EARLY_MIN_WAITING, Ledger, Pending, Stats, creates_early, now_ms

log = logging.getLogger(__name__)

M = TypeVar("M")
T = TypeVar("T")
K = TypeVar("K")
Partition = tuple[str, int]  # (topic, partition)

#: The timeout of each transactional call, and how much longer one may take before its producer is taken for
#: wedged. librdkafka's send_offsets_to_transaction can block forever, ignoring its timeout, when the group
#: coordinator it cached went away (librdkafka issues 5456 and 5511; seen when the single broker restarted:
#: the executor claimed nothing ever after, and when a node of three was killed). A call that times out in
#: time is called again (`_resumed`), so a slow coordinator costs nothing; only a call past its own timeout
#: is a wedge, and each wedge pauses claiming for this long.
TXN_TIMEOUT_S = 5.0
WEDGED_AFTER_S = 3.0
#: The claim transactions' timeout (transaction.timeout.ms). An executor killed in the middle of one leaves it open,
#: and every reader of the inbox (read_committed) waits behind it until the coordinator aborts it: the streams
#: worker then decides nothing past that offset, so no claim of any executor is answered. At 60 s (what it was)
#: a kill -9 stalled all claiming for a minute (CI's chaos test: the inbox's last stable offset stood still for
#: 40 s while its end grew). The coordinator looks for timed-out transactions every
#: `transaction.abort.timed.out.transaction.cleanup.interval.ms` (Kafka's default 10 s; ksched's brokers 1 s).
TXN_TIMEOUT_MS = 15_000
#: How long a transactional call that times out retriably is called again (below the transaction's timeout).
TXN_RESUME_S = 12.0
#: Claims per inbox record at most. A transaction's claims of the jobs of one inbox partition go in one
#: `ClaimTasks` record (one alone as a `ClaimTask`): a burst due together is then a few records for the streams
#: worker, whose cost per record (its consumer, the stream, the commit) is about what deciding a claim costs.
CLAIMS_PER_RECORD = 100


def claim_records(claims: list[ClaimTask], partitions: int, encode: Callable[[object], bytes]) -> list[BulkRecord]:
    """A transaction's claims as inbox records: per inbox partition, in their order, one `ClaimTasks` of up to
    `CLAIMS_PER_RECORD` (a claim alone stays a `ClaimTask`)."""
    def pack(partition: int, chunk: list[ClaimTask]) -> bytes:
        return encode(chunk[0] if len(chunk) == 1 else ClaimTasks(partition, chunk))

    return list(packed(claims, partitions, lambda claim: claim.job_id, pack, CLAIMS_PER_RECORD))


class Wedged(Exception):
    """A transactional call did not return within its timeout and the grace after it."""


class BoundedCalls:
    """Runs calls on a daemon thread of its own and waits at most a deadline for each. After a call overran,
    that thread is left behind (it may be blocked in librdkafka for good) and the next call gets a new one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], dict[str, Any], threading.Event]] | None = None

    def _start(self) -> queue.SimpleQueue[tuple[Callable[[], Any], dict[str, Any], threading.Event]]:
        calls: queue.SimpleQueue[tuple[Callable[[], Any], dict[str, Any], threading.Event]] = queue.SimpleQueue()

        def serve() -> None:
            while True:
                call, out, done = calls.get()
                try:
                    out["value"] = call()
                except BaseException as exc:  # handed to the caller, which raises it
                    out["error"] = exc
                done.set()

        threading.Thread(target=serve, name=self.name, daemon=True).start()
        return calls

    def call(self, what: str, fn: Callable[[], T], deadline_s: float) -> T:
        if self._calls is None:
            self._calls = self._start()
        out: dict[str, Any] = {}
        done = threading.Event()
        self._calls.put((fn, out, done))
        if not done.wait(deadline_s):
            self._calls = None  # its thread is stuck in `fn`; never hand it another call
            raise Wedged(f"{what} did not return within {deadline_s:.0f}s")
        if "error" in out:
            raise out["error"]
        return out["value"]  # type: ignore[no-any-return]


# --- pure decisions -------------------------------------------------------------------------------

#: How long the ready topics' consumer may go without fetching, with records waiting in its partitions or in
#: the middle of a rebalance, before it is taken for stalled; and how often that is checked.
STALL_S = 30.0
STALL_CHECK_S = 5.0


def stalled(now: float, fetched_at: float, assigned_at: float, revoked_at: float,
            backlog_since: float | None) -> str | None:
    """Why the consumer counts as stalled, or None. Partitions revoked (or lost) and no assignment since, for
    `STALL_S`: a rebalance that never ended (an executor with no partitions at all is fine: it got an empty
    assignment). Nothing fetched for `STALL_S`, and its own unpaused partitions holding records it has not fetched
    since `backlog_since` (the check that first saw them, None: none seen) for `STALL_CHECK_S`: a fetcher that
    stopped. Records that came a moment ago, after long idleness, are not yet a stall: a healthy fetcher takes
    them within its long poll (replacing it then rebalanced every executor as a burst of staged attempts came)."""
    if revoked_at > assigned_at and now - revoked_at >= STALL_S:
        return f"no assignment {now - revoked_at:.0f}s after its partitions were revoked"
    if backlog_since is not None and now - fetched_at >= STALL_S and now - backlog_since >= STALL_CHECK_S:
        return (f"nothing fetched for {now - fetched_at:.0f}s while its partitions hold records, for "
                f"{now - backlog_since:.0f}s at least")
    return None


#: How long after an assignment the executor waits, at most, for every newly assigned partition to answer its
#: first fetch (a record, or its end) before it chooses what to claim.
SETTLE_MAX_S = 3.0


def settling(unanswered: Set[Partition], now: float, deadline: float) -> bool:
    """Whether to hold the first claims after an assignment: while a newly assigned partition has not yet
    answered and the deadline has not passed. Choosing earlier could claim normal work while a high-priority
    record waits in a partition whose first fetch has not come back (the fixed 0.3 s wait this replaces was
    too short for a loaded machine)."""
    return bool(unanswered) and now < deadline


def take(buffers: Mapping[Partition, deque[tuple[M, TaskReady | None]]], topics: Iterable[str], free_now: int,
         free_staged: int, soon_ms: float) -> list[tuple[M, TaskReady | None, bool]]:
    """Take from the buffers the records to claim, as (record, ready or None if undecodable, staged): high
    priority first (the order of `topics`), each partition's records in order, round robin over a topic's
    partitions. An attempt due by `soon_ms` needs a free slot; one fired ahead of its instant needs a free staging
    place. A partition whose next attempt finds no place stops there, so its order is kept. (Bounding the
    attempts staged per second by the slots was tried and taken out: a partition is this executor's alone, so the
    rest of a burst went to no other executor; they were claimed at their instant instead, and the records behind
    them in the partition waited for it.)"""
    taken: list[tuple[M, TaskReady | None, bool]] = []
    budget = {False: free_now, True: free_staged}
    for topic in topics:
        queues = [q for (t, _), q in buffers.items() if t == topic and q]
        while queues:
            for q in list(queues):
                m, ready = q[0]
                staged = ready is not None and ready.scheduled_for_ms > soon_ms
                if ready is not None and budget[staged] <= 0:
                    queues.remove(q)  # this partition waits; its order is kept
                    continue
                q.popleft()
                if ready is not None:
                    budget[staged] -= 1
                taken.append((m, ready, staged))
                if not q:
                    queues.remove(q)
    return taken


def flow_control(backlog: Mapping[K, int], paused: Set[K], limit: int) -> tuple[list[K], list[K]]:
    """(partitions to pause, partitions to resume): a partition is paused once its local backlog reaches
    `limit`, and resumed once it is down to about half."""
    pause = [k for k, n in backlog.items() if n >= limit and k not in paused]
    resume = [k for k, n in backlog.items() if n < limit // 2 + 1 and k in paused]
    return pause, resume


def positions(offsets: Iterable[tuple[Partition, int]]) -> tuple[dict[Partition, int], dict[Partition, int]]:
    """For a batch of records' (partition, offset) in order: (the offset to commit per partition, the first
    offset per partition, to seek back to if the batch is not claimed)."""
    commit: dict[Partition, int] = {}
    first: dict[Partition, int] = {}
    for key, offset in offsets:
        commit[key] = offset + 1
        first.setdefault(key, offset)
    return commit, first


# --- the claim loop -------------------------------------------------------------------------------


class Claimer:
    def __init__(self, settings: Settings, executor_id: str, pool: str, ledger: Ledger, stats: Stats,
                 capacity: Callable[[], tuple[int, int]], backlog_limit: int) -> None:
        self.id = executor_id
        self.ledger = ledger
        self.settings = settings
        self.stats = stats
        self.capacity = capacity
        self.backlog_limit = backlog_limit
        self.codec = default_codec()
        self.inbox = settings.topic("inbox")
        self.dlq = settings.topic("dlq")
        #: Told of each committed claim of an attempt due now while claims wait in a burst (`creates_early`): the
        #: runtime creates its process then.
        self.on_claimed: Callable[[Pending], None] = lambda p: None
        self.early_from = EARLY_MIN_WAITING
        #: Why each buffered record that is not a ready record was refused, until it is dead-lettered.
        self._garbage: dict[tuple[str, int, int], str] = {}
        self.ready_topics = [ready_topic(settings, p, pool) for p in PRIORITIES]
        self._buffers: dict[Partition, deque[tuple[Message, TaskReady | None]]] = {}
        self._paused: set[Partition] = set()
        self._settle_until = 0.0
        #: Partitions assigned whose first fetch has not answered yet (see `settling`).
        self._unanswered: set[Partition] = set()
        #: Partitions were assigned since the last step: resume them (librdkafka keeps a partition's pause across
        #: a rebalance, librdkafka#1849; one paused when it was revoked came back paused and was never fetched).
        self._resume_assigned = False
        self._txn = BoundedCalls(f"txn-{self.id}")
        self._producer = self._new_producer()
        self._group = f"{settings.prefix}-executors" + (f"-{pool}" if pool else "")
        self._consumer = self._new_consumer()
        now = time.monotonic()
        #: When records were last fetched, when the last assignment and the last revocation came, and when the
        #: consumer was last checked for a stall (`stalled`).
        self._fetched_at = self._assigned_at = self._checked_at = now
        self._revoked_at = 0.0
        #: When a stall check first saw records waiting unfetched in its partitions (None: not since the last fetch).
        self._backlog_since: float | None = None

    def _new_consumer(self) -> Any:
        # "range" splits each ready topic's partitions evenly among the executors; a sticky assignor balances only
        # the total over the three topics, and could give one executor every partition of a priority.
        return kafka.consumer(self.settings, group=self._group,
                              **{"partition.assignment.strategy": "range",
                                 # A fetch returns as soon as records arrive; the long poll sets only how
                                 # often an idle consumer asks again. A partition paused by flow control has
                                 # half its backlog limit buffered when it is resumed, so waiting for the
                                 # fetch in flight costs it nothing.
                                 "fetch.wait.max.ms": kafka.FETCH_WAIT_MS,
                                 "session.timeout.ms": int(max(6.0, self.settings.session_timeout_s) * 1000),
                                 # A partition's end is reported, so an empty one answers after an assignment.
                                 "enable.partition.eof": True,
                                 "heartbeat.interval.ms": 1000})

    def _new_producer(self) -> Any:
        self._unreachable = False
        # retry.backoff.ms: a transaction begun right after the last one committed is answered
        # CONCURRENT_TRANSACTIONS until the coordinator has written the markers, and retried after this backoff;
        # librdkafka's 100 ms default makes back-to-back claim transactions 100 ms apart at least (KAFKA-5477,
        # confluent-kafka-python#967).
        return kafka.producer(self.settings, **{"transactional.id": f"{self.settings.prefix}-executor-{self.id}",
                                                "transaction.timeout.ms": TXN_TIMEOUT_MS,
                                                "error_cb": self._client_error, "retry.backoff.ms": 5})

    def _client_error(self, err: KafkaError) -> None:
        # After the whole cluster was unreachable (the single broker restarted), the producer's cached group
        # coordinator may be one librdkafka never looks up again: the next send_offsets_to_transaction would
        # wedge. Such a producer is replaced before its next claim instead, which costs one init.
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._unreachable = True

    def _bounded(self, what: str, fn: Callable[[], T]) -> T:
        return self._txn.call(what, fn, TXN_TIMEOUT_S + WEDGED_AFTER_S)

    def _resumed(self, what: str, fn: Callable[[], None]) -> None:
        """A transactional call, called again while it times out retriably ("retry call to resume": the
        coordinator is moving, as when its node died) for up to the transaction's own timeout; aborting it
        instead would wait for the same coordinator anyway, and then claim nothing for longer."""
        deadline = time.monotonic() + TXN_RESUME_S
        while True:
            try:
                self._bounded(what, fn)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() or err.txn_requires_abort() or err.fatal() or time.monotonic() > deadline:
                    raise
                log.info("%s timed out (%s); resuming it", what, err)

    def init_transactions(self) -> None:
        self._bounded("init_transactions", lambda: self._producer.init_transactions(TXN_TIMEOUT_S))

    def _replace_producer(self, why: str) -> None:
        """Abandon a wedged or broken producer (closing it could block as well) for a new one with the same
        transactional id: its init fences the old one and aborts the transaction it left open, so none of its
        claims count. Tried until the coordinator answers (a wedged init means yet another producer)."""
        log.warning("claim producer replaced (%s)", why)
        self.stats.replaced_producers += 1
        producer = self._new_producer()
        while True:
            try:
                self._bounded("init_transactions", partial(producer.init_transactions, TXN_TIMEOUT_S))
                self._producer = producer
                return
            except Wedged as exc:
                log.warning("claim producer not ready (%s); another one", exc)
                producer = self._new_producer()
            except KafkaException as exc:
                log.warning("claim producer not ready yet (%s); trying again", exc.args[0])
                if exc.args[0].fatal():
                    producer = self._new_producer()
                time.sleep(1.0)

    def subscribe(self) -> None:
        self._consumer.subscribe(self.ready_topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._consumer.close()

    def step(self) -> None:
        """Fetch what the ready topics have, and claim what fits."""
        free_now, free_staged = self.capacity()
        timeout = 0.01 if self._buffered() else 0.1
        if self._resume_assigned:
            self._resume_assigned = False
            self._consumer.resume([tp for tp in self._consumer.assignment()
                                   if (tp.topic, tp.partition) not in self._paused])
        self._flow_control()
        # Wait for the first record only (consume() would wait for a full batch), then drain what has been
        # fetched without waiting (flow control bounds it), so the choice sees every priority.
        first = self._consumer.poll(timeout)
        msgs = [first, *self._consumer.consume(num_messages=1000, timeout=0)] if first is not None else []
        now = time.monotonic()
        if msgs:
            self._fetched_at = now
            self._backlog_since = None
        elif now - self._checked_at >= STALL_CHECK_S:
            self._checked_at = now
            self._check_stall(now)
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._unanswered.discard(_tp(m))
                else:
                    log.warning("ready topic error: %s", err)
                continue
            self._unanswered.discard(_tp(m))
            self._buffers.setdefault(_tp(m), deque()).append((m, self._decode_ready(m)))
        if self._settle_until and not settling(self._unanswered, time.monotonic(), self._settle_until):
            log.debug("first fetches settled %.0f ms after the assignment; not answered: %s",
                      (time.monotonic() - self._settle_until + SETTLE_MAX_S) * 1000, self._unanswered)
            self._settle_until = 0.0
        if self._buffered() and (free_now > 0 or free_staged > 0) and not self._settle_until:
            taken = take(self._buffers, self.ready_topics, free_now, free_staged, time.time() * 1000 + 50)
            if taken:
                self._claim(taken)

    def _check_stall(self, now: float) -> None:
        """Replace the ready topics' consumer if it stalled: a rebalance that never ended, or records waiting in
        its own partitions that it has not fetched for long. Seen after the single broker restarted under load:
        the executor claimed nothing for the three minutes the test waited, with no error from librdkafka."""
        backlog = False
        if now - self._fetched_at >= STALL_S and self._revoked_at <= self._assigned_at:
            try:
                mine = [tp for tp in self._consumer.assignment() if (tp.topic, tp.partition) not in self._paused]
                at = {(tp.topic, tp.partition): tp.offset for tp in self._consumer.position(mine)}
                unknown = [tp for tp in mine if at[(tp.topic, tp.partition)] < 0]  # not fetched from yet
                for tp in self._consumer.committed(unknown, timeout=5) if unknown else []:
                    at[(tp.topic, tp.partition)] = tp.offset
                for tp in mine:
                    low, high = self._consumer.get_watermark_offsets(tp, timeout=2)
                    backlog = backlog or high > max(low, at[(tp.topic, tp.partition)])
            except KafkaException as exc:
                log.info("stall check not done: %s", exc)
                return
        self._backlog_since = (self._backlog_since or now) if backlog else None
        why = stalled(now, self._fetched_at, self._assigned_at, self._revoked_at, self._backlog_since)
        if why is None:
            return
        log.warning("ready topics' consumer stalled (%s); replacing it", why)
        self.stats.replaced_consumers += 1
        old = self._consumer
        with contextlib.suppress(Exception):  # leaving the group may block as well: bounded, then abandoned
            BoundedCalls(f"close-{self.id}").call("close", old.close, 10.0)
        self._buffers.clear()
        self._paused.clear()
        self._garbage.clear()
        self._consumer = self._new_consumer()
        self._fetched_at = self._assigned_at = now
        self._revoked_at = 0.0
        self._backlog_since = None
        self.subscribe()

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        log.warning("ready partitions lost (the group's session expired): %s", partitions)
        self._on_revoke(consumer, partitions)

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._assigned_at = time.monotonic()
        # Fetch from every newly assigned partition before choosing, so the first claims already see
        # the high-priority work that is waiting, not just whichever partition answered first.
        self._settle_until = time.monotonic() + SETTLE_MAX_S
        self._unanswered = {(tp.topic, tp.partition) for tp in partitions}
        self._resume_assigned = True
        log.debug("assigned %s", partitions)

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._revoked_at = time.monotonic()
        # Unclaimed records of a revoked partition belong to its next owner (their offsets were not committed).
        for tp in partitions:
            self._unanswered.discard((tp.topic, tp.partition))
            self._buffers.pop((tp.topic, tp.partition), None)
            self._paused.discard((tp.topic, tp.partition))
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._garbage = {k: v for k, v in self._garbage.items() if k[:2] not in gone}

    def _buffered(self) -> int:
        return sum(len(q) for q in self._buffers.values())

    def _decode_ready(self, m: Message) -> TaskReady | None:
        """The ready record, or None: then it is dead-lettered in the claim transaction that commits past it."""
        try:
            ready = self.codec.decode(m.value())
        except CodecError as err:
            self._garbage[(*_tp(m), int(m.offset() or 0))] = str(err)
            return None
        if not isinstance(ready, TaskReady):
            self._garbage[(*_tp(m), int(m.offset() or 0))] = f"{type(ready).SCHEMA} is not a ready record"
            return None
        return ready

    def _flow_control(self) -> None:
        pause, resume = flow_control({key: len(q) for key, q in self._buffers.items()}, self._paused,
                                     self.backlog_limit)
        for key in pause:
            self._consumer.pause([TopicPartition(*key)])
            self._paused.add(key)
        for key in resume:
            self._consumer.resume([TopicPartition(*key)])
            self._paused.discard(key)

    def _claim(self, msgs: list[tuple[Message, TaskReady | None, bool]]) -> None:
        offsets, first = positions((_tp(m), int(m.offset() or 0)) for m, _, _ in msgs)
        # Unique per claim: an answer to an earlier claim of the same attempt (re-sent by a scheduler that
        # re-decided it after a crash) can never be taken for the answer to this one. An undecodable record has
        # no claim: its offset is committed with the batch, so it is not seen again.
        claims = [Pending(ready, f"{ready.task_id}#{ready.attempt}@{self.id}/{uuid.uuid4().hex[:12]}",
                          time.monotonic(), staged) for _, ready, staged in msgs if ready is not None]
        batch = self.ledger.open(claims)  # an attempt this executor already took on is not claimed again
        t0 = time.perf_counter()
        self._producer.poll(0)  # serves its error callback
        if self._unreachable:
            self._replace_producer("the cluster was unreachable; its coordinator may be stale")
        try:
            self._producer.begin_transaction()
            # The offsets first, the claims after: from a claim's append to the commit's marker, every
            # read_committed reader of its inbox partition (the streams worker) waits, for other executors'
            # claims and every report too. Produced first, the claims waited through send_offsets' two round
            # trips (AddOffsetsToTxn, TxnOffsetCommit) as well: produce -> visible p50 6.3 -> 5.2 ms,
            # p99 24 -> 17 ms on an idle broker (two runs each way, 200 transactions).
            positions_ = [TopicPartition(t, p, off) for (t, p), off in offsets.items()]
            group = self._consumer.consumer_group_metadata()
            producer = self._producer
            self._resumed("send_offsets_to_transaction",
                          lambda: producer.send_offsets_to_transaction(positions_, group, TXN_TIMEOUT_S))
            for m, ready, _ in msgs:
                if ready is None:
                    self._dead_letter(m)
            at = now_ms()
            claims_ = [ClaimTask(p.claim_id, p.ready.job_id, p.ready.run_id, p.ready.task_id, p.ready.attempt,
                                 self.id, at) for p in batch]
            for r in claim_records(claims_, self.settings.partitions, self.codec.encode):
                self._producer.produce(self.inbox, key=r.key, value=r.value, partition=r.partition)
            self._resumed("commit_transaction", lambda: producer.commit_transaction(TXN_TIMEOUT_S))
        except KafkaException as exc:
            self._claim_failed(exc, batch, first)
            return
        except Wedged as exc:
            self.stats.txn_aborts += 1
            self.ledger.forget(batch)
            self._replace_producer(str(exc))
            self._rewind(first)
            return
        self.ledger.committed(batch, time.monotonic())
        due_now = [p for p in batch if not p.staged]
        if due_now and creates_early(self.ledger.waiting_count(), self.early_from):
            for p in due_now:
                self.on_claimed(p)
        self.stats.transactions += 1
        self.stats.claimed += len(batch)
        self.stats.claim_txn_ms.append((time.perf_counter() - t0) * 1000)

    def _dead_letter(self, m: Message) -> None:
        topic, partition = _tp(m)
        offset = int(m.offset() or 0)
        reason = self._garbage.pop((topic, partition, offset), "not a ready record")
        log.warning("dead-lettered %s[%d]@%d: %s", topic, partition, offset, reason)
        record = DeadLetter(topic, partition, offset, reason, now_ms(), m.key(), m.value())
        self._producer.produce(self.dlq, key=m.key(), value=self.codec.encode(record))

    def _claim_failed(self, exc: KafkaException, batch: list[Pending], first: dict[Partition, int]) -> None:
        self.stats.txn_aborts += 1
        err = exc.args[0]
        log.warning("claim transaction failed (%s); the records will be delivered again", err)
        self.ledger.forget(batch)
        if err.fatal():
            # Fenced: another instance took this transactional id, or the group moved on. Start over.
            raise SystemExit(f"executor {self.id} fenced: {err}") from None
        # Whatever failed (a call timed out, the coordinator moved), the transaction must end before the next
        # begins: abort it, or, if even that fails, fence it with a new producer.
        try:
            self._bounded("abort_transaction", lambda: self._producer.abort_transaction(TXN_TIMEOUT_S))
        except (KafkaException, Wedged) as failed:
            self._replace_producer(f"abort_transaction failed: {failed}")
        self._rewind(first)

    def _rewind(self, first: dict[Partition, int]) -> None:
        """Drop what is buffered of these partitions and fetch again from the first record not claimed."""
        for (topic, partition), offset in first.items():
            self._buffers.pop((topic, partition), None)
            with contextlib.suppress(KafkaException):
                self._consumer.seek(TopicPartition(topic, partition, offset))


def _tp(m: Message) -> Partition:
    return str(m.topic()), int(m.partition() or 0)
