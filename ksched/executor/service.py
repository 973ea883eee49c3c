"""The executor: claims ready attempts, runs them once their claim has won, and reports what happened.

Threads, each only moving data:
  * main    - consumes the ready topics (high before normal before low), claims a batch inside one Kafka
              transaction together with the consumed offsets and the consumer group metadata, so a
              fenced (zombie) executor cannot claim;
  * control - reads this executor's grants, rejections and cancel requests; a grant hands the attempt to
              the runtime (`executor.runtime`: fetch, stage until its instant, start, reap);
  * supervisor - heartbeats, per-attempt timeouts, and claims that never got an answer.
The scheduler decides which claim wins; an attempt's process starts only after its grant arrives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_END, TopicPartition

from ksched import kafka
from ksched.artifacts import ArtifactStore
from ksched.config import Settings
from ksched.errors import CodecError
from ksched.partitioning import partition_for
from ksched.schemas.codec import default_codec
from ksched.schemas.events import (
    CancelRequested,
    ClaimGranted,
    ClaimRejected,
    FailureReason,
)

from .cache import ArtifactCache
from .claims import Claimer
from .ledger import GrantAnswer, Ledger, Stats, free_capacity, now_ms
from .reporting import Reporter
from .runtime import Attempt, Ended, Runtime
from .sandbox import Process

GRANT_WAIT_ON_STOP_S = 3.0  # how long a stopping executor waits for the answers to its open claims

log = logging.getLogger(__name__)


def new_executor_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class ExecutorConfig:
    #: Processes this executor runs at once.
    slots: int = 4
    #: Attempts fired ahead of their instant that it may hold (claimed, binary fetched) until they start.
    staging: int = 1024
    #: Claims of attempts due now beyond the free slots (-1: as many as `slots`), so slots do not sit idle
    #: while a claim waits for the scheduler's answer.
    prefetch: int = -1
    grace_s: float = 5.0
    #: How long a claim may wait for the scheduler's answer before its slot is given back (a grant that comes
    #: later is handed back unstarted, as CLAIM_ABANDONED).
    claim_timeout_s: float = 30.0
    max_artifact_bytes: int = 512 * 1024 * 1024
    log_limit_bytes: int = 1024 * 1024
    #: The pool of executors this one belongs to: it takes only tasks labelled `pool: <name>` ("": unlabelled).
    pool: str = ""
    workdir: Path | None = None
    keep_workdirs: bool = False


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
        self.ledger = Ledger()
        self._stop = threading.Event()  # stop claiming
        self._closed = threading.Event()  # stop listening for answers too (set last, when shutting down)
        self.reporter = Reporter(settings, self.id, store, self.config.log_limit_bytes)
        self.claimer = Claimer(settings, self.id, self.config.pool, self.ledger, self.stats, self.capacity,
                               backlog_limit=max(2, self.config.slots, self.config.staging))
        self._control = kafka.consumer(settings, group=f"{settings.prefix}-control-{self.id}",
                                       **{"fetch.wait.max.ms": 20})

    # --- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def capacity(self) -> tuple[int, int]:
        """(claims of attempts due now it may still make, places for attempts staged ahead of their instant)."""
        return free_capacity(self.config.slots, self.config.prefetch, self.config.staging, *self.ledger.load())

    def run(self) -> None:
        self.runtime = Runtime(self.config.slots, self.cache, self.workroot, self._on_started, self._on_ended,
                               grace_s=self.config.grace_s, keep_workdirs=self.config.keep_workdirs)
        self.claimer.init_transactions()
        self._assign_control()
        self._control_thread = self._spawn_thread(self._control_loop, "control")
        self._spawn_thread(self._supervise, "supervisor")
        self.claimer.subscribe()
        log.info("executor %s up with %d slots", self.id, self.config.slots)
        try:
            while not self._stop.is_set():
                self.claimer.step()
        finally:
            self._shutdown()

    def _spawn_thread(self, target: Any, name: str, *args: Any) -> threading.Thread:
        t = threading.Thread(target=target, args=args, name=f"{name}-{self.id}", daemon=True)
        t.start()
        return t

    def _shutdown(self) -> None:
        # Let the answers to open claims arrive, so granted attempts are handed back rather than left to a lease.
        deadline = time.monotonic() + GRANT_WAIT_ON_STOP_S
        while time.monotonic() < deadline and self.ledger.waiting():
            time.sleep(0.02)
        # Handed back: the scheduler re-offers them (unstarted ones do not use up a retry).
        for a in self.ledger.drain():
            self.runtime.end_early(a, FailureReason.EXECUTOR_STOPPED, f"executor {self.id} is shutting down")
        self.runtime.drain(self.config.grace_s + 2)
        self.runtime.stop()
        self._closed.set()
        self._control_thread.join(5)
        self.claimer.close()
        with contextlib.suppress(Exception):
            self._control.close()
        self.reporter.flush(10)

    # --- control ------------------------------------------------------------------------------

    def _assign_control(self) -> None:
        topic = self.settings.topic("control")
        partition = partition_for(self.id, self.settings.control_partitions)
        _, high = self._control.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        # An explicit offset, resolved before any claim is made, so no answer to our claims is skipped.
        self._control.assign([TopicPartition(topic, partition, high if high >= 0 else OFFSET_END)])

    def _control_loop(self) -> None:
        while not self._closed.is_set():
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
                if self.ledger.reject(event.claim_id):
                    self.stats.rejected += 1
            elif isinstance(event, CancelRequested):
                self._on_cancel(event)

    def _on_grant(self, grant: ClaimGranted) -> None:
        answer = self.ledger.answer(grant)
        attempt = answer.attempt
        if attempt is None:
            return  # a repeated grant for an attempt this executor already took on, or not for a claim of ours
        if answer.what is GrantAnswer.ABANDONED:
            waited = time.monotonic() - answer.claimed_at
            self.reporter.failed(attempt, FailureReason.CLAIM_ABANDONED,
                                 f"executor {self.id} gave up waiting for this grant after {waited:.0f} s",
                                 retryable=True, started=None, exit_code=None)
        elif answer.what is GrantAnswer.STOPPING:
            self.reporter.failed(attempt, FailureReason.EXECUTOR_STOPPED, f"executor {self.id} is shutting down",
                                 retryable=True, started=None, exit_code=None)
        else:
            self.stats.granted += 1
            self.runtime.submit(attempt)

    def _on_cancel(self, req: CancelRequested) -> None:
        attempt = self.ledger.attempt(f"{req.task_id}#{req.attempt}")
        if attempt is None or attempt.grant.fencing_token != req.fencing_token:
            return
        self.runtime.end_early(attempt, FailureReason.CANCELLED, req.reason or "cancelled")

    # --- the runtime's hooks ---------------------------------------------------------------------

    def _on_started(self, attempt: Attempt, proc: Process) -> None:
        self.stats.started += 1
        self.reporter.started(attempt, proc)

    def _on_ended(self, ended: Ended) -> None:
        self.reporter.ended(ended)
        self.stats.finished += 1
        self.ledger.ended(ended.attempt.key)

    # --- supervision ------------------------------------------------------------------------------

    def _supervise(self) -> None:
        next_beat = time.monotonic() + self.settings.heartbeat_s
        # A claim answered within half a lease is never renewed; one waiting longer is, every half lease.
        renew_every = self.settings.lease_s / 2
        while not self._stop.wait(0.05):
            now = time.monotonic()
            sweep = self.ledger.sweep(now, self.config.claim_timeout_s, renew_every)
            self.stats.abandoned += sweep.abandoned
            attempts = sweep.attempts
            wall = now_ms()
            for p in sweep.renew:  # a scheduler this slow to answer must not let the grant lapse meanwhile
                self.stats.renewals += 1
                self.reporter.renewal(p, wall)
            for a in attempts:
                proc = a.process
                if proc is not None and a.ready.timeout_ms and wall - proc.started_at_ms > a.ready.timeout_ms:
                    self.runtime.end_early(a, FailureReason.TIMEOUT, f"timed out after {a.ready.timeout_ms} ms")
            if now >= next_beat:
                next_beat = now + self.settings.heartbeat_s
                for a in attempts:
                    self.reporter.heartbeat(a, wall)
            self.reporter.poll()
