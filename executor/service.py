"""The executor: claims ready attempts, runs them once their claim has won, and reports what happened.

Threads, each only moving data:
  * main    - consumes the ready topics (high before normal before low), claims a batch inside one Kafka
              transaction together with the consumed offsets and the consumer group metadata, so a
              fenced (zombie) executor cannot claim;
  * control - reads this executor's grants, rejections and cancel requests; a grant starts the attempt;
  * one per attempt - fetches and verifies the artifact, runs the process, waits, reports the end;
  * supervisor - heartbeats, per-attempt timeouts, and claims that never got an answer.
The scheduler decides which claim wins; an attempt's process starts only after its grant arrives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_END, KafkaError, KafkaException, Message, TopicPartition

from ksched import kafka
from ksched.artifacts import ArtifactStore
from ksched.config import Settings
from ksched.errors import ArtifactError, CodecError
from ksched.events import (
    PRIORITIES,
    CancelRequested,
    ClaimGranted,
    ClaimRejected,
    ClaimTask,
    FailureReason,
    TaskCompleted,
    TaskFailed,
    TaskHeartbeat,
    TaskReady,
    TaskStarted,
)
from ksched.partitioning import partition_for
from ksched.topics import ready_topic
from schemas.codec import default_codec

from .cache import ArtifactCache
from .sandbox import Process, attempt_env, cap_log, spawn

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


def new_executor_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class Pending:
    ready: TaskReady
    claim_id: str
    since: float


@dataclass
class Attempt:
    ready: TaskReady
    grant: ClaimGranted
    process: Process | None = None
    ending: str = ""  # "", FailureReason.TIMEOUT or FailureReason.CANCELLED
    ending_message: str = ""
    killer: threading.Thread | None = None


@dataclass
class ExecutorConfig:
    slots: int = 4
    grace_s: float = 5.0
    #: How long a claim may wait for the scheduler's answer before its slot is given back.
    claim_timeout_s: float = 30.0
    max_artifact_bytes: int = 512 * 1024 * 1024
    log_limit_bytes: int = 1024 * 1024
    workdir: Path | None = None
    keep_workdirs: bool = False


@dataclass
class Stats:
    claimed: int = 0
    granted: int = 0
    rejected: int = 0
    started: int = 0
    finished: int = 0
    txn_aborts: int = 0
    transactions: int = 0
    claim_txn_ms: list[float] = field(default_factory=list)


class Executor:
    def __init__(self, settings: Settings, store: ArtifactStore, config: ExecutorConfig | None = None,
                 executor_id: str | None = None) -> None:
        self.settings = settings
        self.config = config or ExecutorConfig()
        self.id = executor_id or new_executor_id()
        self.codec = default_codec()
        self.inbox = settings.topic("inbox")
        root = self.config.workdir or settings.home / "executor" / self.id
        self.workroot = root / "runs"
        self.cache = ArtifactCache(store, root / "cache", self.config.max_artifact_bytes)
        self.store = store
        self.stats = Stats()
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {}
        self._attempts: dict[str, Attempt] = {}
        self._buffers: dict[tuple[str, int], deque[Message]] = {}
        self._paused: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.ready_topics = [ready_topic(settings, p) for p in PRIORITIES]
        self._reports = kafka.producer(settings)
        self._claims = kafka.producer(settings, **{"transactional.id": f"{settings.prefix}-executor-{self.id}",
                                                   "transaction.timeout.ms": 60000})
        self._consumer = kafka.consumer(settings, group=f"{settings.prefix}-executors",
                                        **{"partition.assignment.strategy": "cooperative-sticky",
                                           "fetch.wait.max.ms": 20, "session.timeout.ms": 10000,
                                           "heartbeat.interval.ms": 1000})
        self._control = kafka.consumer(settings, group=f"{settings.prefix}-control-{self.id}",
                                       **{"fetch.wait.max.ms": 20})

    # --- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def free_slots(self) -> int:
        with self._lock:
            return self.config.slots - len(self._pending) - len(self._attempts)

    def run(self) -> None:
        self._claims.init_transactions(30)
        self._assign_control()
        self._spawn_thread(self._control_loop, "control")
        self._spawn_thread(self._supervise, "supervisor")
        self._consumer.subscribe(self.ready_topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_revoke)
        log.info("executor %s up with %d slots", self.id, self.config.slots)
        try:
            while not self._stop.is_set():
                self._ready_step()
        finally:
            self._shutdown()

    def _spawn_thread(self, target: Any, name: str, *args: Any) -> threading.Thread:
        t = threading.Thread(target=target, args=args, name=f"{name}-{self.id}", daemon=True)
        t.start()
        return t

    def _shutdown(self) -> None:
        with self._lock:
            attempts = list(self._attempts.values())
        for a in attempts:
            a.ending, a.ending_message = FailureReason.CANCELLED, "executor shutting down"
            if a.process is not None:
                a.process.kill_tree(self.config.grace_s)
        deadline = time.monotonic() + self.config.grace_s + 2
        while self._attempts and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(Exception):
            self._consumer.close()
        with contextlib.suppress(Exception):
            self._control.close()
        self._reports.flush(10)

    # --- claiming -------------------------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        log.debug("assigned %s", partitions)

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # Unclaimed records of a revoked partition belong to its next owner (their offsets were not committed).
        for tp in partitions:
            self._buffers.pop((tp.topic, tp.partition), None)
            self._paused.discard((tp.topic, tp.partition))

    def _buffered(self) -> int:
        return sum(len(q) for q in self._buffers.values())

    def _ready_step(self) -> None:
        free = self.free_slots()
        buffered = self._buffered()
        timeout = 0.01 if buffered and free <= 0 else 0.1
        self._flow_control(free)
        msgs = self._consumer.consume(num_messages=max(1, 2 * self.config.slots), timeout=timeout)
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("ready topic error: %s", err)
                continue
            self._buffers.setdefault(_tp(m), deque()).append(m)
        if free > 0 and self._buffered():
            self._claim(self._take(free))

    def _flow_control(self, free: int) -> None:
        """Pause partitions whose local backlog is big enough; resume them when it drains."""
        limit = max(2, self.config.slots)
        for key, q in self._buffers.items():
            if len(q) >= limit and key not in self._paused:
                self._consumer.pause([TopicPartition(*key)])
                self._paused.add(key)
            elif len(q) < limit // 2 + 1 and key in self._paused:
                self._consumer.resume([TopicPartition(*key)])
                self._paused.discard(key)

    def _take(self, n: int) -> list[Message]:
        """Up to `n` buffered records, high priority first, each partition's records in order."""
        taken: list[Message] = []
        for topic in self.ready_topics:
            queues = [q for (t, _), q in self._buffers.items() if t == topic and q]
            while queues and len(taken) < n:
                for q in list(queues):
                    if len(taken) >= n:
                        break
                    taken.append(q.popleft())
                    if not q:
                        queues.remove(q)
            if len(taken) >= n:
                break
        return taken

    def _claim(self, msgs: list[Message]) -> None:
        offsets: dict[tuple[str, int], int] = {}
        first: dict[tuple[str, int], int] = {}
        batch: list[Pending] = []
        for m in msgs:
            key = _tp(m)
            offset = int(m.offset() or 0)
            offsets[key] = offset + 1
            first.setdefault(key, offset)
            try:
                ready = self.codec.decode(m.value())
            except CodecError as err:
                log.error("skipping undecodable ready record %s[%d]@%d: %s", *key, m.offset(), err)
                continue
            if not isinstance(ready, TaskReady):
                continue
            claim_id = f"{ready.task_id}#{ready.attempt}@{self.id}"
            batch.append(Pending(ready, claim_id, time.monotonic()))
        with self._lock:
            for p in batch:
                self._pending[p.claim_id] = p
        t0 = time.perf_counter()
        try:
            self._claims.begin_transaction()
            for p in batch:
                claim = ClaimTask(p.claim_id, p.ready.job_id, p.ready.run_id, p.ready.task_id, p.ready.attempt,
                                  self.id, now_ms())
                self._claims.produce(self.inbox, key=p.ready.job_id.encode(), value=self.codec.encode(claim))
            self._claims.send_offsets_to_transaction(
                [TopicPartition(t, p, off) for (t, p), off in offsets.items()],
                self._consumer.consumer_group_metadata(), 30)
            self._claims.commit_transaction(30)
        except KafkaException as exc:
            self._claim_failed(exc, batch, first)
            return
        self.stats.transactions += 1
        self.stats.claimed += len(batch)
        self.stats.claim_txn_ms.append((time.perf_counter() - t0) * 1000)

    def _claim_failed(self, exc: KafkaException, batch: list[Pending], first: dict[tuple[str, int], int]) -> None:
        self.stats.txn_aborts += 1
        err = exc.args[0]
        log.warning("claim transaction failed (%s); the records will be delivered again", err)
        with self._lock:
            for p in batch:
                self._pending.pop(p.claim_id, None)
        if err.txn_requires_abort():
            with contextlib.suppress(KafkaException):
                self._claims.abort_transaction(30)
        elif err.fatal():
            # Fenced: another instance took this transactional id, or the group moved on. Start over.
            raise SystemExit(f"executor {self.id} fenced: {err}") from None
        for (topic, partition), offset in first.items():
            self._buffers.pop((topic, partition), None)
            with contextlib.suppress(KafkaException):
                self._consumer.seek(TopicPartition(topic, partition, offset))

    # --- control ------------------------------------------------------------------------------

    def _assign_control(self) -> None:
        topic = self.settings.topic("control")
        partition = partition_for(self.id, self.settings.control_partitions)
        _, high = self._control.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        # An explicit offset, resolved before any claim is made, so no answer to our claims is skipped.
        self._control.assign([TopicPartition(topic, partition, high if high >= 0 else OFFSET_END)])

    def _control_loop(self) -> None:
        while not self._stop.is_set():
            m = self._control.poll(0.1)
            if m is None or m.error() is not None:
                continue
            try:
                event = self.codec.decode(m.value())
            except CodecError as err:
                log.error("undecodable control record: %s", err)
                continue
            if getattr(event, "executor_id", None) != self.id:
                continue
            if isinstance(event, ClaimGranted):
                self._on_grant(event)
            elif isinstance(event, ClaimRejected):
                with self._lock:
                    if self._pending.pop(event.claim_id, None) is not None:
                        self.stats.rejected += 1
            elif isinstance(event, CancelRequested):
                self._on_cancel(event)

    def _on_grant(self, grant: ClaimGranted) -> None:
        key = f"{grant.task_id}#{grant.attempt}"
        with self._lock:
            pending = self._pending.pop(grant.claim_id, None)
            if pending is None or key in self._attempts:
                return  # not ours any more, or a repeated grant for an attempt already running
            attempt = Attempt(pending.ready, grant)
            self._attempts[key] = attempt
            self.stats.granted += 1
        self._spawn_thread(self._execute, "attempt", key, attempt)

    def _on_cancel(self, req: CancelRequested) -> None:
        with self._lock:
            attempt = self._attempts.get(f"{req.task_id}#{req.attempt}")
        if attempt is None or attempt.grant.fencing_token != req.fencing_token:
            return
        self._end_early(attempt, FailureReason.CANCELLED, req.reason or "cancelled")

    def _end_early(self, attempt: Attempt, reason: str, message: str) -> None:
        if attempt.ending:
            return
        attempt.ending, attempt.ending_message = reason, message
        if attempt.process is not None:
            attempt.killer = self._spawn_thread(attempt.process.kill_tree, "kill", self.config.grace_s)

    # --- running --------------------------------------------------------------------------------

    def _execute(self, key: str, attempt: Attempt) -> None:
        ready, grant = attempt.ready, attempt.grant
        workdir = self.workroot / key.replace("/", "_")
        try:
            try:
                binary = self.cache.get(ready.artifact)
                workdir.mkdir(parents=True, exist_ok=True)
                if attempt.ending:  # cancelled while the artifact was fetched
                    raise _Ended()
                attempt.process = spawn(binary, list(ready.args), attempt_env(ready, grant, workdir), workdir)
            except ArtifactError as err:
                self._report_failed(attempt, err.reason, str(err), retryable=False, started=None, exit_code=None)
                return
            except OSError as err:
                self._report_failed(attempt, FailureReason.SPAWN_ERROR, f"cannot start {ready.artifact.name}: {err}",
                                     retryable=False, started=None, exit_code=None)
                return
            except _Ended:
                self._report_failed(attempt, attempt.ending, attempt.ending_message, retryable=False, started=None,
                                    exit_code=None)
                return
            proc = attempt.process
            self.stats.started += 1
            self._send(TaskStarted(ready.job_id, ready.run_id, ready.task_id, grant.attempt, grant.fencing_token,
                                   self.id, proc.started_at_ms, proc.pid))
            if attempt.ending:  # a cancel arrived between spawn and now
                self._end_early(attempt, attempt.ending, attempt.ending_message)
            code = proc.popen.wait()
            finished = now_ms()
            if attempt.killer is not None:
                attempt.killer.join()
            log_ref = self._upload_log(key, proc)
            if attempt.ending:
                self._report_failed(attempt, attempt.ending, attempt.ending_message,
                                    retryable=attempt.ending == FailureReason.TIMEOUT, started=proc.started_at_ms,
                                    exit_code=code, log_ref=log_ref, finished=finished)
            else:
                self._send(TaskCompleted(ready.job_id, ready.run_id, ready.task_id, grant.attempt,
                                         grant.fencing_token, self.id, code, proc.started_at_ms, finished, log_ref))
        finally:
            self.stats.finished += 1
            with self._lock:
                self._attempts.pop(key, None)
            self._wake.set()
            if not self.config.keep_workdirs:
                shutil.rmtree(workdir, ignore_errors=True)

    def _upload_log(self, key: str, proc: Process) -> str:
        try:
            cap_log(proc.log_path, self.config.log_limit_bytes)
            return self.store.put_log(f"{key}.log", proc.log_path)
        except Exception as exc:
            log.warning("could not store the log of %s: %s", key, exc)
            return ""

    def _report_failed(self, attempt: Attempt, reason: str, message: str, *, retryable: bool, started: int | None,
                       exit_code: int | None, log_ref: str = "", finished: int | None = None) -> None:
        r, g = attempt.ready, attempt.grant
        self._send(TaskFailed(r.job_id, r.run_id, r.task_id, g.attempt, g.fencing_token, self.id, reason, message,
                              retryable, finished or now_ms(), exit_code, started, log_ref))

    def _send(self, event: Any) -> None:
        self._reports.produce(self.inbox, key=event.job_id.encode(), value=self.codec.encode(event))
        self._reports.poll(0)

    # --- supervision ------------------------------------------------------------------------------

    def _supervise(self) -> None:
        next_beat = time.monotonic() + self.settings.heartbeat_s
        while not self._stop.wait(0.05):
            now = time.monotonic()
            with self._lock:
                attempts = list(self._attempts.values())
                stale = [c for c, p in self._pending.items() if now - p.since > self.config.claim_timeout_s]
                for c in stale:
                    del self._pending[c]
            wall = now_ms()
            for a in attempts:
                proc = a.process
                if proc is not None and a.ready.timeout_ms and wall - proc.started_at_ms > a.ready.timeout_ms:
                    self._end_early(a, FailureReason.TIMEOUT, f"timed out after {a.ready.timeout_ms} ms")
            if now >= next_beat:
                next_beat = now + self.settings.heartbeat_s
                for a in attempts:
                    r, g = a.ready, a.grant
                    self._send(TaskHeartbeat(r.job_id, r.run_id, r.task_id, g.attempt, g.fencing_token, self.id,
                                             wall))
            self._reports.poll(0)


class _Ended(Exception):
    pass


def _tp(m: Message) -> tuple[str, int]:
    return str(m.topic()), int(m.partition() or 0)
